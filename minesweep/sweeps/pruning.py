"""Optuna pruning inside a training job (``callbacks/pruning=optuna``, in the default config): report the optimised
metric, stop when the study's pruner says so. Inert in a job that is not an Optuna trial.

After every validation the job reports ``monitor`` (``optimized_metric``) at the global step to its
trial; the study's pruner (``hydra.sweeper.pruner``, e.g. ``MedianPruner``: worse than the median of
finished trials at the same step) decides. A pruned job stops training cleanly (last checkpoint,
final metrics, its trial recorded as PRUNED with the last reported value) instead of raising; the step it was
pruned at is the final metric ``trial/pruned_at_step`` (what ``job.json`` records).
Under DDP, rank 0 talks to the study and broadcasts the decision.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch

from minesweep.sweeps.trial import PRUNED_AT_STEP, JobTrial

log = logging.getLogger(__name__)

#: The final metric that says a job was pruned, and at which step.
PRUNED_METRIC = "trial/pruned_at_step"


class OptunaPruning(L.Callback):
    """``trial``: default, this Hydra job's Optuna trial, found when the callback is built (in the job process,
    before any DDP rank is spawned), or None outside a trial (then the callback does nothing)."""

    def __init__(self, monitor: str | None = "val/loss", trial: JobTrial | None = None) -> None:
        self.trial = trial if trial is not None else JobTrial.from_hydra()
        self.monitor = monitor
        self.pruned_at_step: int | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.trial is None or not self.monitor:
            return
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
            self.pruned_at_step = trainer.global_step
            trainer.callback_metrics[PRUNED_METRIC] = torch.tensor(float(trainer.global_step))  # train()'s metrics
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
