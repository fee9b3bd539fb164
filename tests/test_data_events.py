"""Events in the store and event-centred windows (minesweep/data/events.py, the store's events, EventWindowSampler)."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from minesweep.actions.contractor import ContractorFormatError
from minesweep.data.cli import main as cli_main
from minesweep.data.events import EventError, check_events, contractor_events, match_event_names
from minesweep.data.ingest.contractor import ingest
from minesweep.data.loading.datamodule import Batches, MineDataModule
from minesweep.data.loading.sampler import EventWindowSampler
from minesweep.data.store import EVENT_DTYPE, EVENTS, CorruptDataError, EpisodeStore, StoreWriter, verify_store
from minesweep.envs.crafter_record import SUMMARY, record_crafter

WIN = 16


@pytest.fixture(scope="module")
def crafter(tmp_path_factory) -> tuple[Path, list]:
    """A real Crafter store: 6 scripted games recorded, then ingested as a user would (contractor files)."""
    root = tmp_path_factory.mktemp("crafter")
    results = record_crafter(root / "raw", episodes=6, length=250, size=64, workers=2, progress=False)
    report = ingest(root / "raw", root / "store", resolution=(64, 64), codec="raw", workers=2, print_summary=False)
    assert not report.skipped
    return root / "store", results


# -- where events come from ----------------------------------------------------------------------------------------
def test_contractor_events_from_lists_and_counter_increases() -> None:
    steps = [
        {"stats": {"minecraft.mine_block:minecraft.oak_log": 4, "minecraft.custom:minecraft.jump": 9}},
        {"stats": {"minecraft.mine_block:minecraft.oak_log": 4, "minecraft.custom:minecraft.jump": 9}},
        {"stats": {"minecraft.mine_block:minecraft.oak_log": 6, "minecraft.custom:minecraft.jump": 9}, "events": ["x"]},
        {"stats": {"minecraft.mine_block:minecraft.oak_log": 6, "minecraft.craft_item:minecraft.stick": 1}},
        {},
    ]
    # The first step is the baseline (4 logs already mined: no event); +2 logs at step 2 is one event at that step;
    # a general counter (jumps) is not an event.
    steps[3]["stats"]["minecraft.custom:minecraft.jump"] = 10
    assert contractor_events(steps) == [(2, "mine_block:oak_log"), (2, "x"), (3, "craft_item:stick")]


@pytest.mark.parametrize(
    "step, key",
    [
        ({"stats": {"minecraft.mine_block:minecraft.dirt": float("nan")}}, "stats.minecraft.mine_block"),
        ({"stats": [1, 2]}, "'stats'"),
        ({"events": "collect_wood"}, "'events'"),
        ({"events": ["bad,name"]}, "'events'"),
    ],
)
def test_bad_event_fields_name_the_file_and_step(step: dict, key: str) -> None:
    with pytest.raises(ContractorFormatError, match=rf"rec\.jsonl: step 1: .*{key[:8]}") as err:
        contractor_events([{}, step], "rec.jsonl")
    assert err.value.step == 1


def test_check_events_names_the_episode() -> None:
    assert check_events([(3, "b"), (1, "a")], 5, "ep") == ((1, "a"), (3, "b"))
    with pytest.raises(EventError, match="ep: event 'a' at frame 5, outside the episode's 5 frames"):
        check_events([(5, "a")], 5, "ep")
    with pytest.raises(EventError, match="pair"):
        check_events(["a"], 5, "ep")


def test_patterns_match_names_and_a_typo_lists_what_there_is() -> None:
    names = ["collect_wood", "make_wood_pickaxe", "make_stone_pickaxe", "place_table"]
    assert match_event_names(["make_*", "place_table"], names, "S") == [
        "make_stone_pickaxe",
        "make_wood_pickaxe",
        "place_table",
    ]
    with pytest.raises(ValueError, match="'plase_table' matches no event in S .*place_table"):
        match_event_names(["plase_table"], names, "S")


# -- a real Crafter store ------------------------------------------------------------------------------------------
def test_crafter_store_counts_match_the_recordings(crafter, capsys) -> None:
    root, results = crafter
    store = EpisodeStore(root)
    summary = json.loads((root.parent / "raw" / SUMMARY).read_text())["results"]
    expected = Counter()
    for result in summary:  # the game's own achievement counters at the end of each episode
        expected.update({k: v for k, v in result["achievements"].items() if v})
    assert store.event_counts == dict(expected)
    assert len(store.events) == sum(expected.values()) > 0
    for result in results:  # each event at the step whose action unlocked it (frame == step)
        assert store.episode_events(result.name) == sorted(result.events)
        assert store.episode_events(result.name) and all(f < result.length for f, _ in result.events)
    assert cli_main(["events", str(root), "place_*"]) == 0
    out = capsys.readouterr().out
    assert f"place_table\t{expected['place_table']}\t" in out and "collect_wood" not in out
    assert cli_main(["events", str(root), "--json"]) == 0
    assert {k: v["events"] for k, v in json.loads(capsys.readouterr().out).items()} == dict(expected)
    assert cli_main(["events", str(root), "plase_table"]) == 1
    assert "matches no event" in capsys.readouterr().err


def _event_windows(root: Path, **settings) -> tuple[MineDataModule, list[dict]]:
    data = MineDataModule(
        str(root), win_len=WIN, batch_size=8, num_workers=0, val_fraction=0.0, sampling="events", **settings
    )
    data.setup()
    return data, list(data.train_dataloader())


@pytest.mark.parametrize(
    "offset, index, frame_skip",
    [("end", WIN - 1, 1), ("centre", WIN // 2, 1), ("start", 0, 1), (5, 5, 1), ("end", WIN - 1, 2)],
)
def test_every_event_window_holds_its_event_at_the_configured_position(crafter, offset, index, frame_skip) -> None:
    root, _ = crafter
    data, batches = _event_windows(
        root, events=["place_table", "make_*"], event_offset=offset, frame_skip=frame_skip, samples_per_epoch=400
    )
    store = data.store
    wanted = {i for i, n in enumerate(store.event_names) if n == "place_table" or n.startswith("make_")}
    shifted = 0
    for batch in batches:
        for b in range(len(batch["episode"])):
            p, episode = int(batch["event_frame"][b]), int(batch["episode"][b])
            assert p >= 0  # event_share 1: every window is an event window
            frame = int(batch["timestep"][b, p])
            assert batch["mask"][b, p] == 1
            rows = store.events[store.events["episode"] == episode]
            assert any(f == frame and n in wanted for f, n in zip(rows["frame"], rows["name"], strict=True))
            # Brute force: the configured index wherever that window fits in the episode, else the nearest that does.
            length = int(store.lengths[episode])
            fits = [q for q in range(WIN) if frame - q * frame_skip >= 0 and frame + (WIN - q) * frame_skip <= length]
            expected = index if index in fits or not fits else min(fits, key=lambda q: abs(q - index))
            if not fits:
                expected = min(index, frame // frame_skip)
            assert p == expected, (episode, frame, length, p, expected)
            shifted += p != index
            # The window is the stored one: timesteps step by frame_skip from the start.
            start = frame - p * frame_skip
            assert batch["timestep"][b].tolist() == list(range(start, start + WIN * frame_skip, frame_skip))
    assert shifted < 400 * 0.5  # most windows sit where asked


def test_event_share_and_balance(crafter) -> None:
    root, _ = crafter
    data, batches = _event_windows(root, events=["*"], event_share=0.3, samples_per_epoch=2000)
    frames = np.concatenate([b["event_frame"].numpy() for b in batches])
    share = (frames >= 0).mean()
    assert abs(share - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 2000), share  # binomial, 4 sigma
    assert (batches[0]["window_index"] == -2).all()  # random windows: nothing continues across batches

    store = data.store
    names = store.event_names
    counts = {}
    for balance in ("occurrences", "names"):
        sampler = EventWindowSampler(
            store.lengths, WIN, 6000, store.events, WIN, balance=balance, episodes=list(range(len(store)))
        )
        drawn = Counter()
        for key in sampler:
            episode, start, p = key
            row = store.events[(store.events["episode"] == episode) & (store.events["frame"] == start + p)]
            drawn[names[int(row["name"][0])]] += 1
        counts[balance] = drawn
    occurrences = store.event_counts
    rare, common = min(occurrences, key=occurrences.get), max(occurrences, key=occurrences.get)
    assert counts["occurrences"][common] > 5 * counts["occurrences"][rare]
    share_of = {n: counts["names"][n] / 6000 for n in names}
    assert all(abs(s - 1 / len(names)) < 0.03 for s in share_of.values()), share_of


def test_event_windows_resume_at_the_next_batch(crafter) -> None:
    root, _ = crafter
    store = EpisodeStore(root)

    def batches() -> Batches:
        sampler = EventWindowSampler(
            store.lengths, WIN, 50, store.events, WIN, share=0.5, seed=7, episodes=list(range(len(store)))
        )
        return Batches(sampler, 4, seed=7)

    whole = batches()
    whole.set_epoch(0)
    first = list(whole)
    whole.set_epoch(1)
    second = list(whole)
    assert first != second  # each epoch draws anew
    cut = batches()
    cut.set_epoch(1)
    cut.load_state_dict(whole.state_dict(batches_done=5, trainer_epoch=1))
    assert list(cut) == second[5:]


def test_event_sampling_refuses_what_it_cannot_do(crafter, store) -> None:
    root, _ = crafter
    with pytest.raises(ValueError, match="needs data.events"):
        MineDataModule(str(root), sampling="events")
    with pytest.raises(ValueError, match="only used with data.sampling=events"):
        MineDataModule(str(root), events=["place_table"])
    with pytest.raises(ValueError, match="episode_continuous_batch"):
        MineDataModule(str(root), sampling="events", events=["x"], episode_continuous_batch=True)
    with pytest.raises(ValueError, match="'plase_table' matches no event .*place_table"):
        _event_windows(root, events=["plase_table"])
    with pytest.raises(ValueError, match="offset"):
        _event_windows(root, events=["*"], event_offset=WIN)
    # A store without that event at all (the synthetic demo has only mine_block:red_wool).
    with pytest.raises(ValueError, match="matches no event"):
        _event_windows(store, events=["place_table"])


def test_store_written_without_events_says_so(tmp_path: Path, crafter) -> None:
    root, _ = crafter
    old = tmp_path / "old"
    shutil.copytree(root, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["events"]  # as a store written before events were kept
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert not EpisodeStore(old).has_events and len(EpisodeStore(old).events) == 0
    with pytest.raises(ValueError, match="keeps no events .*re-ingest"):
        _event_windows(old, events=["*"])


# -- the event table's integrity and the writer's journal -----------------------------------------------------------
def test_damaged_event_table_is_named(tmp_path: Path, crafter) -> None:
    root, _ = crafter
    damaged = tmp_path / "damaged"
    shutil.copytree(root, damaged)
    data = bytearray((damaged / EVENTS).read_bytes())
    data[-3] ^= 0xFF
    (damaged / EVENTS).write_bytes(bytes(data))
    report = verify_store(damaged)
    assert [p["what"] for p in report.problems] == ["events"] and str(damaged / EVENTS) in report.problems[0]["message"]
    (damaged / EVENTS).write_bytes(bytes(data[:-8]))
    with pytest.raises(CorruptDataError, match=rf"{EVENTS}.*truncated"):
        EpisodeStore(damaged).events  # noqa: B018


def test_killed_writer_keeps_the_journalled_events(tmp_path: Path) -> None:
    frames = np.zeros((6, 8, 8, 3), np.uint8)
    actions = {
        "buttons": np.zeros((6, 20), np.uint8),
        "camera": np.zeros((6, 2), np.float32),
        "is_null": np.ones(6, bool),
        "esc": np.zeros(6, bool),
    }
    writer = StoreWriter(tmp_path / "s", resolution=(8, 8), codec="raw")
    writer.add_episode("a", frames, actions, events=[(2, "door"), (0, "key")])
    writer.add_episode("b", frames, actions)
    writer._journal.close()  # killed: no close(), no manifest
    with StoreWriter(tmp_path / "s", resolution=(8, 8), codec="raw") as resumed:
        assert resumed.resumed == 2
        resumed.add_episode("c", frames, actions, events=[(5, "door")])
    store = EpisodeStore(tmp_path / "s")
    assert store.episode_events("a") == [(0, "key"), (2, "door")]
    assert store.episode_events("b") == [] and store.episode_events("c") == [(5, "door")]
    assert store.event_counts == {"door": 2, "key": 1}
    assert store.events.dtype == EVENT_DTYPE
    with pytest.raises(EventError, match="'d'.*frame 6"):
        StoreWriter(tmp_path / "t", resolution=(8, 8), codec="raw").add_episode("d", frames, actions, events=[(6, "x")])


def test_counter_events_of_the_synthetic_demo_go_through_ingest(store: Path) -> None:
    """The synthetic recordings count broken targets in ``stats`` (as contractor files count mined blocks): each
    increase is an event at that step, through the real ingest."""
    from minesweep.actions.contractor import read_jsonl
    from minesweep.data.recordings.synth import MINED_STAT

    episodes = EpisodeStore(store)
    assert episodes.event_names == ["mine_block:red_wool"]
    total = 0
    for record in episodes.episodes:
        counter = [step["stats"][MINED_STAT] for step in read_jsonl(store.parent / "demo_raw" / f"{record.id}.jsonl")]
        expected = [(t, "mine_block:red_wool") for t in range(1, len(counter)) if counter[t] > counter[t - 1]]
        assert episodes.episode_events(record.id) == expected
        total += len(expected)
    assert total > 0 and episodes.event_counts == {"mine_block:red_wool": total}


@pytest.mark.slow
def test_the_readme_event_command_trains(crafter, tmp_path: Path) -> None:
    """The README's event-window command, as written, at a toy scale on a real Crafter store."""
    import re
    import shlex
    import subprocess
    import sys

    from tests.conftest import REPO

    section = (REPO / "README.md").read_text(encoding="utf-8").split("### Event-centred windows", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    (line,) = [line.strip() for line in block.splitlines() if line.strip().startswith("python train.py")]
    assert "data.sampling=events" in line
    root, _ = crafter
    toy = [
        f"data.root={root}",
        "data.demo=null",
        "data.win_len=8",
        "data.batch_size=4",
        "data.num_workers=0",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.limit_val_batches=1",
        "callbacks.progress_bar=null",
        "callbacks.final_eval=null",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = subprocess.run(
        [sys.executable, *shlex.split(line)[1:], *toy],
        cwd=REPO,
        env={**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "sampling: events" in saved and "make_*" in saved
