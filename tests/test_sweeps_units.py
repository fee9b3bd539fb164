"""The sweep machinery piece by piece: presets, search space, grid de-duplication, storage specs,
DDP strategy choice, checkpoint-on-signal, job records and the report (no cluster needed)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from hydra import compose, initialize_config_dir

from minesweep.sweeps import overrides as ov
from minesweep.sweeps.search_space import objective_weights
from minesweep.sweeps.storage import find_storage, journal_path, open_storage
from tests.conftest import CONF_DIR, REPO
from tests.helpers import SMALL_RUN

SMALL = [*SMALL_RUN, "logger=csv"]


def compose_hydra(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


# -- presets ------------------------------------------------------------------------------------
def test_presets_compose_with_our_plugins():
    cfg = compose_hydra("hydra/launcher=slurm", "hydra/sweeper=optuna_study", "trainer.devices=4")
    launcher, sweeper = cfg.hydra.launcher, cfg.hydra.sweeper
    assert launcher._target_ == "minesweep.sweeps.launcher.SlurmLauncher"
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4  # one task per device
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0
    assert sweeper._target_ == "minesweep.sweeps.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "minimize" and sweeper.sampler._target_ == "optuna.samplers.TPESampler"
    assert sweeper.pruner._target_ == "optuna.pruners.MedianPruner"
    assert sweeper.storage.startswith("journal://") and sweeper.storage.endswith("optuna.journal")
    assert "log" in sweeper.params["optim.learning_rate"]
    assert {"optim.warmup_steps", "optim.weight_decay"} <= set(sweeper.params)
    # the Optuna sweep folder is fixed by the study name: a rerun finds the study again
    assert cfg.hydra.sweep.dir == f"{cfg.paths.output_root}/demo/optuna/demo"
    # a plain -m is Hydra's own sweeper; ours are chosen by name and never shadow upstream's presets
    assert compose_hydra().hydra.sweeper._target_ == "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
    assert compose_hydra("hydra/sweeper=grid").hydra.sweeper._target_ == "minesweep.sweeps.grid_sweeper.GridSweeper"
    upstream = compose_hydra("hydra/sweeper=optuna").hydra.sweeper._target_
    assert upstream == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert "/multirun/" in compose_hydra().hydra.sweep.dir
    local = compose_hydra("hydra/launcher=local").hydra.launcher
    assert local._target_ == "minesweep.sweeps.launcher.LocalLauncher" and local.tasks_per_node == 1


def test_our_plugins_are_registered_with_hydra():
    from hydra.core.plugins import Plugins

    names = Plugins.instance().class_name_to_class
    for name in (
        "minesweep.sweeps.optuna_sweeper.OptunaSweeper",
        "minesweep.sweeps.grid_sweeper.GridSweeper",
        "minesweep.sweeps.launcher.SlurmLauncher",
        "minesweep.sweeps.launcher.LocalLauncher",
    ):
        assert name in names, f"{name}: reinstall (pip install -e .) to register the entry points"


# -- search space -------------------------------------------------------------------------------
def _trial(params=None):
    study = optuna.create_study()
    trial = study.ask()
    for name, value in (params or {}).items():
        trial.suggest_categorical(name, [value])
    return trial


@pytest.mark.parametrize(
    "selection, swept, expected",
    [
        (["objective=[bc]"], None, set()),  # kl not selected: no kl weight, whatever the preset says
        (["objective=[bc,kl]"], None, {"objective.kl.weight"}),
        (["objective=[bc]"], "[bc,kl]", {"objective.kl.weight"}),  # the group itself searched
        (["objective=[bc,kl]"], "[bc]", set()),
    ],
)
def test_objective_weights_are_searched_only_for_selected_objectives(selection, swept, expected):
    cfg = compose_hydra("hydra/sweeper=optuna_study", *selection)
    trial = _trial({"objective": swept} if swept else None)
    objective_weights(cfg, trial)
    assert set(trial.params) - {"objective"} == expected
    if expected:
        assert 1e-4 <= trial.params["objective.kl.weight"] <= 1.0


# -- grid sweeps over objective lists -----------------------------------------------------------
def test_grid_drops_weights_of_unselected_objectives_and_runs_duplicates_once():
    grid = [
        [f"objective={o}", f"objective.kl.weight={w}", f"optim.learning_rate={lr}"]
        for o in ("[bc]", "[bc,kl]")
        for w in (0.001, 0.01, 0.1)
        for lr in (1e-4, 3e-4)
    ]
    jobs, where = ov.deduplicate(grid, ["bc"])
    assert len(jobs) == 2 + 6
    assert ["objective=[bc]", "optim.learning_rate=0.0001"] in jobs
    assert all("objective.kl.weight" not in " ".join(job) for job in jobs if "objective=[bc]" in job)
    assert [jobs[i] == ov.drop_unselected(g, ["bc"])[0] for i, g in zip(where, grid, strict=True)] == [True] * len(grid)
    assert ov.selected_objectives(["+objective=kl"], ["bc"]) == ["bc", "kl"]
    assert ov.selected_objectives([], ["bc"]) == ["bc"]


# -- storage ------------------------------------------------------------------------------------
def test_storage_specs(tmp_path):
    assert journal_path("journal:///a/b/optuna.journal") == Path("/a/b/optuna.journal")
    assert journal_path(str(tmp_path / "x.journal")) == tmp_path / "x.journal"
    assert journal_path("sqlite:///x.db") is None
    assert open_storage(None) is None
    assert open_storage("postgresql://u:p@db/optuna") == "postgresql://u:p@db/optuna"
    journal = open_storage(f"journal://{tmp_path / 'deep' / 'optuna.journal'}")
    optuna.create_study(study_name="s", storage=journal).optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    assert find_storage(tmp_path / "deep") == f"journal://{tmp_path / 'deep' / 'optuna.journal'}"
    again = optuna.load_study(study_name="s", storage=open_storage(find_storage(tmp_path / "deep")))
    assert len(again.trials) == 2
    sqlite = open_storage(f"sqlite:///{tmp_path / 'db' / 'optuna.db'}")
    optuna.create_study(study_name="t", storage=sqlite)
    assert find_storage(tmp_path / "db").startswith("sqlite:///")


# -- checkpoint on the preemption signal ---------------------------------------------------------
@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from minesweep.data.loading.datamodule import MineDataModule

    root = tmp_path_factory.mktemp("demo") / "store"
    MineDataModule(
        root=str(root), demo={"episodes": 4, "frames": 64, "width": 160, "height": 90, "seed": 1}
    ).prepare_data()
    return root


@pytest.mark.slow
def test_preemption_signal_saves_last_ckpt_at_a_batch_end_then_hands_over_to_submitit(store, tmp_path, monkeypatch):
    """USR2 arrives mid-step: the callback saves last.ckpt at the end of that batch, then calls the
    handler that was there before (submitit's: requeue and exit; here one that records)."""
    import lightning as L

    from minesweep.graceful_stop import GracefulStop
    from minesweep.train import build

    last = tmp_path / "checkpoints" / "last.ckpt"
    handed_over = []

    def submitit_handler(signum, frame):  # what submitit's handler would find on disk
        handed_over.append((signum, torch.load(last, weights_only=True)["global_step"]))

    class SendSignal(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 3:
                os.kill(os.getpid(), signal.SIGUSR2)  # arrives during the step, like SLURM's

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # the callback takes the preemption signal under submitit only
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            overrides=[
                *SMALL,
                f"data.root={store}",
                f"paths.output_dir={tmp_path}",
                "trainer.max_steps=6",
                "trainer.val_check_interval=100",
            ],
        )
    trainer, module, datamodule = build(cfg)
    assert any(isinstance(cb, GracefulStop) for cb in trainer.callbacks)
    trainer.callbacks.append(SendSignal())
    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        trainer.fit(module, datamodule=datamodule)
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler, "submitit's handler is back in place"
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert handed_over == [(signal.SIGUSR2, 4)], "saved at the end of the signalled step, then handed over"
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "the fallback timer is disarmed"
    assert trainer.global_step == 6  # the recording handler does not exit: training went on


# -- job records -------------------------------------------------------------------------------
def test_a_requeue_is_told_from_the_traceback_not_from_a_flag():
    """submitit's handler raises SystemExit after scontrol requeue: the job is 'requeued', any other exit is not."""
    from minesweep.sweeps.jobs import requeued_by_submitit

    scope = {}
    handler = "def checkpoint_and_try_requeue(signum, frame=None):\n    raise SystemExit(-1)\n"
    exec(compile(handler, "/venv/site-packages/submitit/core/job_environment.py", "exec"), scope)

    def training_step():  # the signal handler runs inside whatever the job was doing
        scope["checkpoint_and_try_requeue"](12)

    try:
        training_step()
    except SystemExit as error:
        assert requeued_by_submitit(error)
    try:
        raise SystemExit(1)
    except SystemExit as error:
        assert not requeued_by_submitit(error), "a plain exit is not a requeue"
    assert not requeued_by_submitit(RuntimeError("checkpoint_and_try_requeue"))


def test_the_job_record_reads_the_metrics_file_training_writes():
    from minesweep import train
    from minesweep.sweeps import jobs

    assert jobs.METRICS_FILE == train.METRICS_FILE  # one name, kept in two modules so training imports no sweeps


def test_training_imports_nothing_from_the_sweep_machinery():
    code = "import sys, minesweep.train, minesweep.trainer; print(sorted(m for m in sys.modules if 'sweeps' in m))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


# -- the report ---------------------------------------------------------------------------------
def _job(folder: Path, num: int, state: str, value, lr: float, error: str | None = None) -> None:
    folder.mkdir(parents=True)
    record = {
        "state": state,
        "job_num": num,
        "overrides": [f"optim.learning_rate={lr}", "trainer.max_steps=10"],
        "optimized_metric": "val/loss",
        "value": value,
        "duration_s": 12.0,
        "restarts": 0,
        "metrics": {"val/loss": value} if value is not None else {},
    }
    if error:
        (folder / "error.log").write_text(f"Traceback (most recent call last):\n  File x\n{error}\n")
        record["error"] = "error.log"
    (folder / "job.json").write_text(json.dumps(record))


def test_report_sorts_jobs_by_metric_lists_failures_and_draws_a_png(tmp_path):
    from matplotlib import image

    _job(tmp_path / "0_a", 0, "completed", 3.0, 1e-4)
    _job(tmp_path / "1_b", 1, "failed", None, 1e-2, error="ValueError: boom")
    _job(tmp_path / "2_c", 2, "completed", 1.5, 3e-4)
    _job(tmp_path / "3_d", 3, "pruned", 9.0, 1e-3)
    result = subprocess.run(
        [sys.executable, "-m", "minesweep.sweeps.report", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line[:1].isdigit()]
    assert [(r[1], r[2]) for r in rows] == [("2", "completed"), ("0", "completed"), ("3", "pruned"), ("1", "failed")]
    assert "optim.learning_rate" in result.stdout and "trainer.max_steps" not in result.stdout  # only swept ones
    assert "failed job 1: ValueError: boom" in result.stdout
    assert image.imread(tmp_path / "sweep_report.png").shape[2] in (3, 4)
    missing = subprocess.run(
        [sys.executable, "-m", "minesweep.sweeps.report", str(tmp_path / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "no sweep folder" in missing.stderr


@pytest.mark.slow
def test_local_multirun_with_two_devices_spawns_ranks_and_runs_the_sweep_once(store, tmp_path):
    """Plain ddp would start rank 1 by re-running `train.py -m ...`, i.e. the whole sweep again."""
    args = [
        sys.executable,
        "train.py",
        "-m",
        *SMALL,
        f"data.root={store}",
        f"paths.output_root={tmp_path}",
        "trainer.devices=2",
        "trainer.strategy=ddp_spawn_find_unused_parameters_true",  # BC leaves the value head unused
        "trainer.max_steps=4",
        "trainer.val_check_interval=2",
        "optim.learning_rate=1e-3",
    ]
    result = subprocess.run(
        args, cwd=REPO, env=dict(os.environ, WANDB_MODE="offline"), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    assert "MEMBER: 2/2" in output
    (sweep,) = (tmp_path / "demo" / "multirun").iterdir()  # one sweep, not one per rank
    (job,) = [p for p in sweep.iterdir() if p.is_dir()]
    assert json.loads((job / "job.json").read_text())["state"] == "completed"
    assert (job / "checkpoints" / "best-step000004.ckpt").is_file(), "the spawned ranks trained 4 steps"
    assert torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    assert json.loads((job / "metrics.json").read_text())["global_step"] == 4
