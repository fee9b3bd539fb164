"""EpisodeStore / StoreWriter: round trip, keyframe layout, seek-based window reads, errors."""

import io
import json
import os
import pickle
import subprocess
import sys

import av
import numpy as np
import pytest

from minesweep.data.store import EpisodeLengthError, EpisodeStore, StoreWriter, encode_episode

H, W, FPS, T = 64, 96, 20, 90


def make_frames(n: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients with a moving block: every frame differs, compresses like real video."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    frames = np.empty((n, H, W, 3), np.uint8)
    for t in range(n):
        frames[t, ..., 0] = (x * 2 + t * 3) % 256
        frames[t, ..., 1] = (y * 3 + t) % 256
        frames[t, ..., 2] = 90
        c = (t * 5) % (W - 16)
        frames[t, 20:36, c : c + 16] = rng.integers(0, 256, 3)
    return frames


def make_actions(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "buttons": rng.integers(0, 2, (n, 20)).astype(np.uint8),
        "camera": rng.normal(0, 5, (n, 2)).astype(np.float32),
        "is_null": rng.random(n) < 0.2,
        "esc": rng.random(n) < 0.05,
    }


def decode_all(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    with StoreWriter(root, resolution=(H, W), fps=FPS) as writer:
        writer.add_episode("ep-a", make_frames(T), make_actions(T), source="a.mp4")
        # an iterator of single frames and of batches both work
        frames_b = make_frames(40, seed=1)
        writer.add_episode("ep-b", (f for f in frames_b), make_actions(40, seed=1), source="b.mp4")
        writer.add_episode("ep-c", [frames_b[:10], frames_b[10:33]], make_actions(33, seed=2))
    return root


def test_manifest_index_and_journal(store_root):
    manifest = json.loads((store_root / "manifest.json").read_text())
    assert manifest["format_version"] == 4 and manifest["codec"] == "h264" and manifest["action_space_version"]
    assert manifest["fps"] == FPS and manifest["resolution"] == [H, W] and manifest["chunk_size"] == 32
    assert manifest["num_episodes"] == 3 and manifest["num_frames"] == T + 40 + 33
    assert [s["file"] for s in manifest["shards"]] == ["shards/shard-00000.bin"]
    assert manifest["shards"][0]["size"] == (store_root / "shards/shard-00000.bin").stat().st_size
    journal = [json.loads(line) for line in (store_root / "episodes.jsonl").read_text().splitlines()]
    assert [(e["id"], e["length"], e["source"]) for e in journal] == [
        ("ep-a", T, "a.mp4"),
        ("ep-b", 40, "b.mp4"),
        ("ep-c", 33, ""),
    ]
    assert all(len(e["sha256"]) == 64 for e in journal)
    # episodes are back to back in the shard: video bytes, then actions
    ends = [(e["video_offset"], e["actions_offset"] + e["actions_size"]) for e in journal]
    assert ends[0][0] == 0 and all(ends[i][1] == ends[i + 1][0] for i in range(2))
    store = EpisodeStore(store_root)
    assert store.fps == FPS and store.resolution == (H, W) and len(store.episodes) == 3
    assert isinstance(store.index, np.memmap), "readers must memory-map the index, not load it"
    assert store.lengths.tolist() == [T, 40, 33] and store.episodes[1].id == "ep-b"


def test_keyframe_every_32_frames_and_pts_are_frame_indices(store_root):
    with av.open(io.BytesIO(EpisodeStore(store_root).read_video_bytes("ep-a"))) as c:
        stream = c.streams.video[0]
        packets = sorted((p.pts, p.is_keyframe) for p in c.demux(stream) if p.size)
        assert len(packets) == T
        keyframes = [i for i, (_, key) in enumerate(packets) if key]
        assert keyframes == list(range(0, T, 32))
        c.seek(0)
        indices = [round(float(f.pts * stream.time_base) * FPS) for f in c.decode(stream)]
        assert indices == list(range(T))


def test_round_trip_frames_and_actions(store_root):
    store = EpisodeStore(store_root)
    frames = store.read_frames("ep-a", 0, T)
    assert frames.dtype == np.uint8 and frames.shape == (T, H, W, 3)
    # lossy, but close to what was written
    assert np.abs(frames.astype(int) - make_frames(T)).mean() < 3
    actions = store.read_actions("ep-a")
    for key, value in make_actions(T).items():
        assert actions[key].dtype == value.dtype
        np.testing.assert_array_equal(actions[key], value)
    assert store.read_frames("ep-c", 0, 33).shape == (33, H, W, 3)


@pytest.mark.parametrize("start,length", [(0, 32), (32, 32), (40, 32), (33, 57), (70, 5), (89, 1), (5, 0)])
def test_window_equals_sequential_decode(store_root, start, length):
    sequential = decode_all(EpisodeStore(store_root).read_video_bytes("ep-a"))
    store = EpisodeStore(store_root)
    store.read_frames("ep-b", 3, 10)  # the same store hops between episodes and positions
    np.testing.assert_array_equal(store.read_frames("ep-a", start, length), sequential[start : start + length])
    np.testing.assert_array_equal(store.read_frames("ep-a", 1, 4), sequential[1:5])


def test_window_read_decodes_from_the_keyframe_not_from_zero(store_root):
    store = EpisodeStore(store_root)
    store.read_frames("ep-a", 70, 5)
    assert store.decoded_frames == (70 - 64) + 5
    store.read_frames("ep-a", 64, 26)
    assert store.decoded_frames == 26


def test_store_pickles_without_open_videos(store_root):
    store = EpisodeStore(store_root)
    first = store.read_frames("ep-b", 30, 4)
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.read_frames("ep-b", 30, 4), first)


def test_errors_name_what_is_wrong(store_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        EpisodeStore(tmp_path)
    store = EpisodeStore(store_root)
    with pytest.raises(KeyError, match="nope"):
        store.read_frames("nope", 0, 1)
    with pytest.raises(KeyError, match="nope"):
        store.read_actions("nope")
    with pytest.raises(IndexError, match="ep-c"):
        store.read_frames("ep-c", 30, 5)
    with pytest.raises(ValueError, match="resolution.*write to another folder"):
        StoreWriter(store_root, resolution=(H * 2, W))
    with pytest.raises(IndexError, match="out of range"):
        store.read_frames(7, 0, 1)


def test_failed_episode_leaves_nothing_behind(tmp_path):
    with StoreWriter(tmp_path, resolution=(H, W)) as writer:
        with pytest.raises(EpisodeLengthError, match="bad.*10 frames.*12 actions"):
            writer.add_episode("bad", make_frames(10), make_actions(12))

        def broken():
            yield from make_frames(5)
            raise OSError("disk vanished")

        with pytest.raises(OSError, match="disk vanished"):
            writer.add_episode("broken", broken(), make_actions(5))
        with pytest.raises(ValueError, match="frame 0"):
            writer.add_episode("wrong-size", np.zeros((3, H + 2, W, 3), np.uint8), make_actions(3))
        writer.add_episode("good", make_frames(3), make_actions(3))
    store = EpisodeStore(tmp_path)
    assert [e.id for e in store.episodes] == ["good"]
    record = store.episodes[0]
    assert (
        tmp_path / "shards/shard-00000.bin"
    ).stat().st_size == record.actions_offset + record.actions_size + record.segmentation_size


def test_an_error_mid_write_leaves_an_unfinished_store_that_resumes(tmp_path):
    """An exception (or Ctrl-C) out of the writer's block writes no manifest: readers see an unfinished store, and
    the next writer keeps what was journalled."""
    with pytest.raises(KeyboardInterrupt):
        with StoreWriter(tmp_path, resolution=(H, W)) as writer:
            writer.add_episode("a", make_frames(4), make_actions(4))
            raise KeyboardInterrupt
    assert not (tmp_path / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="did not finish: run it again to resume"):
        EpisodeStore(tmp_path)
    with StoreWriter(tmp_path, resolution=(H, W)) as writer:
        assert "a" in writer
        writer.add_episode("b", make_frames(3), make_actions(3))
    assert [e.id for e in EpisodeStore(tmp_path).episodes] == ["a", "b"]


@pytest.mark.parametrize("codec", ["h264", "raw"])
def test_both_codecs_read_the_same_windows(tmp_path, codec):
    frames = make_frames(70, seed=3)
    with StoreWriter(tmp_path, resolution=(H, W), codec=codec) as writer:
        writer.add_episode("e", frames, make_actions(70))
    store = EpisodeStore(tmp_path)
    window = store.read_frames("e", 33, 20)
    if codec == "raw":
        np.testing.assert_array_equal(window, frames[33:53])  # lossless, one pread
    else:
        assert np.abs(window.astype(int) - frames[33:53]).mean() < 3


def test_shards_roll_over_and_every_episode_reads_back(tmp_path):
    sizes = [40, 35, 50, 33, 41]
    with StoreWriter(tmp_path, resolution=(H, W), codec="raw", shard_size=3 * 40 * H * W * 3) as writer:
        for i, n in enumerate(sizes):
            writer.add_episode(f"e{i}", make_frames(n, seed=i), make_actions(n, seed=i))
    store = EpisodeStore(tmp_path)
    shards = [e.shard for e in store.episodes]
    assert shards == sorted(shards) and shards[-1] >= 1, shards
    assert len(list((tmp_path / "shards").iterdir())) == shards[-1] + 1
    for i, n in enumerate(sizes):
        np.testing.assert_array_equal(store.read_frames(f"e{i}", 0, n), make_frames(n, seed=i))
        np.testing.assert_array_equal(store.read_actions(i)["camera"], make_actions(n, seed=i)["camera"])


def test_resume_after_a_kill_keeps_verified_episodes_and_matches_an_uninterrupted_run(tmp_path):
    def write(root, ids):
        with StoreWriter(root, resolution=(H, W), codec="raw", shard_size=100_000_000) as writer:
            for i in ids:
                if f"e{i}" not in writer:
                    writer.add_episode(f"e{i}", make_frames(20 + i, seed=i), make_actions(20 + i, seed=i))
        return writer

    write(tmp_path / "whole", range(4))
    # A "killed" run: e0, e1 complete; e2 half written to the shard, its journal line cut mid-way.
    killed = tmp_path / "killed"
    writer = StoreWriter(killed, resolution=(H, W), codec="raw", shard_size=100_000_000)
    for i in range(3):
        writer.add_episode(f"e{i}", make_frames(20 + i, seed=i), make_actions(20 + i, seed=i))
    writer._shard_file.close()
    writer._journal.close()
    shard = killed / "shards/shard-00000.bin"
    record = writer.episodes[2]
    os.truncate(shard, record.video_offset + record.video_size // 2)
    journal = (killed / "episodes.jsonl").read_text().splitlines()
    (killed / "episodes.jsonl").write_text("\n".join(journal[:2]) + "\n" + journal[2][:30])
    assert not (killed / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="did not finish: run it again to resume"):
        EpisodeStore(killed)

    resumed = write(killed, range(4))
    assert resumed.resumed == 2
    for name in ("manifest.json", "episodes.jsonl", "index.npy", "shards/shard-00000.bin"):
        assert (killed / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_corrupt_bytes_in_the_last_shard_are_not_trusted_on_resume(tmp_path):
    with StoreWriter(tmp_path, resolution=(H, W), codec="raw") as writer:
        for i in range(3):
            writer.add_episode(f"e{i}", make_frames(10, seed=i), make_actions(10, seed=i))
    second = writer.episodes[1]
    with open(tmp_path / "shards/shard-00000.bin", "r+b") as f:
        f.seek(second.video_offset + 5)
        f.write(b"\xff\x00\xff")
    writer = StoreWriter(tmp_path, resolution=(H, W), codec="raw")
    assert [e.id for e in writer.episodes] == ["e0"] and "e1" not in writer
    writer.close()


def test_encoding_is_reproducible_across_processes():
    # Resume compares bytes, so the same frames must encode to the same H.264 in any process.
    code = (
        "import sys, hashlib; sys.path.insert(0, {root!r}); from tests.test_data_store import *; "
        "e = encode_episode('x', make_frames(40), make_actions(40), (H, W)); print(e.sha256)"
    )
    root = str(__import__("pathlib").Path(__file__).resolve().parents[1])
    digests = {
        subprocess.run(
            [sys.executable, "-c", code.format(root=root)], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    }
    assert len(digests) == 1 and encode_episode("x", make_frames(40), make_actions(40), (H, W)).sha256 in digests


# --------------------------------------------------------------------------- integrity: the attack


def corrupt_store(tmp_path, codec="h264", segmentation=False):
    """Three episodes (the middle one is the victim); returns the store root."""
    root = tmp_path / f"store-{codec}"
    with StoreWriter(root, resolution=(H, W), fps=FPS, codec=codec) as writer:
        for i, n in enumerate((70, 90, 40)):
            seg = None
            if segmentation:
                from minesweep.data.segmentation import empty_segmentation

                seg = empty_segmentation(n, (H, W))
                seg["mask"][:, 10:20, 10:30] = True
                seg["valid"][:] = True
            writer.add_episode(f"e{i}", make_frames(n, seed=i), make_actions(n, seed=i), segmentation=seg)
    return root


def flip(root, offset, count=1):
    """XOR ``count`` bytes of shard 0 at ``offset`` with 0xff (an attacker's or a disk's edit)."""
    with open(root / "shards/shard-00000.bin", "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))


def test_one_flipped_byte_in_a_gop_raises_naming_the_episode_and_its_frames(tmp_path):
    from minesweep.data.store import CorruptDataError

    root = corrupt_store(tmp_path)
    store = EpisodeStore(root)
    record = store.episodes[1]
    bounds = store._video_bounds(1, record)
    before = store.read_frames("e1", 64, 26).copy()
    flip(root, record.video_offset + int(bounds[1]) + 200)  # inside GOP 1: frames [32, 64)
    store = EpisodeStore(root)
    with pytest.raises(CorruptDataError) as caught:
        store.read_frames("e1", 40, 8)
    message = str(caught.value)
    for part in (str(root), "shard-00000.bin", "'e1'", "position 1", "frames [32, 64)"):
        assert part in message, message
    assert caught.value.episode == "e1" and caught.value.frames == (32, 64) and isinstance(caught.value, ValueError)
    with pytest.raises(CorruptDataError, match=r"frames \[32, 64\)"):
        store.read_frames("e1", 20, 20)  # a window that reaches into the GOP
    with pytest.raises(CorruptDataError):
        store.read_video_bytes("e1")
    # the other GOPs of the episode and the other episodes still read, and read right
    np.testing.assert_array_equal(store.read_frames("e1", 64, 26), before)
    assert store.read_frames("e1", 0, 32).shape == (32, H, W, 3)
    for other in ("e0", "e2"):
        n = store.episode(other).length
        assert np.abs(store.read_frames(other, 0, n).astype(int) - make_frames(n, seed=int(other[1]))).mean() < 3


def test_flipped_container_metadata_is_caught_when_the_video_is_opened(tmp_path):
    from minesweep.data.store import CorruptDataError

    root = corrupt_store(tmp_path)
    record = EpisodeStore(root).episodes[1]
    flip(root, record.video_offset + record.video_size - 30)  # in the moov box at the end of the mp4
    with pytest.raises(CorruptDataError, match="'e1'.*video header"):
        EpisodeStore(root).read_frames("e1", 0, 4)


def test_one_flipped_byte_in_a_raw_frame_names_that_frame(tmp_path):
    from minesweep.data.store import CorruptDataError

    root = corrupt_store(tmp_path, codec="raw")
    record = EpisodeStore(root).episodes[1]
    flip(root, record.video_offset + 50 * H * W * 3 + 7)
    store = EpisodeStore(root)
    with pytest.raises(CorruptDataError, match=r"'e1' \(position 1\), video frames \[50, 51\)"):
        store.read_frames("e1", 40, 20)
    np.testing.assert_array_equal(store.read_frames("e1", 0, 50), make_frames(90, seed=1)[:50])
    np.testing.assert_array_equal(store.read_frames("e2", 0, 40), make_frames(40, seed=2))


def test_sixteen_flipped_bytes_in_an_action_block_name_the_episode(tmp_path):
    from minesweep.data.store import CorruptDataError

    root = corrupt_store(tmp_path)
    record = EpisodeStore(root).episodes[1]
    flip(root, record.actions_offset + record.actions_size // 2, count=16)
    store = EpisodeStore(root)
    for read in (lambda: store.read_actions("e1"), lambda: store.read_frames("e1", 0, 4)):
        with pytest.raises(CorruptDataError, match=r"'e1' \(position 1\), actions, in shard .*shard-00000.bin"):
            read()
    np.testing.assert_array_equal(store.read_actions("e2")["camera"], make_actions(40, seed=2)["camera"])
    assert not any(k.startswith("integrity") for k in store.read_actions("e2"))  # the sums are not actions


def test_one_flipped_byte_in_the_masks_names_the_episode_and_frame(tmp_path):
    from minesweep.data.store import CorruptDataError

    root = corrupt_store(tmp_path, segmentation=True)
    record = EpisodeStore(root).episodes[1]
    row = record.segmentation_size // record.length
    flip(root, record.segmentation_offset + 33 * row + 3)
    store = EpisodeStore(root)
    with pytest.raises(CorruptDataError, match=r"'e1' \(position 1\), segmentation masks of frames \[33, 34\)"):
        store.read_segmentation("e1", 30, 8)
    assert store.read_segmentation("e1", 0, 33)["mask"][:, 10:20, 10:30].all()
    assert store.read_segmentation("e2", 0, 40)["mask"].sum() == 40 * 10 * 20


def test_truncated_shard_is_corrupt_not_garbage(tmp_path):
    from minesweep.data.store import CorruptDataError

    root = corrupt_store(tmp_path, codec="raw")
    record = EpisodeStore(root).episodes[2]
    os.truncate(root / "shards/shard-00000.bin", record.actions_offset + 10)
    with pytest.raises(CorruptDataError, match=r"'e2'.*actions.*the shard ends \d+ bytes early"):
        EpisodeStore(root).read_actions("e2")


@pytest.mark.parametrize("damage", ["truncate", "shape", "garbage"])
def test_damaged_index_is_named(tmp_path, damage):
    from minesweep.data.store import CorruptDataError

    root = corrupt_store(tmp_path)
    index = root / "index.npy"
    if damage == "truncate":
        index.write_bytes(index.read_bytes()[:-100])
    elif damage == "shape":
        np.save(index, np.zeros((3, 2)))
    else:
        index.write_bytes(b"\x00" * 50)
    with pytest.raises(CorruptDataError, match=r"index\.npy") as caught:
        EpisodeStore(root)
    assert str(index) in str(caught.value)


def test_damaged_manifest_and_old_format_are_named(tmp_path):
    from minesweep.data.store import CorruptDataError

    root = corrupt_store(tmp_path)
    manifest = root / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    with pytest.raises(CorruptDataError, match=r"manifest\.json: not valid JSON.*truncated"):
        EpisodeStore(root)
    data = json.loads(text)
    manifest.write_text(json.dumps({**data, "chunk_size": "32"}))
    with pytest.raises(CorruptDataError, match=r"manifest\.json: 'chunk_size'"):
        EpisodeStore(root)
    manifest.write_text(json.dumps({**data, "format_version": 2}))
    with pytest.raises(ValueError, match=r"manifest\.json: a format-2 store.*[Rr]e-ingest"):
        EpisodeStore(root)


def test_corrupt_error_survives_a_dataloader_worker(tmp_path):
    """Raised in a worker, re-raised in the training process with its message (constructible from it alone)."""
    from torch.utils.data import DataLoader

    from minesweep.data.loading.datamodule import WindowDataset

    root = corrupt_store(tmp_path, codec="raw")
    record = EpisodeStore(root).episodes[1]
    flip(root, record.video_offset + 3)
    loader = DataLoader(WindowDataset(root, episodes=[1], win_len=8), batch_size=None, num_workers=1)
    with pytest.raises(Exception, match=r"'e1' \(position 1\), video frames \[0, 1\)"):
        next(iter(loader))


@pytest.mark.parametrize("unit_bytes", [1, 7, 8, 100, 512, 1000, 2048, 49152, 49155])
def test_unit_hashes_hash_each_unit_and_catch_flips_and_swaps(unit_bytes):
    import xxhash

    from minesweep.data.store.format import _unit_hashes

    rng = np.random.default_rng(unit_bytes)
    data = rng.integers(0, 256, 3 * unit_bytes, dtype=np.uint8).tobytes()
    sums = _unit_hashes(data, unit_bytes, 3)
    assert sums.dtype == np.uint64
    assert sums.tolist() == [xxhash.xxh3_64(data[i * unit_bytes : (i + 1) * unit_bytes]).intdigest() for i in range(3)]
    for _ in range(50):  # any single flipped byte changes its unit's hash, and only that one
        i = int(rng.integers(3 * unit_bytes))
        damaged = bytearray(data)
        damaged[i] ^= int(rng.integers(1, 256))
        changed = _unit_hashes(bytes(damaged), unit_bytes, 3) != sums
        assert changed.tolist() == [u == i // unit_bytes for u in range(3)]
    if unit_bytes >= 1024:  # two different sectors swapped
        swapped = bytearray(data[:unit_bytes])
        swapped[:512], swapped[512:1024] = swapped[512:1024], swapped[:512]
        assert _unit_hashes(bytes(swapped), unit_bytes, 1)[0] != sums[0]
