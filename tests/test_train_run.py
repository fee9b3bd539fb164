"""Real training runs on synthetic recordings: learning, resume, multirun, wandb offline."""

import csv
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from minesweep.train import train
from tests.conftest import CONF_DIR, REPO
from tests.helpers import SMALL_RUN

pytestmark = pytest.mark.slow

SMALL = SMALL_RUN


def config(store: Path, output_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose(
            "train",
            overrides=[*SMALL, f"data.root={store}", f"paths.output_dir={output_dir}", "logger=csv", *overrides],
        )


def logged(output_dir: Path, key: str) -> list[tuple[int, float]]:
    rows = []
    for path in sorted(output_dir.glob("csv/version_*/metrics.csv")):
        with open(path) as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    rows.append((int(row["step"]), float(row[key])))
    return rows


def test_bc_loss_falls_on_demo_data(store, tmp_path):
    cfg = config(
        store,
        tmp_path,
        "trainer.max_steps=60",
        "trainer.val_check_interval=30",
        "log_freq=1",
        "optim.learning_rate=1e-3",
        "optim.warmup_steps=5",
    )
    metrics = train(cfg)
    curve = [v for _, v in logged(tmp_path, "train/bc/loss_per_frame")]
    assert len(curve) >= 50
    start, end = sum(curve[:3]) / 3, sum(curve[-5:]) / 5
    assert end < 0.7 * start, f"BC loss per frame did not fall by 30%: {start:.3f} -> {end:.3f}"
    assert metrics["global_step"] == 60
    assert "val/loss" in metrics and "val/bc/loss_per_frame" in metrics
    assert (tmp_path / "config.yaml").is_file()


def test_resume_from_last_checkpoint_continues_at_saved_step(store, tmp_path):
    train(config(store, tmp_path, "trainer.max_steps=10", "trainer.val_check_interval=5", "log_freq=1"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)  # checkpoints hold no pickled objects
    assert saved["global_step"] == 10

    metrics = train(
        config(store, tmp_path, "trainer.max_steps=16", "trainer.val_check_interval=3", "ckpt_path=last", "log_freq=1")
    )
    assert metrics["global_step"] == 16
    resumed_steps = [s for s, _ in logged(tmp_path, "train/loss")]
    assert torch.load(last, weights_only=True)["global_step"] == 16
    # the second run logged only steps after the saved one
    second_run = sorted(tmp_path.glob("csv/version_*"))[-1]
    steps = [int(r["step"]) for r in csv.DictReader(open(second_run / "metrics.csv")) if r.get("train/loss")]
    assert steps and min(steps) >= 10, steps
    assert resumed_steps


def test_resume_without_checkpoint_says_where_it_looked(store, tmp_path):
    with pytest.raises(FileNotFoundError, match="last.ckpt"):
        train(config(store, tmp_path, "ckpt_path=last"))


def test_multirun_sweep_runs_two_jobs_in_two_folders_with_wandb_offline(store, tmp_path):
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    args = [
        sys.executable,
        "train.py",
        "-m",
        *SMALL,
        f"data.root={store}",
        f"paths.output_root={tmp_path}",
        "optim.learning_rate=1e-3,3e-4",
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
    ]
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.parent for p in tmp_path.glob("demo/multirun/*/*/config.yaml"))
    assert len(jobs) == 2, jobs
    rates = {float(OmegaConf.load(j / "config.yaml").optim.learning_rate) for j in jobs}
    assert rates == {1e-3, 3e-4}
    for job in jobs:
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / ".hydra" / "config.yaml").is_file()
        # each job has its own, finished, offline wandb run
        runs = list((job / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, runs


def test_throughput_benchmark_runs_and_prints_its_figures(store, tmp_path):
    args = [
        sys.executable,
        "benchmarks/train_throughput.py",
        "--runs",
        "1",
        "--warmup",
        "1",
        "--steps",
        "2",
        *[o for o in SMALL if not o.startswith("callbacks.")],
        f"data.root={store}",
    ]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for figure in ("machine:", "torch", "median training throughput:", "frames/s", "peak RSS:"):
        assert figure in result.stdout, result.stdout


def test_throughput_benchmark_overhead_times_a_bare_loop_beside_the_trainer(store, tmp_path):
    args = [
        sys.executable,
        "benchmarks/train_throughput.py",
        "--runs",
        "1",
        "--warmup",
        "1",
        "--steps",
        "2",
        "--overhead",
        *[o for o in SMALL if not o.startswith("callbacks.")],
        f"data.root={store}",
    ]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("fixed per-step cost:"))
    trainer_ms, bare_ms = (float(v) for v in re.findall(r"([0-9.]+) ms (?:in the trainer|bare)", line))
    assert 0 < bare_ms and 0 < trainer_ms, line
    assert "% of a step is the rest" in line and "gradient clipping" in line, line


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fused_adamw_with_gradient_clipping_trains(store, tmp_path, precision):
    # Lightning refuses gradient clipping with a fused optimizer under mixed precision; ours clips itself.
    cfg = config(
        store,
        tmp_path,
        "trainer.max_steps=3",
        "trainer.limit_val_batches=1",
        f"trainer.precision={precision}",
        "trainer.gradient_clip_val=1e-3",
    )
    metrics = train(cfg)
    assert metrics["global_step"] == 3
    assert torch.isfinite(torch.tensor(metrics["val/loss"]))


def test_compiled_policy_trains_and_saves_the_same_checkpoint_layout(store, tmp_path):
    """compile=true compiles the policy in place: the checkpoint's keys are the eager policy's (no _orig_mod.).
    Dynamo's eager backend: the same wrapping without inductor's minutes of compiling on 2 cores."""
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train(config(store, eager, "trainer.max_steps=2", "trainer.val_check_interval=2"))
    from torch._dynamo.utils import counters

    counters.clear()
    compile_options = "compile={backend: eager}"
    metrics = train(config(store, compiled, "trainer.max_steps=2", "trainer.val_check_interval=2", compile_options))
    assert counters["stats"]["unique_graphs"] > 0, "dynamo traced the policy"
    assert metrics["global_step"] == 2 and math.isfinite(metrics["train/loss"])
    keys = [
        set(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]) for run in (eager, compiled)
    ]
    assert keys[0] == keys[1]


def test_train_py_imported_by_a_spawned_process_loads_nothing_heavy():
    """The demo's recording and ingest run in spawned processes, and each spawned process imports the parent's main
    script again (as __mp_main__). train.py must not load Lightning (or torch) there: at the top of the file, that
    import cost each pool ~8 s of the first run's five minutes."""
    probe = (
        "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__mp_main__'); "
        "print(sorted(m for m in ('lightning', 'torch', 'hydra', 'minesweep.train') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(REPO / "train.py")], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == "[]"
