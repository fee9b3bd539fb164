"""Sweeps on a real SLURM cluster: the single-node one of ``launch/local-slurm.sh start`` (.ci/run starts
it before the tests and stops it after). Skipped when no cluster answers, unless
MINESWEEP_REQUIRE_SLURM=1 (set by .ci/run), where that is a failure.

Every test submits through ``hydra/launcher=slurm`` exactly as a user would, on CPU: one CPU and
2 GB per task, no GPUs.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import REPO
from tests.helpers import SMALL_RUN

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SMALL = [*SMALL_RUN, "logger=csv"]
# The slurm preset asks for GPUs and big nodes; the local cluster has 2 CPUs and no GPU.
CPU_SLURM = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=null",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=5",
]


def cluster_answers() -> str | None:
    """None when a SLURM controller answers, else why not."""
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        return "SLURM client commands are not installed"
    result = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if result.returncode != 0 or "UP" not in result.stdout:
        return f"no SLURM controller answers ({(result.stdout + result.stderr).strip()[:200]})"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    why = cluster_answers()
    if why:
        message = f"{why}: start the local cluster with `launch/local-slurm.sh start` (as root)"
        if os.environ.get("MINESWEEP_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)


def command(store: Path, sweep_dir: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "-m",
        "hydra/sweeper=grid",  # objective-list grids and failures reported after every job (grid_sweeper.py)
        *CPU_SLURM,
        *SMALL,
        f"data.root={store}",
        f"paths.output_root={sweep_dir.parent}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]


def multirun(store: Path, sweep_dir: Path, *overrides: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline")
    return subprocess.run(
        command(store, sweep_dir, *overrides), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def jobs(sweep_dir: Path) -> list[Path]:
    return sorted(
        (p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0].isdigit()), key=lambda p: int(p.name.split("_")[0])
    )


def record(job: Path) -> dict:
    return json.loads((job / "job.json").read_text())


def sacct_states(job_ids: list[str]) -> dict[str, str]:
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return dict(line.split("|")[:2] for line in out.splitlines() if "|" in line)


def submitit_result(sweep_dir: Path, job_id: str):
    """What the job returned to the launcher (submitit's result pickle for the job's rank 0)."""
    status, value = pickle.loads((sweep_dir / ".submitit" / job_id / f"{job_id}_0_result.pkl").read_bytes())
    assert status == "success", value
    return value


def report(sweep_dir: Path) -> str:
    from matplotlib import image

    result = subprocess.run(
        [sys.executable, "-m", "minesweep.sweeps.report", str(sweep_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    pixels = image.imread(sweep_dir / "sweep_report.png")
    assert pixels.ndim == 3 and pixels.shape[0] > 200
    return result.stdout


def test_array_sweep_over_objective_lists_runs_each_job_in_its_folder(cluster, store, tmp_path):
    """The users' grid: 'objective=[bc],[bc,X]' objective.X.weight=a,b,c. Jobs without X drop the
    X weight (their config has no such key) and then are one job: 1 + 3 array tasks."""
    # A second objective for the list-valued group, from a config folder of the test's own.
    extra = tmp_path / "conf" / "objective"
    extra.mkdir(parents=True)
    (extra / "bc_half.yaml").write_text(
        "bc_half:\n  _target_: minesweep.objectives.BehaviorCloneCallback\n  weight: 0.5\n"
    )
    sweep_dir = tmp_path / "sweep"
    result = multirun(
        store,
        sweep_dir,
        f"hydra.searchpath=[file://{tmp_path / 'conf'}]",
        "objective=[bc],[bc,bc_half]",
        "objective.bc_half.weight=0.25,0.5,1.0",
        "trainer.max_steps=10",
        "trainer.val_check_interval=5",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    folders = jobs(sweep_dir)
    assert [int(job.name.split("_")[0]) for job in folders] == [0, 1, 2, 3], folders
    seen = set()
    array_ids = set()
    for job in folders:
        rec = record(job)
        assert rec["state"] == "completed", rec
        assert rec["metrics"]["global_step"] == 10 and rec["value"] == rec["metrics"]["val/loss"]
        assert (job / "checkpoints" / "last.ckpt").is_file()
        cfg = OmegaConf.load(job / "config.yaml")
        seen.add((tuple(cfg.objective), cfg.objective.bc_half.weight if "bc_half" in cfg.objective else None))
        array_ids.add(rec["job_id"].split("_")[0])
    assert seen == {(("bc",), None), *((("bc", "bc_half"), w) for w in (0.25, 0.5, 1.0))}
    assert len(array_ids) == 1, f"one SLURM job array, got {array_ids}"
    states = sacct_states([record(job)["job_id"] for job in folders])
    assert set(states.values()) == {"COMPLETED"} and len(states) == 4, states
    text = report(sweep_dir)
    assert text.count("completed") >= 4 and "objective" in text


def test_failing_job_leaves_the_others_finished_and_is_reported(cluster, store, tmp_path):
    sweep_dir = tmp_path / "sweep"
    result = multirun(
        store, sweep_dir, "optim.lr_schedule=constant,bogus", "trainer.max_steps=6", "trainer.val_check_interval=3"
    )
    # the sweep reports the failure (non-zero exit, the job's error) after every job has finished
    assert result.returncode != 0
    assert "lr_schedule" in result.stderr
    good, bad = jobs(sweep_dir)
    assert record(good)["state"] == "completed" and record(good)["metrics"]["global_step"] == 6
    assert record(bad)["state"] == "failed"
    assert "ValueError" in (bad / "error.log").read_text() and "bogus" in (bad / "error.log").read_text()
    text = report(sweep_dir)
    assert "failed job 1: ValueError" in text


def test_two_task_ddp_job_trains_under_srun(cluster, store, tmp_path):
    sweep_dir = tmp_path / "sweep"
    # tasks_per_node follows trainer.devices: srun starts 2 ranks, Lightning's SLURM environment sees them
    result = multirun(
        store,
        sweep_dir,
        "trainer.devices=2",
        "trainer.strategy=ddp_find_unused_parameters_true",  # BC leaves the value head unused
        "trainer.max_steps=6",
        "trainer.val_check_interval=3",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (job,) = jobs(sweep_dir)
    rec = record(job)
    assert rec["state"] == "completed" and rec["metrics"]["global_step"] == 6
    logs = {p.name: p.read_text() for p in (sweep_dir / ".submitit" / rec["job_id"]).glob("*_log.*")}
    assert f"{rec['job_id']}_0_log.err" in logs and f"{rec['job_id']}_1_log.err" in logs, sorted(logs)
    everything = "\n".join(logs.values())
    assert "MEMBER: 1/2" in everything and "MEMBER: 2/2" in everything, "two DDP ranks"
    assert "SLURMEnvironment(auto_requeue=False)" in everything


def test_timed_out_job_checkpoints_is_requeued_and_resumes(cluster, store, tmp_path):
    """A 1-minute limit, USR2 15 s before it: slurmctld checks limits every 30 s, so the signal comes
    15-45 s after the start, while training runs (it starts ~8 s in). The job saves
    last.ckpt, submitit requeues it, and the requeued run resumes from that checkpoint.

    Training lasts 48 s of wall time (trainer.max_time, restored from the checkpoint), longer than
    the first run can reach. Once requeued, the test gives the job 5 minutes, so that the second run
    finishes instead of being signalled again (every run of a job gets the same time limit).
    """
    sweep_dir = tmp_path / "sweep"
    args = command(
        store,
        sweep_dir,
        "hydra.launcher.timeout_min=1",
        "hydra.launcher.signal_delay_s=15",
        "hydra.launcher.max_num_timeout=3",
        "trainer.max_steps=1000000",
        '+trainer.max_time="00:00:00:48"',
        "trainer.val_check_interval=25",
    )
    started = time.time()
    sweep = subprocess.Popen(
        args,
        cwd=REPO,
        env=dict(os.environ, WANDB_MODE="offline"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        extended = False
        while sweep.poll() is None and time.time() - started < 300:
            folders = jobs(sweep_dir) if sweep_dir.is_dir() else []
            if folders and not extended and (folders[0] / "job.json").is_file():
                rec = record(folders[0])
                if rec.get("restarts", 0) >= 1 or rec.get("state") == "requeued":
                    subprocess.run(["scontrol", "update", f"JobId={rec['slurm_job_id']}", "TimeLimit=5"], check=True)
                    extended = True
            time.sleep(0.5)
        output = sweep.communicate(timeout=max(1, 300 - (time.time() - started)))[0]
    finally:
        if sweep.poll() is None:
            sweep.kill()
    assert sweep.returncode == 0, output[-4000:]
    assert extended, "the job was never requeued"
    (job,) = jobs(sweep_dir)
    rec = record(job)
    assert rec["state"] == "completed", rec
    assert rec["restarts"] >= 1
    assert rec["runs"][0]["state"] == "requeued"
    assert rec["resumed_from"].endswith("last.ckpt") and rec["resumed_step"] > 0
    assert rec["metrics"]["global_step"] > rec["resumed_step"]
    # the resumed run logged only steps after the checkpoint
    versions = sorted((job / "csv").glob("version_*"))
    assert len(versions) >= 2
    # what the launcher got back is what the job recorded
    returned = submitit_result(sweep_dir, rec["job_id"])
    assert returned.return_value == pytest.approx(rec["value"]) == pytest.approx(rec["metrics"]["val/loss"])
    logs = "\n".join(p.read_text() for p in (sweep_dir / ".submitit" / rec["job_id"]).glob("*_log.*"))
    assert "preemption: saved" in logs
    assert "restarted job 0 resumes from" in logs
