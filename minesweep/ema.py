"""An exponential moving average (EMA) of the policy's weights, kept during training (``callbacks/ema=default``).

Built on Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` (torch's ``AveragedModel``), which also
gives what a long run needs: the average is in ``last.ckpt`` (its ``state_dict`` holds the EMA weights, and
``current_model_state`` the trained ones) and a resume restores both exactly. What this class adds:

- ``decay``, ``start_step`` (steps before it copy the weights: an average over the first random weights helps no
  one), ``every_n_steps`` and ``device`` (``cpu`` keeps the copy off an accelerator);
- ``validate_on_ema``: validation (and so ``val/loss`` and the best checkpoint) on the EMA weights, or on the trained
  ones;
- the average kept in float32 whatever the training precision (bf16 weights would round the small updates away);
- integer buffers (counters, e.g. TinyPolicy's noise generator's call count) copied, not averaged;
- ``weights_file``: the EMA policy alone, as a state dict for ``policy.weights=`` (written with every checkpoint
  and at the end of training, by rank 0);
- the end of training: last.ckpt is saved with the trained weights to resume from (Lightning would copy the EMA into
  the model first), the final eval (minesweep.final_eval) plays the EMA through :meth:`EMA.applied`, and the model
  holds the EMA weights once ``fit`` returns.

Under DDP every rank holds the same weights after each step, so every rank's average is the same: one EMA.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import WeightAveraging

from minesweep.policies.weights import CHECKPOINT_PREFIX

__all__ = ["EMA", "ema_weights"]


def _tensors(module: torch.nn.Module) -> Iterator[torch.Tensor]:
    return itertools.chain(module.parameters(), module.buffers())


class EMA(WeightAveraging):
    """``ema <- decay * ema + (1 - decay) * weights`` after every ``every_n_steps``-th optimizer step from step
    ``start_step`` on (the first update copies the weights)."""

    def __init__(
        self,
        decay: float = 0.999,
        start_step: int = 0,
        every_n_steps: int = 1,
        device: str | None = None,
        validate_on_ema: bool = True,
        weights_file: str | None = None,
    ) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.ema.decay must be in [0, 1), got {decay}")
        if every_n_steps < 1 or start_step < 0:
            raise ValueError(
                f"callbacks.ema: every_n_steps must be >= 1 and start_step >= 0, got {every_n_steps} and {start_step}"
            )
        super().__init__(device=device, use_buffers=True, avg_fn=self._average)
        self.decay, self.start_step, self.every_n_steps = float(decay), int(start_step), int(every_n_steps)
        self.validate_on_ema = bool(validate_on_ema)
        self.weights_file = Path(weights_file) if weights_file else None
        self._validating: AbstractContextManager | None = None  # applied() while validation runs on the EMA

    def _average(self, average: torch.Tensor, current: torch.Tensor, n_averaged: torch.Tensor) -> torch.Tensor:
        if not average.is_floating_point():
            return current  # counters and flags: the current value
        return torch.lerp(average, current.to(average.dtype), 1.0 - self.decay)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return (
            step_idx is not None
            and step_idx >= self.start_step
            and (step_idx - self.start_step) % self.every_n_steps == 0
        )

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self._average_model is not None:
            self._average_model.module.float()  # float32 whatever the training precision; integers stay integers

    # Validation: the EMA copied into the model, the trained weights kept aside and put back. (Lightning swaps the
    # two, which passes the average through the model's precision: bf16 weights would round it on every validation.)
    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.validate_on_ema and self._average_model is not None:
            self._validating = self.applied(pl_module)
            self._validating.__enter__()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        validating, self._validating = self._validating, None
        if validating is not None:
            validating.__exit__(None, None, None)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(trainer, pl_module, checkpoint)
        if self._average_model is not None and trainer.is_global_zero:
            self._write_weights(checkpoint["state_dict"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Not Lightning's copy of the EMA into the model here: last.ckpt is saved after this hook (MineLightning's
        # on_train_end) and must keep the trained weights to resume from. The final eval plays applied(); the model
        # takes the EMA weights at on_fit_end, after every save.
        if self._average_model is not None and trainer.is_global_zero:
            with self.applied(pl_module):
                self._write_weights(pl_module.state_dict())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._average_model is not None:
            self._copy_average_to_current(pl_module)

    @contextmanager
    def applied(self, pl_module: L.LightningModule) -> Iterator[None]:
        """The EMA weights in ``pl_module`` for the block (e.g. an evaluation), the trained ones again after it."""
        if self._average_model is None:
            yield
            return
        trained = [t.detach().clone() for t in _tensors(pl_module)]
        self._copy_average_to_current(pl_module)
        try:
            yield
        finally:
            for tensor, saved in zip(_tensors(pl_module), trained, strict=True):
                tensor.data.copy_(saved)

    def _write_weights(self, module_state: dict[str, torch.Tensor]) -> None:
        """The policy's part of a MineLightning state dict, as a plain state dict (``policy.weights=``)."""
        if self.weights_file is None:
            return
        policy_state = {
            key[len(CHECKPOINT_PREFIX) :]: value.detach().cpu().clone()
            for key, value in module_state.items()
            if key.startswith(CHECKPOINT_PREFIX)
        }
        self.weights_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.weights_file.with_name(self.weights_file.name + ".partial")
        torch.save(policy_state, partial)
        partial.replace(self.weights_file)  # never a half-written file under the real name


def ema_weights(trainer: L.Trainer, pl_module: L.LightningModule) -> AbstractContextManager:
    """The EMA weights in ``pl_module`` for the block when ``trainer`` keeps an :class:`EMA` (callbacks.ema), else
    nothing changes: what the final and online evals play."""
    ema = next((c for c in trainer.callbacks if isinstance(c, EMA)), None)
    return ema.applied(pl_module) if ema is not None else nullcontext()
