"""minesweep.sweeps.launcher: a job killed without a word is a failed job with its reason, not a dead sweep."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.helpers import SMALL_RUN

pytestmark = pytest.mark.slow


def test_a_killed_job_is_recorded_failed_and_the_other_jobs_finish(store, tmp_path):
    sweep = tmp_path / "sweep"
    env = dict(os.environ, WANDB_MODE="offline", MINESWEEP_ALLOWED_TARGETS="tests.helpers.DieAtStep")
    result = subprocess.run(
        [
            sys.executable,
            "train.py",
            "-m",
            "hydra/launcher=local",
            "hydra/sweeper=grid",
            *SMALL_RUN,
            "logger=csv",
            f"data.root={store}",
            f"paths.output_root={tmp_path}",
            f"hydra.sweep.dir={sweep}",
            "trainer.max_steps=4",
            "trainer.val_check_interval=2",
            "+callbacks.die._target_=tests.helpers.DieAtStep",
            "+callbacks.die.at_step=2,-1",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode != 0, "a failed job fails the sweep, after the others"
    (killed,) = sweep.glob("0_*")
    (survivor,) = sweep.glob("1_*")
    record = json.loads((killed / "job.json").read_text())
    assert record["state"] == "failed" and "ended without a result" in record["reason"], record
    assert "ended without a result" in (killed / "error.log").read_text()
    assert json.loads((survivor / "job.json").read_text())["state"] == "completed"
    assert (survivor / "checkpoints" / "last.ckpt").is_file()
    assert "job #0 failed" in result.stderr + result.stdout, "the sweep names the job that died"
