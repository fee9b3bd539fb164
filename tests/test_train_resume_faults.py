"""Fault injection: real training processes (Hydra entry point, loader worker processes) are killed at seeded random
steps, crossing epoch ends, and resumed with ``ckpt_path=last``; every later step must train the same batch with the
same loss as the uninterrupted run, and the final weights, optimizer state and carried memory must be equal."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from minesweep.data.loading.datamodule import MineDataModule
from tests.conftest import REPO

pytestmark = pytest.mark.slow

#: 7 training episodes of 96 frames = 42 windows of 16 frames: 11 batches of 4 per epoch; 40 steps cross 3 epoch ends.
BASE = [
    "policy.hidsize=64",
    "data.win_len=16",
    "data.batch_size=4",
    "data.num_workers=2",
    "data.demo=null",
    "data.episode_continuous_batch=false",
    "data.val_fraction=0.125",
    "trainer.accelerator=cpu",
    "trainer.max_steps=40",
    "trainer.val_check_interval=5",
    "trainer.limit_val_batches=1",
    "callbacks.progress_bar=null",
    "callbacks.lr_monitor=null",
    "~logger",
    "optim.learning_rate=1e-3",
    "optim.warmup_steps=12",
    "log_freq=1",
]


#: Checkpoints every 11 steps = at every epoch end (11 batches per epoch).
AT_EPOCH_ENDS = "trainer.val_check_interval=11"


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> list[Path]:
    roots = []
    for seed in (1, 2):
        root = tmp_path_factory.mktemp(f"demo{seed}") / "store"
        MineDataModule(
            root=str(root), demo={"episodes": 8, "frames": 96, "width": 160, "height": 90, "seed": seed}
        ).prepare_data()
        roots.append(root)
    return roots


@pytest.fixture(scope="module")
def varied_store(tmp_path_factory) -> Path:
    """Episodes of different lengths: packings (and, naively, epoch lengths) differ from epoch to epoch."""
    from minesweep.data.ingest.contractor import ingest
    from minesweep.data.recordings.synth import write_synthetic_episode

    raw = tmp_path_factory.mktemp("varied_raw")
    for i, frames in enumerate([37, 22, 51, 64, 15, 80, 33, 47, 29, 70]):
        write_synthetic_episode(raw, f"ep{i}", frames=frames, seed=i, width=96, height=64)
    root = tmp_path_factory.mktemp("varied") / "store"
    ingest(raw, root, resolution=(64, 64), print_summary=False)
    return root


def start(run_dir: Path, record: Path, overrides: list[str], **env_vars: str) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **env_vars}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.train_child", str(record), "--", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def records(record: Path, rank: int = 0) -> list[dict]:
    path = Path(f"{record}.rank{rank}")
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def run_to_end(run_dir: Path, record: Path, overrides: list[str]) -> str:
    proc = start(run_dir, record, overrides)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def run_and_kill(run_dir: Path, record: Path, overrides: list[str], at_step: int, sig: int) -> tuple[int, str]:
    """Start a run, send ``sig`` once it has trained ``at_step`` (SIGKILL, SIGINT: to its whole process group, as a
    node failure or a terminal's Ctrl-C would; else to the main process), wait for it to end; return its exit code
    and output."""
    proc = start(run_dir, record, overrides)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        done = records(record)
        if done and done[-1]["step"] >= at_step:
            if sig in (signal.SIGKILL, signal.SIGINT):  # a node failure; Ctrl-C in a terminal
                os.killpg(proc.pid, sig)
            else:
                os.kill(proc.pid, sig)
            break
        time.sleep(0.01)
    out, _ = proc.communicate(timeout=600)
    try:  # orphaned loader workers of a killed run
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.returncode, out


def saved_step(run_dir: Path) -> int:
    return int(torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"])


def assert_same_state(a: Path, b: Path) -> None:
    """Bitwise equal weights, optimizer and scheduler state, carried memory, loop position."""
    x = torch.load(a / "checkpoints" / "last.ckpt", weights_only=True)
    y = torch.load(b / "checkpoints" / "last.ckpt", weights_only=True)
    assert x["global_step"] == y["global_step"]

    def same(u, v, where):
        if isinstance(u, torch.Tensor):
            assert torch.equal(u, v), f"{where} differs"
        elif isinstance(u, dict):
            assert u.keys() == v.keys(), where
            for k in u:
                same(u[k], v[k], f"{where}.{k}")
        elif isinstance(u, (list, tuple)):
            assert len(u) == len(v), where
            for i, (p, q) in enumerate(zip(u, v, strict=False)):
                same(p, q, f"{where}[{i}]")
        else:
            assert u == v, f"{where}: {u} != {v}"

    # with callbacks/ema: state_dict is the EMA, current_model_state the trained weights
    for key in (
        "state_dict",
        "optimizer_states",
        "lr_schedulers",
        "minesweep_train_memory",
        "current_model_state",
        "averaging_state",
    ):
        assert (key in x) == (key in y), key
        if key in x:
            same(x[key], y[key], key)
    ema_states = sorted(k for k in x["callbacks"] if k.startswith("EMA"))
    for key in ema_states:
        same(x["callbacks"][key], y["callbacks"][key], f"callbacks.{key}")
    if (a / "checkpoints" / "ema.weights").exists() or (b / "checkpoints" / "ema.weights").exists():
        same(
            torch.load(a / "checkpoints" / "ema.weights", weights_only=True),
            torch.load(b / "checkpoints" / "ema.weights", weights_only=True),
            "ema.weights",
        )


_STRAIGHT: dict[tuple[str, ...], tuple[Path, Path]] = {}


def straight_run(tmp_path: Path, overrides: list[str]) -> tuple[Path, Path]:
    """The uninterrupted run of these overrides (run once per test session: several tests compare with it)."""
    key = tuple(overrides)
    if key not in _STRAIGHT:
        run_dir, record = tmp_path / "straight", tmp_path / "straight.jsonl"
        run_to_end(run_dir, record, overrides)
        _STRAIGHT[key] = run_dir, record
    return _STRAIGHT[key]


def check_resumed_chain(
    tmp_path: Path, overrides: list[str], kills: list[int], sigs: list[int] | None = None, ranks: int = 1
) -> None:
    """Interrupt a run at each of ``kills`` (with ``sigs``, one per kill; SIGKILL by default) and resume it each time;
    every segment must train what the uninterrupted run trained at the same steps, and end in the same state."""
    sigs = sigs or [signal.SIGKILL] * len(kills)
    assert len(sigs) == len(kills)
    straight_dir, straight_rec = straight_run(tmp_path, overrides)
    expected = {r["step"]: r for r in records(straight_rec)}
    assert sorted(expected) == list(range(1, 41)), "the uninterrupted run trains steps 1..40 once each"
    expected_ranks = [{r["step"]: r for r in records(straight_rec, rank)} for rank in range(ranks)]

    cut_dir = tmp_path / "cut"
    trained: dict[int, dict] = {}
    resumed_from = 0  # the step of the checkpoint the next segment starts from
    for segment, (at_step, sig) in enumerate(zip([*kills, None], [*sigs, None], strict=True)):
        record = tmp_path / f"segment{segment}.jsonl"
        resume = ["ckpt_path=last"] if segment else []
        if at_step is None:
            run_to_end(cut_dir, record, overrides + resume)
        else:
            code, out = run_and_kill(cut_dir, record, overrides + resume, at_step, sig)
            assert code != 0, f"the run was not interrupted at step {at_step}:\n{out[-2000:]}"
        for rank in range(1, ranks):  # every rank trains what it trained in the uninterrupted run
            for r in records(record, rank):
                e = expected_ranks[rank][r["step"]]
                assert (r["episode"], r["window"], r["start"], r["loss"]) == (
                    e["episode"],
                    e["window"],
                    e["start"],
                    e["loss"],
                ), f"rank {rank}, step {r['step']}: another batch or loss than the uninterrupted run"
        got = records(record)
        first = got[0]["step"]
        # a resumed segment starts right after the checkpoint's step
        if segment:
            assert first == resumed_from + 1, (first, resumed_from)
        for r in got:
            trained[r["step"]] = r
            e = expected[r["step"]]
            assert (r["epoch"], r["episode"], r["window"], r["start"]) == (
                e["epoch"],
                e["episode"],
                e["window"],
                e["start"],
            ), f"step {r['step']}: trained another batch than the uninterrupted run\n got {r}\n expected {e}"
            assert r["loss"] == e["loss"], (
                f"step {r['step']}: loss {float.fromhex(r['loss'])} != {float.fromhex(e['loss'])}"
            )
        if at_step is not None:
            resumed_from = saved_step(cut_dir)
            assert resumed_from <= got[-1]["step"]
            if sig != signal.SIGKILL:  # a graceful stop: the batch in progress finishes, nothing trained is lost
                assert code == 128 + sig, out[-3000:]
                assert resumed_from == got[-1]["step"] >= at_step
                assert f"stopped by {signal.Signals(sig).name} after step {resumed_from}" in out
                assert json.loads((cut_dir / "job.json").read_text())["state"] == "stopped"
    assert sorted(trained) == list(range(1, 41))
    assert_same_state(straight_dir, cut_dir)


def kill_steps(seed: int, n: int = 2) -> list[int]:
    """Seeded random kill points, one before and one after an epoch end (11 batches per epoch); the same in every
    session (a seed from ``hash()`` would change with PYTHONHASHSEED)."""
    rng = random.Random(seed)
    return sorted([rng.randint(6, 14), rng.randint(21, 34)][:n])


@pytest.mark.parametrize(
    "mode",
    # Plain grid and plain continuous batches are killed and stopped gracefully in
    # test_graceful_stops_and_sigkills_around_checkpoints_written_at_epoch_ends; continuous-ema is continuous with an
    # EMA beside it. The frames sampler is killed in test_sigkill_with_a_store_mixture (a mixture is a store to it).
    [
        ["data.sampling=episodes", "data.num_workers=0"],
        ["data.episode_continuous_batch=true", "data.num_workers=0", "data.frame_skip=2", "data.win_len=8"],
        ["data.episode_continuous_batch=true", "callbacks/ema=default", "callbacks.ema.decay=0.9"],
        ["data.sampling=events", "data.events=['mine_block:*']", "data.event_share=0.5", "data.event_offset=centre"],
    ],
    ids=[
        "episodes-0workers",
        "continuous-frameskip2-0workers",
        "continuous-ema",
        "events",
    ],
)
def test_sigkill_at_random_steps_then_resume_trains_exactly_what_the_uninterrupted_run_trains(stores, tmp_path, mode):
    check_resumed_chain(
        tmp_path, [*BASE, f"data.root={stores[0]}", *mode], kill_steps(zlib.crc32(" ".join(mode).encode()))
    )


def test_sigkill_with_a_store_mixture(stores, tmp_path):
    mixture = [f"data.root=[{stores[0]},{stores[1]}]", "+data.weights=[0.7,0.3]", "data.sampling=frames"]
    check_resumed_chain(tmp_path, [*BASE, *mixture], kill_steps(7))


@pytest.mark.parametrize(
    "mode",
    [
        ["data.episode_continuous_batch=true", AT_EPOCH_ENDS],
        ["data.sampling=grid", "callbacks/ema=default", "callbacks.ema.decay=0.9", "data/augment=strong"],
    ],
    ids=["continuous", "grid-ema-augment"],
)
def test_a_finished_run_extended_to_more_steps_continues_exactly(stores, tmp_path, mode):
    """max_steps reached mid-epoch: last.ckpt at train end; the same command with a larger max_steps continues."""
    overrides = [*BASE, f"data.root={stores[0]}", *mode]
    straight_dir, straight_rec = straight_run(tmp_path, overrides)
    expected = {r["step"]: r for r in records(straight_rec)}
    short = [o for o in overrides if not o.startswith("trainer.max_steps")] + ["trainer.max_steps=15"]
    run_to_end(tmp_path / "cut", tmp_path / "short.jsonl", short)
    assert saved_step(tmp_path / "cut") == 15
    run_to_end(tmp_path / "cut", tmp_path / "extended.jsonl", overrides + ["ckpt_path=last"])
    got = records(tmp_path / "extended.jsonl")
    assert [r["step"] for r in got] == list(range(16, 41))
    for r in got:
        e = expected[r["step"]]
        assert (r["episode"], r["window"], r["start"], r["loss"]) == (
            e["episode"],
            e["window"],
            e["start"],
            e["loss"],
        ), r["step"]
    assert_same_state(straight_dir, tmp_path / "cut")


@pytest.mark.parametrize(
    ("mode", "sigs"),
    [
        (["data.sampling=grid"], [signal.SIGINT, signal.SIGKILL]),
        (["data.episode_continuous_batch=true"], [signal.SIGKILL, signal.SIGTERM]),
    ],
    ids=["grid-SIGINT-to-the-process-group-then-SIGKILL", "continuous-SIGKILL-then-SIGTERM"],
)
def test_graceful_stops_and_sigkills_around_checkpoints_written_at_epoch_ends(stores, tmp_path, mode, sigs):
    """Interrupted at steps 13 and 25, with checkpoints at the epoch ends (steps 11 and 22): a SIGKILL resumes from
    the epoch end before it and starts the next epoch; a graceful stop (SIGTERM, or Ctrl-C's SIGINT to the whole
    process group) saves the step it ends at, mid-epoch, and loses nothing trained."""
    check_resumed_chain(tmp_path, [*BASE, f"data.root={stores[0]}", *mode, AT_EPOCH_ENDS], [13, 25], sigs)


def test_a_second_run_in_the_same_folder_is_refused_while_the_first_trains(stores, tmp_path):
    overrides = [*BASE, f"data.root={stores[0]}", "trainer.max_steps=1000"]
    first = start(tmp_path / "run", tmp_path / "first.jsonl", overrides)
    try:
        deadline = time.time() + 300
        while not records(tmp_path / "first.jsonl") and time.time() < deadline:
            time.sleep(0.05)
        # the same folder with another max_steps (not part of the folder name): refused, naming the holder
        second = start(tmp_path / "run", tmp_path / "second.jsonl", [*overrides[:-1], "trainer.max_steps=20"])
        out, _ = second.communicate(timeout=300)
        assert second.returncode != 0
        assert f"in use by another run (host {os.uname().nodename}, PID {first.pid}" in out, out[-2000:]
        assert not records(tmp_path / "second.jsonl"), "the second run trained"
        lock = json.loads((tmp_path / "run" / "run.lock").read_text())
        assert lock["pid"] == first.pid, "the refused run must not touch the holder's lock"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # the holder is gone (killed): its stale lock is taken over with a warning, and the run resumes
    out = run_to_end(
        tmp_path / "run", tmp_path / "third.jsonl", [*overrides[:-1], "trainer.max_steps=12", "ckpt_path=last"]
    )
    assert "taking over the lock of a run that is gone" in out
    assert not (tmp_path / "run" / "run.lock").exists(), "the lock is released at the end"


def test_a_full_disk_while_checkpointing_leaves_no_partial_checkpoint_and_says_so_in_job_json(stores, tmp_path):
    run_dir = tmp_path / "run"
    # a checkpoint of this policy is ~2.5 MB: the limit lets logs and records be written, not a checkpoint
    # (no loader workers: their shared-memory batches are files too)
    proc = start(
        run_dir,
        tmp_path / "rec.jsonl",
        [*BASE, f"data.root={stores[0]}", "data.num_workers=0"],
        TEST_FILE_SIZE_LIMIT="400000",
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode != 0
    checkpoints = list((run_dir / "checkpoints").iterdir()) if (run_dir / "checkpoints").exists() else []
    for path in checkpoints:
        assert not path.name.startswith("."), f"temporary file left behind: {path}"
        torch.load(path, weights_only=True)  # anything under a final name is whole
    job = json.loads((run_dir / "job.json").read_text())
    assert job["state"] == "failed"
    assert "could not save checkpoint" in job["reason"] and "checkpoints/" in job["reason"], job["reason"]


def test_sigkill_of_a_two_rank_ddp_run_then_resume(stores, tmp_path):
    """Both ranks (ddp_spawn, gloo) are killed with the whole process group; resumed on two ranks, each continues
    with its own next batch (continuous mode: each rank's slots carry memory). With an EMA of the weights."""
    ddp = [
        "trainer.strategy=ddp_spawn_find_unused_parameters_true",
        "trainer.devices=2",
        "data.num_workers=0",
        "data.episode_continuous_batch=true",
        "data.batch_size=2",
        "callbacks/ema=default",
        "callbacks.ema.decay=0.9",
    ]
    check_resumed_chain(tmp_path, [*BASE, f"data.root={stores[0]}", *ddp], kill_steps(11, n=1), ranks=2)


def test_a_plain_lightning_trainer_under_ddp_is_refused_with_the_setting_to_change(stores, tmp_path):
    import lightning as L

    from minesweep.objectives import BehaviorCloneCallback
    from minesweep.policies.tiny import TinyPolicy
    from minesweep.trainer import MineLightning

    dm = MineDataModule(str(stores[0]), win_len=8, batch_size=2, num_workers=0, episode_continuous_batch=True)
    module = MineLightning(TinyPolicy(hidsize=32), {"bc": BehaviorCloneCallback()})
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn_find_unused_parameters_true",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        default_root_dir=str(tmp_path),
    )  # Lightning's default: use_distributed_sampler=True
    with pytest.raises(Exception, match="use_distributed_sampler=False"):
        trainer.fit(module, datamodule=dm)


def test_continuous_training_serves_every_window_once_in_every_epoch(varied_store, tmp_path):
    """Through Lightning (which fixes the epoch length from the first epoch): each complete epoch of a real run
    trains every window of every training episode exactly once, whatever that epoch's packing."""
    from minesweep.data.loading.datamodule import split_episodes
    from minesweep.data.store import EpisodeStore

    run_to_end(
        tmp_path / "run",
        tmp_path / "rec.jsonl",
        [*BASE, f"data.root={varied_store}", "data.episode_continuous_batch=true", "trainer.max_steps=60"],
    )
    store = EpisodeStore(varied_store)
    train, _ = split_episodes(len(store), 0.125, 0)
    # brute force: window w of episode e covers frames [16w, 16w + 16)
    every_window = sorted((e, w) for e in train for w in range(-(-int(store.lengths[e]) // 16)))
    by_epoch: dict[int, list] = {}
    for r in records(tmp_path / "rec.jsonl"):
        by_epoch.setdefault(r["epoch"], []).extend(
            (e, w) for e, w, s in zip(r["episode"], r["window"], r["start"], strict=False) if e >= 0 and s == 16 * w
        )
    complete = [epoch for epoch in sorted(by_epoch) if epoch < max(by_epoch)]
    assert len(complete) >= 4
    for epoch in complete:
        assert sorted(by_epoch[epoch]) == every_window, f"epoch {epoch} dropped or repeated windows"
