"""Where a job runs: the Lightning cluster environment it needs, and strategies that cannot work there.

- **SLURM**: submitit asks for ``--signal=USR2@<signal_delay_s>``; ``minesweep.graceful_stop.GracefulStop`` saves
  ``last.ckpt`` and hands the signal to submitit, which requeues the job. Lightning's own SLURM requeue would requeue
  it a second time, so ``conf/trainer/default.yaml`` names :func:`slurm_environment` as a plugin: under SLURM it is
  ``SLURMEnvironment(auto_requeue=False)``, elsewhere nothing (Lightning detects the environment as usual).
- **Plain ``ddp`` in a local multirun**: it starts ranks by re-running the command line (``sys.argv``), i.e. the
  whole sweep once per rank (under Optuna each rank would even ask for a trial of its own). :func:`check_strategy`
  refuses it, naming the spawning strategy to use, rather than rewriting the config behind the user's back. On
  SLURM the ranks are the job's ``srun`` tasks and plain ``ddp`` starts no processes of its own.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from lightning.pytorch.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: strategies that start ranks by re-running the command line, and their spawning counterparts
SPAWNING = {
    "auto": "ddp_spawn",
    "ddp": "ddp_spawn",
    "ddp_find_unused_parameters_true": "ddp_spawn_find_unused_parameters_true",
    "ddp_find_unused_parameters_false": "ddp_spawn_find_unused_parameters_false",
}


def under_slurm() -> bool:
    return SLURMEnvironment.detect()


def slurm_environment(auto_requeue: bool = False) -> SLURMEnvironment | None:
    """A trainer plugin (``trainer.plugins.cluster``): under SLURM, Lightning's SLURM environment without its own
    requeue (submitit requeues); ``None`` (no plugin) elsewhere."""
    if not under_slurm():
        return None
    log.info(
        "SLURM job %s, task %s of %s: SLURMEnvironment(auto_requeue=%s)%s",
        os.environ.get("SLURM_JOB_ID"),
        os.environ.get("SLURM_PROCID"),
        os.environ.get("SLURM_NTASKS"),
        auto_requeue,
        "" if auto_requeue else ", submitit requeues",
    )
    return SLURMEnvironment(auto_requeue=auto_requeue)


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def devices_count(devices: Any, accelerator: str = "auto") -> int:
    """How many devices ``trainer.devices`` asks for (``auto``/-1: every visible GPU, else 1)."""
    if isinstance(devices, str) and devices.strip() in ("auto", "-1") or devices == -1:
        if accelerator in ("auto", "gpu", "cuda"):
            import torch

            return max(torch.cuda.device_count(), 1)
        return 1
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str):
        items = [d for d in devices.split(",") if d.strip()]
        return len(items) if "," in devices else int(devices)
    try:
        return len(devices)
    except TypeError:
        return 1


def check_strategy(trainer_cfg: DictConfig) -> None:
    """Refuse a strategy that starts ranks by re-running the command line in a multirun on one machine (each rank
    would run the whole sweep again): the error names the spawning strategy to use instead."""
    strategy = trainer_cfg.get("strategy", "auto")
    if not isinstance(strategy, str) or strategy not in SPAWNING:
        return
    devices = devices_count(trainer_cfg.get("devices", 1), str(trainer_cfg.get("accelerator", "auto")))
    if devices * int(trainer_cfg.get("num_nodes", 1) or 1) <= 1 or under_slurm() or not in_multirun():
        return
    raise ValueError(
        f"trainer.strategy={strategy} with {devices} devices in a multirun on one machine: its ranks would start "
        f"by re-running the command line, i.e. the whole sweep, once per rank. Use "
        f"trainer.strategy={SPAWNING[strategy]} (ranks spawned by the job), or hydra/launcher=slurm (srun tasks)"
    )
