"""minesweep.cluster: the SLURM environment as a trainer plugin chosen in config, and DDP strategies refused where
they cannot work."""

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from lightning.pytorch.plugins.environments import LightningEnvironment, SLURMEnvironment
from omegaconf import OmegaConf

from minesweep import cluster
from minesweep.checkpoint_io import AtomicCheckpointIO
from minesweep.cluster import check_strategy, slurm_environment
from tests.conftest import CONF_DIR
from tests.helpers import SMALL_RUN


def _trainer(store: Path, tmp_path: Path, *overrides: str):
    from minesweep.train import build

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            overrides=[*SMALL_RUN, f"data.root={store}", f"paths.output_dir={tmp_path}", "logger=csv", *overrides],
        )
    return cfg, build(cfg)[0]


def _no_slurm(monkeypatch) -> None:
    for var in list(os.environ):
        if var.startswith("SLURM_"):
            monkeypatch.delenv(var)


def test_slurm_environment_is_a_plugin_in_the_saved_config_and_stands_down_off_slurm(store, tmp_path, monkeypatch):
    _no_slurm(monkeypatch)
    assert slurm_environment() is None
    cfg, trainer = _trainer(store, tmp_path)
    assert OmegaConf.to_container(cfg.trainer.plugins) == {
        "checkpoint_io": {"_target_": "minesweep.checkpoint_io.AtomicCheckpointIO"},
        "cluster": {"_target_": "minesweep.cluster.slurm_environment"},
    }
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert isinstance(trainer._accelerator_connector.cluster_environment, LightningEnvironment)

    monkeypatch.setenv("SLURM_NTASKS", "1")  # what srun sets in a job step
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    _, trainer = _trainer(store, tmp_path)
    environment = trainer._accelerator_connector.cluster_environment
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue, (
        "submitit requeues, not Lightning"
    )

    _, trainer = _trainer(store, tmp_path, "trainer.plugins.cluster=null")  # dropped by name: Lightning's default
    assert trainer._accelerator_connector.cluster_environment.auto_requeue


def test_local_multirun_refuses_ddp_that_would_rerun_the_sweep_and_names_the_fix(monkeypatch):
    trainer = OmegaConf.create({"strategy": "ddp", "devices": 2, "accelerator": "cpu", "num_nodes": 1})
    for var in ("SLURM_NTASKS", "SLURM_JOB_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(cluster, "in_multirun", lambda: True)
    with pytest.raises(ValueError, match="trainer.strategy=ddp with 2 devices .* Use trainer.strategy=ddp_spawn "):
        check_strategy(trainer)
    trainer.strategy = "ddp_find_unused_parameters_true"
    with pytest.raises(ValueError, match="Use trainer.strategy=ddp_spawn_find_unused_parameters_true "):
        check_strategy(trainer)
    for fine in ("fsdp", "ddp_spawn", "ddp_spawn_find_unused_parameters_true"):
        trainer.strategy = fine
        check_strategy(trainer)  # not ours to judge, or already spawning
    trainer.strategy, trainer.devices = "ddp", 1
    check_strategy(trainer)
    trainer.devices = 2
    monkeypatch.setenv("SLURM_NTASKS", "2")  # srun started the ranks: plain ddp is right
    monkeypatch.setenv("SLURM_JOB_NAME", "train")
    check_strategy(trainer)
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setattr(cluster, "in_multirun", lambda: False)  # a single run: ddp re-runs only this run
    check_strategy(trainer)
