"""What ``minesweep.train`` asks of the sweep machinery: extra trainer callbacks and arguments.

Everything here is inert in a plain local run: no Optuna trial, no submitit, no SLURM, no multirun.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def trainer_extras(cfg: DictConfig) -> tuple[list[Any], dict[str, Any]]:
    """``(callbacks, trainer kwargs)`` for the job's situation:

    - on SLURM: ``plugins=[SLURMEnvironment(auto_requeue=False)]`` (submitit requeues, not Lightning);
    - several devices in a local multirun: a refusal of plain ``ddp`` (``minesweep.sweeps.ddp.check_strategy``).
    """
    from minesweep.sweeps.ddp import check_strategy
    from minesweep.sweeps.preemption import cluster_plugins

    callbacks: list[Any] = []
    kwargs: dict[str, Any] = {}
    plugins = cluster_plugins()
    if plugins and not cfg.trainer.get("plugins"):
        kwargs["plugins"] = plugins
        log.info(
            "SLURM job %s, task %s of %s: SLURMEnvironment(auto_requeue=False), submitit requeues",
            os.environ.get("SLURM_JOB_ID"),
            os.environ.get("SLURM_PROCID"),
            os.environ.get("SLURM_NTASKS"),
        )
    check_strategy(cfg.trainer)
    return callbacks, kwargs
