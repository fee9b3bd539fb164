"""Optuna pruning inside a training job: report validation loss, stop when the pruner says so.

After every validation the job reports ``monitor`` (default ``val/loss``) at the global step to its
trial; the study's pruner (``hydra.sweeper.pruner``, e.g. ``MedianPruner``: worse than the median of
finished trials at the same step) decides. A pruned job stops training cleanly (last checkpoint,
final metrics, its trial recorded as PRUNED with the last reported value) instead of raising.
Under DDP, rank 0 talks to the study and broadcasts the decision.
"""

from __future__ import annotations

import logging
import math

import lightning as L

from minesweep.sweeps.trial import PRUNED_AT_STEP, JobTrial

log = logging.getLogger(__name__)

#: the step at which this process's current job was pruned (read by ``minesweep.sweeps.jobs``)
LAST_PRUNED_AT_STEP: int | None = None


class OptunaPruning(L.Callback):
    def __init__(self, trial: JobTrial, monitor: str = "val/loss") -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_at_step: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # not the final trainer.validate()
            return
        if self.pruned_at_step is not None:
            return
        prune = False
        if trainer.is_global_zero:
            value = trainer.callback_metrics.get(self.monitor)
            if value is not None and math.isfinite(float(value)):
                try:
                    prune = self.trial.report(float(value), trainer.global_step)
                    # The last validation ends the trial anyway: it completes rather than being pruned.
                    prune = prune and not (0 < trainer.max_steps <= trainer.global_step)
                except Exception as error:  # the study is advisory: never kill training over it
                    log.warning("could not report to Optuna trial %s: %s", self.trial.number, error)
        prune = bool(trainer.strategy.broadcast(prune, src=0))
        if prune:
            global LAST_PRUNED_AT_STEP
            self.pruned_at_step = LAST_PRUNED_AT_STEP = trainer.global_step
            trainer.should_stop = True
            if trainer.is_global_zero:
                log.info(
                    "Optuna trial %s pruned at step %d (%s=%.4f)",
                    self.trial.number,
                    trainer.global_step,
                    self.monitor,
                    float(trainer.callback_metrics[self.monitor]),
                )
                self.trial.set_user_attr(PRUNED_AT_STEP, trainer.global_step)
