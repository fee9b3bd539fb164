"""The training progress bar: one bar over the whole run's optimizer steps, with its ETA.

Lightning's rich bar counts the batches of each epoch and titles them ``Epoch N/max_epochs - 1``, which reads
``Epoch 13/-2`` when a run is bounded by ``trainer.max_steps`` (``max_epochs=-1``) and restarts its ETA every
epoch. A run bounded by steps gets one bar counting ``global_step`` toward ``max_steps`` instead, the epoch in its
title; a run bounded by epochs keeps Lightning's bar.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

__all__ = ["StepProgressBar"]


class StepProgressBar(RichProgressBar):
    """:class:`~lightning.pytorch.callbacks.RichProgressBar` counting optimizer steps toward ``max_steps``."""

    def _total_steps(self) -> int | None:
        max_steps = self.trainer.max_steps
        return max_steps if max_steps and max_steps > 0 else None

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 0 or self._total_steps() is not None:
            return f"Training (epoch {current_epoch})"
        return super()._get_train_description(current_epoch)

    def _initialize_train_progress_bar_id(self) -> None:
        total = self._total_steps()
        if total is None:
            return super()._initialize_train_progress_bar_id()
        self.train_progress_bar_id = self._add_task(total, self._get_train_description(self.trainer.current_epoch))
        self._update(self.train_progress_bar_id, self.trainer.global_step)  # a resumed run starts part-way

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._total_steps() is None:
            return super().on_train_epoch_start(trainer, pl_module)
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        else:  # the same bar goes on; only its title changes
            self.progress.update(
                self.train_progress_bar_id, description=self._get_train_description(trainer.current_epoch)
            )
        self.refresh()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._total_steps() is None:
            return super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.is_disabled:
            return
        if self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()
