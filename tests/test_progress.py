"""The training progress bar: one bar over max_steps across epochs, no negative epoch totals."""

from __future__ import annotations

import io

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from minesweep.progress import StepProgressBar


class _Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(bar: StepProgressBar, **trainer_kwargs) -> str:
    data = DataLoader(TensorDataset(torch.randn(6, 2), torch.randn(6, 1)), batch_size=2)  # 3 batches an epoch
    trainer = L.Trainer(
        callbacks=[bar], logger=False, enable_checkpointing=False, enable_model_summary=False, **trainer_kwargs
    )
    trainer.fit(_Regression(), data)
    return bar._console.file.getvalue()


def test_a_run_bounded_by_steps_has_one_bar_over_all_its_steps():
    bar = StepProgressBar(console_kwargs={"file": io.StringIO(), "force_terminal": True, "width": 200})
    text = _fit(bar, max_steps=7)
    task = bar.progress.tasks[bar.train_progress_bar_id]
    assert task.total == 7 and task.completed == 7  # across three epochs, not 3 batches of the last one
    assert "/-" not in text and "Epoch 2/-2" not in text
    assert "Training (epoch 2)" in text


def test_a_run_bounded_by_epochs_keeps_lightnings_bar():
    bar = StepProgressBar(console_kwargs={"file": io.StringIO(), "force_terminal": True, "width": 200})
    text = _fit(bar, max_epochs=2)
    assert bar.progress.tasks[bar.train_progress_bar_id].total == 3
    assert "Epoch 1/1" in text
