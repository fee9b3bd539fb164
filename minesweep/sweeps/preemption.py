"""SLURM: the cluster plugins a job needs.

On SLURM, submitit asks for ``--signal=USR2@<signal_delay_s>``: USR2 arrives that long before the time limit (or
when the job is preempted). ``minesweep.graceful_stop.GracefulStop`` (the one mechanism for SIGTERM, Ctrl-C and
preemption) saves ``last.ckpt`` at the next batch start and hands the signal to submitit's handler, which calls the
launcher's ``checkpoint()`` (the requeued job resumes from ``last.ckpt``), runs ``scontrol requeue`` and exits.

Lightning's own SLURM requeue (SIGUSR1 -> ``scontrol requeue``) would requeue the same job a second time;
``cluster_plugins()`` gives the trainer ``SLURMEnvironment(auto_requeue=False)`` instead.
"""

from __future__ import annotations

from typing import Any


def under_slurm() -> bool:
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def cluster_plugins() -> list[Any]:
    """Trainer plugins for the cluster the job runs on: SLURM without Lightning's auto-requeue."""
    if not under_slurm():
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]
