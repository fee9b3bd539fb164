"""What ``minesweep.train`` asks of the sweep machinery: extra trainer callbacks and arguments.

Everything here is inert in a plain local run: no Optuna trial, no submitit, no SLURM, no multirun.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def _launcher_signal_delay_s() -> float | None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    value = OmegaConf.select(HydraConfig.get(), "launcher.signal_delay_s", default=None)
    return float(value) if value is not None else None


def trainer_extras(cfg: DictConfig) -> tuple[list[Any], dict[str, Any]]:
    """``(callbacks, trainer kwargs)`` for the job's situation:

    - in an Optuna trial: ``OptunaPruning`` (reports ``optimized_metric`` after each validation);
    - under submitit: ``CheckpointOnSignal`` (``last.ckpt`` on the preemption signal);
    - on SLURM: ``plugins=[SLURMEnvironment(auto_requeue=False)]`` (submitit requeues, not Lightning);
    - several devices in a local multirun: ``strategy="ddp_spawn"``.
    """
    from minesweep.sweeps.ddp import strategy_override
    from minesweep.sweeps.preemption import CheckpointOnSignal, cluster_plugins, under_submitit
    from minesweep.sweeps.pruning import OptunaPruning
    from minesweep.sweeps.trial import JobTrial

    callbacks: list[Any] = []
    kwargs: dict[str, Any] = {}
    trial = JobTrial.from_hydra()
    if trial is not None and cfg.get("optimized_metric"):
        callbacks.append(OptunaPruning(trial, monitor=cfg.optimized_metric))
    if under_submitit():
        delay = _launcher_signal_delay_s()
        grace = max(5.0, delay / 2) if delay else 60.0
        callbacks.append(CheckpointOnSignal(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", grace_s=grace))
    plugins = cluster_plugins()
    if plugins and not cfg.trainer.get("plugins"):
        kwargs["plugins"] = plugins
        log.info(
            "SLURM job %s, task %s of %s: SLURMEnvironment(auto_requeue=False), submitit requeues",
            os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_PROCID"), os.environ.get("SLURM_NTASKS"),
        )
    strategy = strategy_override(cfg.trainer)
    if strategy is not None:
        kwargs["strategy"] = strategy
    return callbacks, kwargs
