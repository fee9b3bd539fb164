"""An Optuna search through the local submitit launcher: resumable study, pruning, failed trials, report.

One study, two invocations of the same command: 3 trials (one wave of 3 jobs), then 3 more in the same
study (trials 0..5, not a new study). Before the second invocation two trials are enqueued that are deliberately
bad: a huge learning rate that trains (val loss ~100x the others: the median pruner stops it at its
first validation) and an absurd one whose loss turns NaN at once (the job raises: trial FAIL, its
traceback in its folder, the sweep goes on).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.helpers import SMALL_RUN

pytestmark = pytest.mark.slow

SMALL = [*SMALL_RUN, "logger=csv"]
MAX_STEPS, VAL_EVERY = 10, 5
PRUNED_LR, NAN_LR = 3.0, 1e4


def sweep(store: Path, output_root: Path) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "train.py",
        "-m",
        "hydra/sweeper=optuna_study",
        "hydra/launcher=local",
        *SMALL,
        f"data.root={store}",
        f"paths.output_root={output_root}",
        f"trainer.max_steps={MAX_STEPS}",
        f"trainer.val_check_interval={VAL_EVERY}",
        # the search space: command-line ranges replace the preset's for these keys
        "optim.learning_rate=tag(log,interval(3e-4,3e-3))",
        "optim.warmup_steps=range(0,6)",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.n_jobs=3",
        "hydra.sweeper.sampler.seed=0",
        "hydra.sweeper.sampler.n_startup_trials=3",
        "hydra.sweeper.pruner.n_startup_trials=3",  # the first wave (3 trials) is never pruned: it completes
        "hydra.launcher.cpus_per_task=1",
    ]
    env = dict(os.environ, WANDB_MODE="offline")
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def load_study(sweep_dir: Path):
    import optuna

    from minesweep.sweeps.storage import open_storage

    storage = open_storage(f"journal://{sweep_dir / 'optuna.journal'}")
    names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
    assert names == ["demo"], names  # one study, continued: never a second one
    return optuna.load_study(study_name="demo", storage=storage)


def job_folders(sweep_dir: Path) -> dict[int, Path]:
    return {int(p.name.split("_", 1)[0]): p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit()}


def test_optuna_sweep_resumes_prunes_records_failures_and_reports(store, tmp_path):
    import optuna
    from matplotlib import image

    TrialState = optuna.trial.TrialState
    sweep_dir = tmp_path / "demo" / "optuna" / "demo"  # fixed by the study name: a rerun finds it

    first = sweep(store, tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    study = load_study(sweep_dir)
    assert [t.number for t in study.trials] == list(range(3))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    for trial in study.trials:
        record = json.loads((job_folders(sweep_dir)[trial.number] / "job.json").read_text())
        assert record["trial"] == trial.number
        assert trial.intermediate_values, "every trial reports val loss after each validation"
        if trial.state == TrialState.COMPLETE:
            assert record["state"] == "completed"
            # the value the study holds is the job's final metric
            assert record["value"] == pytest.approx(trial.value)
            assert record["metrics"]["val/loss"] == pytest.approx(trial.value)

    # Two deliberately bad trials go first in the next invocation.
    study.enqueue_trial({"optim.learning_rate": PRUNED_LR, "optim.warmup_steps": 0})
    study.enqueue_trial({"optim.learning_rate": NAN_LR, "optim.warmup_steps": 0})

    second = sweep(store, tmp_path)
    assert second.returncode == 0, second.stderr[-4000:]
    study = load_study(sweep_dir)
    trials = study.trials
    assert [t.number for t in trials] == list(range(6)), "the rerun continues the same study to 6 trials"
    assert all(t.state.is_finished() for t in trials), [(t.number, t.state) for t in trials]
    folders = job_folders(sweep_dir)
    assert sorted(folders) == list(range(6)), "job number == trial number: one folder per trial"

    bad = next(t for t in trials if t.params["optim.learning_rate"] == PRUNED_LR)
    assert bad.state == TrialState.PRUNED
    assert max(bad.intermediate_values) == VAL_EVERY < MAX_STEPS, "pruned at its first validation"
    record = json.loads((folders[bad.number] / "job.json").read_text())
    assert record["state"] == "pruned" and record["pruned_at_step"] == VAL_EVERY
    assert record["metrics"]["global_step"] == VAL_EVERY, "a pruned job stops training"

    nan = next(t for t in trials if t.params["optim.learning_rate"] == NAN_LR)
    assert nan.state == TrialState.FAIL
    record = json.loads((folders[nan.number] / "job.json").read_text())
    assert record["state"] == "failed"
    assert "FloatingPointError" in (folders[nan.number] / "error.log").read_text()

    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 3

    # The report: every job, sorted by val/loss, and a figure.
    result = subprocess.run(
        [sys.executable, "-m", "minesweep.sweeps.report", str(sweep_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["#", "job"])
    rows = lines[header + 2 : header + 2 + 6]
    assert len(rows) == 6 and all(row.split()[0].isdigit() for row in rows), result.stdout
    states = [row.split()[2] for row in rows]
    assert states.count("pruned") >= 1 and states[-1] == "failed", states
    assert f"failed job {nan.number}: FloatingPointError" in result.stdout
    values = [float(row.split()[3]) for row in rows if row.split()[2] == "completed"]
    assert values == sorted(values)
    png = sweep_dir / "sweep_report.png"
    pixels = image.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 200
