"""``MineLightning``: the Lightning module that trains a ``MinePolicy`` with weighted objectives."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch

from minesweep.objectives.base import ObjectiveCallback, missing_latent
from minesweep.policies.base import MinePolicy


def warmup_schedule(warmup_steps: int, total_steps: int | None, lr_schedule: str, min_lr_ratio: float):
    """LR multiplier per optimizer step: linear warm-up, then constant or cosine decay."""
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"optim.lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if lr_schedule == "constant" or not total_steps or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


class MineLightning(L.LightningModule):
    """Trains ``mine_policy`` on the sum of the objectives' ``'loss'`` entries.

    Arguments keep the names of MineStudio's ``MineLightning``: ``callbacks`` are the objective
    callbacks (a list, or a dict whose keys name them in logs), ``hyperparameters`` a dict logged
    to every logger, ``log_freq`` the step interval of training logs.
    """

    def __init__(
        self,
        mine_policy: MinePolicy,
        callbacks: Sequence[ObjectiveCallback] | Mapping[str, ObjectiveCallback] = (),
        hyperparameters: Mapping[str, Any] | None = None,
        log_freq: int = 20,
        learning_rate: float = 1e-5,
        weight_decay: float = 1e-5,
        warmup_steps: int = 1000,
        lr_schedule: str = "constant",
        min_lr_ratio: float = 0.0,
        betas: Sequence[float] = (0.9, 0.999),
    ) -> None:
        super().__init__()
        self.mine_policy = mine_policy
        if isinstance(callbacks, Mapping):
            named = dict(callbacks)
        else:
            named = {getattr(cb, "name", type(cb).__name__): cb for cb in callbacks}
        if not named:
            raise ValueError("MineLightning needs at least one objective callback (e.g. objective=[bc])")
        for name, callback in named.items():
            callback.name = name
        self.objectives = named
        self.hyperparameters = dict(hyperparameters or {})
        self.log_freq = log_freq
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.lr_schedule = lr_schedule
        self.min_lr_ratio = min_lr_ratio
        self.betas = tuple(betas)
        warmup_schedule(warmup_steps, None, lr_schedule, min_lr_ratio)  # validate early
        self._checked_latents = False
        self.last_validated_step: int | None = None

    def on_fit_start(self) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(self.hyperparameters)

    # -- the step shared by training and validation -------------------------------------------
    def _objective_step(self, batch: dict[str, Any], batch_idx: int, step_name: str) -> torch.Tensor:
        latents, _ = self.mine_policy(batch, state_in=None)
        if not self._checked_latents:
            for objective in self.objectives.values():
                if hasattr(objective, "check_latents"):
                    objective.check_latents(latents, self.mine_policy)
            self._checked_latents = True

        total = torch.zeros((), device=self.device)
        logs: dict[str, torch.Tensor] = {}
        for name, objective in self.objectives.items():
            try:
                result = objective(batch, batch_idx, step_name, latents, self.mine_policy)
            except KeyError as error:
                # A user's callback that indexes a latent the policy lacks: say who needs what.
                key = error.args[0] if error.args else None
                if isinstance(key, str) and key not in latents and key in str(error):
                    raise missing_latent(name, key, self.mine_policy, latents) from error
                raise
            if "loss" in result:
                total = total + result["loss"]
            for key, value in result.items():
                logs[f"{step_name}/{name}/{key}"] = torch.as_tensor(value, dtype=torch.float32).detach()
        if not torch.isfinite(total):
            parts = {k: v.item() for k, v in logs.items() if k.endswith("/loss")}
            raise FloatingPointError(
                f"non-finite {step_name} loss {total.item()} at global step {self.global_step}, "
                f"batch {batch_idx} (episodes {batch.get('episode')}); per objective: {parts}"
            )
        batch_size = batch["image"].shape[0]
        on_step = step_name == "train"
        self.log(f"{step_name}/loss", total, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=batch_size)
        self.log_dict(logs, on_step=on_step, on_epoch=not on_step, batch_size=batch_size)
        return total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._objective_step(batch, batch_idx, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._objective_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self.last_validated_step = self.global_step

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(
            self.mine_policy.parameters(),
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
            betas=self.betas,
        )
        total_steps = None
        if self.lr_schedule == "cosine":
            total_steps = int(self.trainer.estimated_stepping_batches)
        schedule = warmup_schedule(self.warmup_steps, total_steps, self.lr_schedule, self.min_lr_ratio)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
