"""benchmarks/first_run.py runs the README's two commands as a newcomer would (it had silently stopped evaluating
once minesweep-eval moved): here at toy scale, end to end."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_first_run_benchmark_trains_evaluates_and_prints_the_figures(tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable,
            "benchmarks/first_run.py",
            "--runs=1",
            "--eval-episodes=2",
            f"--out={tmp_path / 'out'}",
            "data.demo.episodes=2",
            "data.demo.length=40",
            "data.demo.workers=1",
            "data.val_fraction=0.5",
            "data.num_workers=0",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
            "callbacks.final_eval.episodes=1",
            "eval.env.length=30",
            "logger=csv",
        ],
        cwd=REPO,
        env=dict(os.environ, WANDB_MODE="disabled"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode in (0, 1), result.stdout[-3000:] + result.stderr[-3000:]  # 1: a target missed
    run = re.search(r"run 0: train.py (\d+) s .*, eval (\d+) s; return (-?[\d.]+) vs random ([\d.]+) = ", result.stdout)
    assert run, result.stdout[-3000:]
    assert float(run.group(4)) > 0  # the random player's mean return over the eval's worlds
    assert "medians of 1 runs:" in result.stdout and "return_vs_random" in result.stdout
    assert (tmp_path / "out" / "run0" / "cache").is_dir()  # its own, empty cache: the demo was recorded into it
