"""The DDP strategy that fits where a job runs.

- On SLURM, ranks are the job's tasks, started by ``srun`` (``tasks_per_node == trainer.devices``);
  Lightning's SLURM environment sees them and plain ``ddp`` starts no processes of its own.
- On one machine, plain ``ddp`` starts ranks by re-running the command line (``sys.argv``). In a
  Hydra multirun that re-runs the whole sweep in every rank (and under Optuna, every rank asks for a
  trial of its own and trains different parameters). A multirun job with several devices must use
  ``ddp_spawn`` (ranks forked from the job itself): :func:`check_strategy` refuses plain ``ddp`` there,
  naming the setting to use, rather than rewriting the config behind the user's back.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: strategies that start ranks by re-running the command line, and their spawning counterparts
SPAWNING = {
    "auto": "ddp_spawn",
    "ddp": "ddp_spawn",
    "ddp_find_unused_parameters_true": "ddp_spawn_find_unused_parameters_true",
    "ddp_find_unused_parameters_false": "ddp_spawn_find_unused_parameters_false",
}


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def devices_count(devices, accelerator: str = "auto") -> int:
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
    from minesweep.sweeps.preemption import under_slurm

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
