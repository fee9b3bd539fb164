"""Graceful stop: SIGTERM, SIGINT (Ctrl-C) and a cluster's pre-timeout signal end training between two batches,
with ``last.ckpt`` saved at that step, so that ``ckpt_path=last`` continues exactly.

A signal handler runs between two Python bytecodes, possibly in the middle of an optimizer step, so it is no place
to save a training state: the handler only notes the signal. At the start of the next batch (the signalled batch,
its scheduler step and any validation after it are done; all DDP ranks agree on the batch) ``last.ckpt`` is
written and then:

* SIGTERM / SIGINT: the process exits with ``128 + signal`` after one line on stderr saying where the checkpoint
  is. A second Ctrl-C interrupts at once.
* the preemption signal of a submitit job (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default; SLURM sends it
  ``signal_delay_s`` before the time limit): the handler that was there before (submitit's) is called, which
  requeues the job and exits. If no batch starts within ``grace_s`` (a long validation, a stuck loader) submitit's
  handler runs anyway, from a timer, and the job resumes from the last checkpoint saved by validation.

Loader worker processes ignore these signals (``ignore_stop_signals``, their ``worker_init_fn``): a Ctrl-C reaches
the whole process group, and a worker that died of it would fail the batch being fetched.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L

log = logging.getLogger(__name__)

#: Signals that stop a run gracefully everywhere.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(SystemExit):
    """Training stopped by a signal after saving ``last.ckpt``; the exit code is ``128 + signal``."""

    def __init__(self, signum: int, step: int, checkpoint: str) -> None:
        super().__init__(128 + signum)
        self.signal_name = signal.Signals(signum).name
        self.step, self.checkpoint = step, checkpoint

    def __str__(self) -> str:
        return (
            f"stopped by {self.signal_name} after step {self.step}; saved {self.checkpoint}: "
            f"run the same command with ckpt_path=last to continue"
        )


def under_submitit() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def preemption_signal() -> signal.Signals:
    """Submitit's preemption signal (``SUBMITIT_PREEMPT_SIGNAL``, default USR2)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of the loaders: workers leave stop and preemption signals to the training process (which
    ends them when it exits), then seed themselves as Lightning's ``seed_everything(workers=True)`` would."""
    for signum in (*STOP_SIGNALS, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


class GracefulStop(L.Callback):
    """Save ``last.ckpt`` at the first batch start after a stop or preemption signal, then exit (or let submitit
    requeue). ``grace_s``: how long a preemption may wait for a batch start (None: half the launcher's
    ``signal_delay_s`` when known, else 60 s)."""

    def __init__(self, grace_s: float | None = None) -> None:
        self.grace_s = grace_s
        self._signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._requested_at: float | None = None

    def __getstate__(self) -> dict[str, Any]:  # ddp_spawn pickles callbacks; handlers stay in the parent
        state = self.__dict__.copy()
        state.update(_previous={}, _signum=None, _requested_at=None)
        return state

    # -- signal handling ----------------------------------------------------------------------------
    @property
    def _preemption(self) -> int | None:
        return preemption_signal() if under_submitit() else None

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._requested_at is not None:
            if signum == signal.SIGINT:  # a second Ctrl-C: stop now
                self._restore()
                raise KeyboardInterrupt
            return
        self._signum, self._requested_at = signum, time.time()
        print(
            f"minesweep: {signal.Signals(signum).name} received: finishing this batch, then saving last.ckpt "
            f"and stopping",
            file=sys.stderr,
            flush=True,
        )
        if signum == self._preemption:
            signal.signal(signal.SIGALRM, self._on_grace_expired)
            signal.setitimer(signal.ITIMER_REAL, max(self._grace(), 0.1))

    def _grace(self) -> float:
        if self.grace_s is not None:
            return float(self.grace_s)
        delay = _launcher_signal_delay_s()
        return max(5.0, delay / 2) if delay else 60.0

    def _on_grace_expired(self, signum: int, frame: Any) -> None:
        log.warning(
            "no batch started within %.0fs of the preemption signal: requeueing from the last saved checkpoint",
            self._grace(),
        )
        self._hand_over(frame)

    def _hand_over(self, frame: Any = None) -> None:
        """Restore the previous handlers and call submitit's (on rank 0: checkpoint(), scontrol requeue, exit)."""
        signal.setitimer(signal.ITIMER_REAL, 0)
        previous = self._previous.get(self._signum)
        self._restore()
        if callable(previous):
            previous(self._signum, frame)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    # -- Lightning hooks ----------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return  # signal handlers can only be set from the main thread
        signums = [*STOP_SIGNALS, *([self._preemption] if self._preemption is not None else [])]
        for signum in signums:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._previous:
            return
        if not trainer.strategy.reduce_boolean_decision(self._requested_at is not None, all=False):
            return
        signum = self._signum if self._signum is not None else signal.SIGTERM  # another rank got the signal
        signal.setitimer(signal.ITIMER_REAL, 0)
        path = last_checkpoint_path(trainer)
        started = time.time()
        trainer.save_checkpoint(path)
        preempted = signum == self._preemption
        log.warning(
            "%s: saved %s at step %d in %.1fs%s",
            "preemption" if preempted else signal.Signals(signum).name,
            path,
            trainer.global_step,
            time.time() - started,
            "; handing over to submitit" if preempted else "",
        )
        if preempted:
            self._hand_over()
            if trainer.global_rank != 0:
                # Submitit requeues from rank 0 and the requeue ends this task; stepping on alone would only block
                # in the next collective. Wait to be ended (bounded, in case rank 0 gave up).
                deadline = time.time() + self._grace() + 300
                while time.time() < deadline:
                    time.sleep(1)
                raise SystemExit("rank 0 did not requeue this job")
            self._signum = self._requested_at = None  # a handler that returns (tests): training goes on
            return
        self._restore()
        stop = StopRequested(signum, trainer.global_step, path)
        if trainer.global_rank == 0:
            print(f"minesweep: {stop}", file=sys.stderr, flush=True)
        raise stop

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Training ended on its own (MineLightning.on_train_end saves last.ckpt): a pending preemption goes to
        # submitit (the requeued job finds the finished run); a pending stop has nothing left to stop.
        if not self._previous:
            return
        signal.setitimer(signal.ITIMER_REAL, 0)
        pending, signum = self._requested_at is not None, self._signum
        previous = self._previous.get(signum) if signum is not None else None
        self._restore()
        if pending and signum == self._preemption and callable(previous):
            trainer.save_checkpoint(last_checkpoint_path(trainer))
            previous(signum, None)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._restore()


def last_checkpoint_path(trainer: L.Trainer) -> str:
    """Where ``ckpt_path=last`` looks: the checkpoint callback's ``last.ckpt`` (else the run folder's)."""
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        return os.path.join(callback.dirpath, f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}")
    return str(Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt")


def _launcher_signal_delay_s() -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return None
    value = OmegaConf.select(HydraConfig.get(), "launcher.signal_delay_s", default=None)
    return float(value) if value is not None else None
