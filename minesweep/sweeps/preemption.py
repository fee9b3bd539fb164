"""Preemption: save a checkpoint when submitit's signal arrives; submitit requeues the job.

On SLURM, submitit asks for ``--signal=USR2@<signal_delay_s>``: USR2 arrives that long before the time
limit (or when the job is preempted). Submitit's own handler then calls the launcher's
``checkpoint()`` (which makes the requeued job resume from ``last.ckpt``), runs ``scontrol requeue``
and exits. A signal handler runs between two Python bytecodes, possibly mid optimizer step, so it
is no place to save a training state. ``CheckpointOnSignal`` therefore takes the signal over while
fitting: it only notes it, saves ``last.ckpt`` at the end of the current batch (all DDP ranks agree on
the batch), and then hands the signal to submitit's handler. If no batch ends within ``grace_s``
(a long validation, a stuck data loader) submitit's handler runs anyway, from a timer, and the job
resumes from the last checkpoint saved by validation.

Lightning's own SLURM requeue (SIGUSR1 -> ``scontrol requeue``) would requeue the same job a second
time; ``cluster_plugins()`` gives the trainer ``SLURMEnvironment(auto_requeue=False)`` instead.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

#: True once this process handed a preemption signal to submitit: the SystemExit that follows is a
#: requeue, not a failure (``minesweep.sweeps.jobs`` records it so).
REQUEUE_REQUESTED = False


def under_slurm() -> bool:
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def cluster_plugins() -> list[Any]:
    """Trainer plugins for the cluster the job runs on: SLURM without Lightning's auto-requeue."""
    if not under_slurm():
        return []
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


def under_submitit() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def preemption_signal() -> signal.Signals:
    """Submitit's preemption signal (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class CheckpointOnSignal(L.Callback):
    """Save ``last.ckpt`` at the first batch end after the preemption signal, then let submitit requeue."""

    def __init__(self, checkpoint_path: str | Path, grace_s: float = 60.0) -> None:
        self.checkpoint_path = str(checkpoint_path)
        self.grace_s = float(grace_s)
        self._signum: int | None = None
        self._previous: Any = None
        self._installed = False
        self._requested_at: float | None = None

    def __getstate__(self) -> dict[str, Any]:  # ddp_spawn pickles callbacks; handlers stay in the parent
        state = self.__dict__.copy()
        state.update(_previous=None, _installed=False, _requested_at=None)
        return state

    # -- signal handling ----------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._requested_at is not None:
            return
        self._requested_at = time.time()
        log.warning(
            "%s received: saving a checkpoint at the end of this batch, then requeueing (at most %.0fs from now)",
            signal.Signals(signum).name, self.grace_s,
        )
        # Fallback: hand over to submitit from the main thread if no batch ends in time.
        signal.signal(signal.SIGALRM, self._on_grace_expired)
        signal.setitimer(signal.ITIMER_REAL, max(self.grace_s, 0.1))

    def _on_grace_expired(self, signum: int, frame: Any) -> None:
        log.warning("no batch ended within %.0fs of the preemption signal: requeueing from the last saved checkpoint", self.grace_s)
        self._hand_over(frame)

    def _hand_over(self, frame: Any = None) -> None:
        """Restore submitit's handler and call it (on rank 0: checkpoint(), scontrol requeue, exit)."""
        global REQUEUE_REQUESTED
        REQUEUE_REQUESTED = True
        signal.setitimer(signal.ITIMER_REAL, 0)
        previous = self._previous
        self._restore()
        if callable(previous):
            previous(self._signum, frame)

    def _restore(self) -> None:
        if self._installed:
            signal.signal(self._signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    # -- Lightning hooks ----------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not under_submitit() or self._installed:
            return
        self._signum = preemption_signal()
        self._previous = signal.getsignal(self._signum)
        signal.signal(self._signum, self._on_signal)
        self._installed = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self._installed:
            return
        requested = trainer.strategy.reduce_boolean_decision(self._requested_at is not None, all=False)
        if not requested:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        started = time.time()
        trainer.save_checkpoint(self.checkpoint_path)
        log.warning(
            "preemption: saved %s at step %d in %.1fs; handing over to submitit",
            self.checkpoint_path, trainer.global_step, time.time() - started,
        )
        if self._requested_at is None:
            self._requested_at = time.time()  # another rank got the signal first
        self._hand_over()
        if trainer.global_rank != 0:
            # Submitit requeues from rank 0 and the requeue ends this task; stepping on alone would
            # only block in the next collective. Wait to be ended (bounded, in case rank 0 gave up).
            deadline = time.time() + self.grace_s + 300
            while time.time() < deadline:
                time.sleep(1)
            raise SystemExit("rank 0 did not requeue this job")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # After fitting, a signal goes straight to submitit (the requeued job resumes at the last step).
        if self._installed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            pending = self._requested_at is not None
            previous = self._previous
            self._restore()
            if pending and callable(previous):
                global REQUEUE_REQUESTED
                REQUEUE_REQUESTED = True
                trainer.save_checkpoint(self.checkpoint_path)
                previous(self._signum, None)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._installed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._restore()
