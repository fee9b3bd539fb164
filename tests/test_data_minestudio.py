"""MineStudio LMDB import (minesweep.data.ingest.minestudio): fixtures in MineStudio's layout, built here."""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import av
import numpy as np
import pytest

lmdb = pytest.importorskip("lmdb")

import minesweep.data.ingest.minestudio as ms  # noqa: E402
from minesweep.actions.space import BUTTONS  # noqa: E402
from minesweep.data.cli import main as cli_main  # noqa: E402
from minesweep.data.ingest.resize import resize_bilinear  # noqa: E402
from minesweep.data.store import EpisodeStore  # noqa: E402
from minesweep.video import H264Writer  # noqa: E402

H, W = 48, 64  # source frame size in the fixture (MineStudio's are 128x128, 224x224 or 640x360)
CHUNK = 32

# MineStudio action dicts: the 24 MineRL env keys (process_action_openai.py's NOOP_ACTION), camera in degrees.
_ENV_BUTTON_KEYS = (
    "ESC",
    "back",
    "drop",
    "forward",
    *(f"hotbar.{i}" for i in range(1, 10)),
    "inventory",
    "jump",
    "left",
    "right",
    "sneak",
    "sprint",
    "swapHands",
    "attack",
    "use",
    "pickItem",
)


def _frames(seed: int, n: int) -> np.ndarray:
    """Smooth frames (H.264 keeps them close) with a bright block whose position encodes the frame index."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1).astype(np.int32) + rng.integers(0, 60, 3)
    out = np.repeat(base[None], n, 0)
    for i in range(n):
        r, c = (i // 8) % 5, i % 8
        out[i, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8] = 250
    return np.clip(out, 0, 255).astype(np.uint8)


def _encode_chunk(frames: np.ndarray, tmp: Path) -> bytes:
    path = tmp / "chunk.mp4"
    with H264Writer(path, W, H, fps=20) as writer:
        for f in frames:
            writer.write(f)
    data = path.read_bytes()
    path.unlink()
    return data


def _encode_chunk_in_memory(frames: np.ndarray) -> bytes:
    """As MineStudio's converter does it: an mp4 written into a BytesIO, "h264" stream with default options."""
    out = io.BytesIO()
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("h264", rate=20)
        stream.width, stream.height = W, H
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return out.getvalue()


def _decode(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def _actions(seed: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    acts = {k: (rng.random(n) < 0.15).astype(np.int64) for k in _ENV_BUTTON_KEYS}
    acts["camera"] = np.where(rng.random((n, 1)) < 0.5, 0.0, rng.normal(0, 3, (n, 2)))
    # Some all-null rows, and rows whose only input is outside BUTTONS (ESC / swapHands / pickItem: not null).
    for k in _ENV_BUTTON_KEYS:
        acts[k][:3] = 0
    acts["camera"][:3] = 0
    acts["ESC"][1] = 1
    acts["pickItem"][2] = 1
    return acts


class Fixture:
    """Writes a MineStudio-layout dataset: SRC/{image,action}/part-*/ LMDB environments."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "_tmp"
        self.tmp.mkdir(parents=True)
        self.parts: dict[tuple[str, str], dict] = {}  # (modality, part) -> {"infos": [...], "kv": {...}}
        self.expected: dict[str, dict] = {}  # episode -> {"frames": decoded frames, "actions": dict}

    def _part(self, modality: str, part: str) -> dict:
        return self.parts.setdefault((modality, part), {"infos": [], "kv": {}})

    def add(
        self,
        name: str,
        n: int,
        seed: int,
        video_part: str = "part-1",
        action_part: str = "part-1",
        num_frames: int | None = None,
        video: bool = True,
        action: bool = True,
        in_memory: bool = False,
    ) -> dict:
        """Add an episode of ``n`` frames, chunked by 32 (the last chunk holds the rest). Returns the raw chunks so
        a test can break them before ``write()``."""
        frames, acts = _frames(seed, n), _actions(seed + 1000, n)
        decoded, chunks = [], {"video": {}, "action": {}}
        for start in range(0, n, CHUNK):
            chunk = frames[start : start + CHUNK]
            data = _encode_chunk_in_memory(chunk) if in_memory else _encode_chunk(chunk, self.tmp)
            decoded.append(_decode(data))
            chunks["video"][start] = data
            chunks["action"][start] = pickle.dumps({k: v[start : start + CHUNK] for k, v in acts.items()})
        self.expected[name] = {"frames": np.concatenate(decoded), "actions": acts}
        for modality, part, present in (("image", video_part, video), ("action", action_part, action)):
            if not present:
                continue
            p = self._part(modality, part)
            idx = len(p["infos"])
            p["infos"].append(
                {"episode": name, "episode_idx": idx, "num_frames": n if num_frames is None else num_frames}
            )
            for start in chunks["video" if modality == "image" else "action"]:
                p["kv"][str((idx, start))] = (modality, name, start)
        self._chunks = getattr(self, "_chunks", {})
        self._chunks[name] = chunks
        return chunks

    def write(self) -> Path:
        for (modality, part), p in self.parts.items():
            path = self.root / modality / part
            path.mkdir(parents=True)
            env = lmdb.open(str(path), map_size=1 << 26)
            with env.begin(write=True) as txn:
                for key, (mod, name, start) in p["kv"].items():
                    value = self._chunks[name]["video" if mod == "image" else "action"].get(start)
                    if value is not None:  # a test may have deleted it
                        txn.put(key.encode(), value)
                meta = {
                    "__chunk_size__": CHUNK,
                    "__chunk_infos__": p["infos"],
                    "__num_episodes__": len(p["infos"]),
                    "__num_total_frames__": sum(i["num_frames"] for i in p["infos"]),
                }
                for key, value in meta.items():
                    txn.put(key.encode(), pickle.dumps(value))
            env.close()  # lmdb refuses to open an environment twice in one process: close before importing
        return self.root


def _expected_env(acts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    buttons = np.stack([acts[b] for b in BUTTONS], 1).astype(np.uint8)
    esc = acts["ESC"].astype(bool)
    pressed = buttons.any(1) | esc | acts["swapHands"].astype(bool) | acts["pickItem"].astype(bool)
    return {
        "buttons": buttons,
        "camera": acts["camera"].astype(np.float32),
        "esc": esc,
        "is_null": ~(pressed | (acts["camera"] != 0).any(1)),
    }


class _SpyWriter(ms.StoreWriter):
    """Records the exact frames the importer hands to the store (the store itself re-encodes: lossy)."""

    seen: dict[str, np.ndarray] = {}

    def add_episode(self, episode_id, frames, env_actions, source="", **kwargs):  # type: ignore[override]
        batches = []

        def tee():
            for batch in frames:
                batches.append(np.array(batch))
                yield batch

        record = super().add_episode(episode_id, tee(), env_actions, source, **kwargs)
        _SpyWriter.seen[episode_id] = np.concatenate(batches)
        return record


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    """Built once per module: importing only reads it."""
    fx = Fixture(tmp_path_factory.mktemp("minestudio") / "src")
    fx.add("ep-full", 64, seed=1, in_memory=True)  # two whole chunks, encoded as MineStudio does
    fx.add("ep-tail", 70, seed=2, action_part="part-2")  # 32 + 32 + 6: the tail MineStudio would drop
    fx.add("ep-short", 5, seed=3, video_part="part-2")  # a single, short chunk
    fx.add("ep-extra", 40, seed=4, num_frames=32)  # metadata counts whole chunks only (MineStudio)
    broken = fx.add("ep-missing-chunk", 96, seed=5)
    del broken["video"][32]
    broken = fx.add("ep-bad-video", 64, seed=6, video_part="part-2")
    broken["video"][32] = b"\x00\x00\x00\x18ftypmp42 definitely not h264" * 3
    fx.add("ep-no-video", 32, seed=7, video=False)
    broken = fx.add("ep-count-mismatch", 40, seed=8)
    broken["action"][32] = pickle.dumps({k: v[32:42] for k, v in _actions(9, 42).items()})  # 10 actions, 8 frames
    broken = fx.add("ep-evil-pickle", 32, seed=10)
    broken["action"][0] = pickle.dumps(os.system)  # a global the restricted unpickler must refuse (never called)
    broken = fx.add("ep-huge-camera", 40, seed=11)
    huge = _actions(11, 40)
    huge["camera"][35] = (0.0, 1e9)  # finite, but no mouse turns 1e9 degrees in a step
    broken["action"][32] = pickle.dumps({k: v[32:40] for k, v in huge.items()})
    fx.write()
    return fx


GOOD = ["ep-extra", "ep-full", "ep-short", "ep-tail"]
BAD = {
    "ep-missing-chunk": ("video chunk (", 32),
    "ep-bad-video": ("cannot be decoded", 32),
    "ep-no-video": ("no video data", None),
    "ep-count-mismatch": ("has 8 frames but the action chunk has 10", 32),
    "ep-evil-pickle": ("refusing to load", 0),
    "ep-huge-camera": ("[0.0, 1000000000.0] at frame 35 is out of range", 32),
}


def test_import_round_trips_every_frame_and_action(dataset: Fixture, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ms, "StoreWriter", _SpyWriter)
    _SpyWriter.seen = {}
    report = ms.import_minestudio(dataset.root, tmp_path / "store", resolution=(H, W), print_summary=False)

    assert sorted(report.ingested) == GOOD
    assert {s["episode"] for s in report.skipped} == set(BAD) and len(report.skipped) == len(BAD)
    for s in report.skipped:
        reason, frame = BAD[s["episode"]]
        assert reason in s["reason"], s
        assert s["frame"] == frame, s
    assert [n["episode"] for n in report.notes] == ["ep-extra"]
    assert json.loads((tmp_path / "store" / ms.REPORT).read_text())["ingested"] == report.ingested

    store = EpisodeStore(tmp_path / "store")
    assert sorted(e.id for e in store.episodes) == GOOD
    for name in GOOD:
        expected = dataset.expected[name]
        n = len(expected["frames"])
        assert store.episode(name).length == n  # ep-tail: 70 (tail kept), ep-extra: 40 (past num_frames)
        # Exact: the frames handed to the store are the chunks' decoded frames, in order, all of them.
        assert np.array_equal(_SpyWriter.seen[name], expected["frames"])
        # Through the store (H.264 again, crf 18): close, not equal. Mean error ~1 level on these smooth frames; a
        # wrong frame order would move the 8x8 index block (250 vs ~100 levels) and break the per-frame bound.
        stored = store.read_frames(name, 0, n).astype(np.int16)
        err = np.abs(stored - expected["frames"]).mean(axis=(1, 2, 3))
        assert err.max() < 4, err.max()
        actions = store.read_actions(name)
        for key, value in _expected_env(expected["actions"]).items():
            assert np.array_equal(actions[key], value), (name, key)
    assert store.read_actions("ep-full")["is_null"][:3].tolist() == [True, False, False]  # ESC, pickItem count
    store.close()


def test_import_resizes_to_store_resolution(dataset: Fixture, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ms, "StoreWriter", _SpyWriter)
    _SpyWriter.seen = {}
    report = ms.import_minestudio(dataset.root, tmp_path / "store", resolution=(32, 32), print_summary=False)
    assert sorted(report.ingested) == GOOD
    for name in GOOD:
        assert np.array_equal(_SpyWriter.seen[name], resize_bilinear(dataset.expected[name]["frames"], (32, 32)))
    assert EpisodeStore(tmp_path / "store").resolution == (32, 32)


def test_cli(dataset: Fixture, tmp_path: Path, capsys) -> None:
    assert cli_main(["import-minestudio", str(dataset.root), str(tmp_path / "store"), "--resolution", "48x64"]) == 0
    out = capsys.readouterr().out
    assert "imported 4 episode(s)" in out and "ep-evil-pickle" in out
    assert sorted(e.id for e in EpisodeStore(tmp_path / "store").episodes) == GOOD
    # Not a MineStudio dataset: a clear error, exit 1.
    (tmp_path / "empty").mkdir()
    assert cli_main(["import-minestudio", str(tmp_path / "empty"), str(tmp_path / "store2")]) == 1
    assert "not a MineStudio dataset" in capsys.readouterr().err


def test_unreadable_part_is_reported_and_the_rest_imported(tmp_path: Path) -> None:
    fx = Fixture(tmp_path / "src")
    fx.add("a", 32, seed=1)
    fx.add("b", 33, seed=2, video_part="part-2", action_part="part-2")
    fx.write()
    env = lmdb.open(str(fx.root / "action" / "part-2"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        txn.delete(b"__chunk_infos__")
    env.close()
    report = ms.import_minestudio(fx.root, tmp_path / "store", resolution=(H, W), print_summary=False)
    assert report.ingested == ["a"]
    reasons = {(s["episode"], Path(s["file"]).parent.name, Path(s["file"]).name): s["reason"] for s in report.skipped}
    assert "'__chunk_infos__'" in reasons[("*", "action", "part-2")]
    assert "no action data" in reasons[("b", "image", "part-2")]


def test_restricted_unpickler() -> None:
    data = {
        "attack": np.arange(4),
        "camera": np.zeros((4, 2), np.float32),
        "n": np.int64(3),
        "s": {1, 2},
        "b": b"\x00\xff",
    }
    for protocol in (2, 4, 5):
        out = ms.restricted_loads(pickle.dumps(data, protocol=protocol))
        assert np.array_equal(out["attack"], data["attack"]) and out["camera"].dtype == np.float32
        assert out["n"] == 3 and out["s"] == {1, 2} and out["b"] == b"\x00\xff"
    for evil in (os.system, eval, Path("x"), np.load):
        with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
            ms.restricted_loads(pickle.dumps(evil))
    # An object array's elements go through the same checks.
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        ms.restricted_loads(pickle.dumps(np.array([os.system], dtype=object)))


def test_button_mapping_is_by_name() -> None:
    assert list(ms.BUTTON_KEYS) == list(BUTTONS) and len(ms.BUTTON_KEYS) == 20
    acts = _actions(0, 40)
    acts_shuffled = {k: acts[k] for k in reversed(list(acts))}  # dict order must not matter
    out = ms._action_chunk(pickle.dumps(acts_shuffled), 0, Path("p"))
    assert np.array_equal(out["buttons"], _expected_env(acts)["buttons"])
    del acts["hotbar.3"]
    with pytest.raises(ms.MineStudioFormatError, match="hotbar.3"):
        ms._action_chunk(pickle.dumps(acts), 64, Path("p"))


def test_report_lines_stay_whole_when_not_a_terminal(dataset: Fixture, tmp_path: Path, capsys) -> None:
    ms.import_minestudio(dataset.root, tmp_path / "store", resolution=(H, W))
    lines = capsys.readouterr().out.splitlines()
    bad = [line for line in lines if line.startswith("ep-count-mismatch\t")]
    assert len(bad) == 1 and "has 8 frames but the action chunk has 10" in bad[0], lines
    assert any(line.startswith("imported 4 episode(s)") and str(tmp_path / "store") in line for line in lines)


def test_events_are_imported_by_episode_name_and_bad_items_noted(tmp_path: Path) -> None:
    """MineStudio's event LMDB (SRC/event: __event_info__, __codebook__, (name, i) -> (episode id, frame, value))."""
    fx = Fixture(tmp_path / "src")
    fx.add("ep-a", 64, seed=1, in_memory=True)
    fx.add("ep-b", 40, seed=2, in_memory=True)
    fx.write()
    items = {
        "craft_item:crafting_table": [("0", 10, 1), ("1", 39, 1)],
        "mine_block:oak_log": [("0", 3, 1), ("0", 5, 2), ("1", 40, 1), ("9", 1, 1)],  # frame 40: past ep-b's 40
    }
    env = lmdb.open(str(fx.root / "event"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        info = {
            name: {"__num_items__": len(v) + (name == "craft_item:crafting_table"), "__num_episodes__": 2}
            for name, v in items.items()
        }  # one item more than stored: a missing item
        txn.put(b"__event_info__", pickle.dumps(info))
        txn.put(b"__codebook__", pickle.dumps({"ep-a": "0", "ep-b": "1", "ep-gone": "9"}))
        for name, rows in items.items():
            for i, row in enumerate(rows):
                txn.put(str((name, i)).encode(), pickle.dumps(row))
    env.close()
    report = ms.import_minestudio(fx.root, tmp_path / "store", resolution=(H, W), print_summary=False)
    assert sorted(report.ingested) == ["ep-a", "ep-b"]
    store = EpisodeStore(tmp_path / "store")
    assert store.episode_events("ep-a") == [
        (3, "mine_block:oak_log"),
        (5, "mine_block:oak_log"),
        (10, "craft_item:crafting_table"),
    ]
    assert store.episode_events("ep-b") == [(39, "craft_item:crafting_table")]
    notes = " | ".join(f"{n['episode']}: {n['note']}" for n in report.notes)
    assert "('craft_item:crafting_table', 2) is missing" in notes  # the missing item
    assert "ep-b: 1 event(s) at frames [40] outside its 40 frames" in notes
    assert "ep-gone: 1 event(s) of an episode not imported" in notes
