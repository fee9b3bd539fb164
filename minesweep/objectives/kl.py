"""KL divergence between a posterior and a prior diagonal Gaussian: GROOT's goal latent (one per window), or
TinyPolicy's information bottleneck (one per frame: summed over the window's real frames, as BC sums its loss)."""

from __future__ import annotations

from typing import Any

import torch

from minesweep.objectives.base import ObjectiveCallback
from minesweep.policies.base import MinePolicy


def gaussian_kl(
    q_mu: torch.Tensor, q_log_var: torch.Tensor, p_mu: torch.Tensor, p_log_var: torch.Tensor
) -> torch.Tensor:
    """Closed-form KL(q || p) for diagonal Gaussians, summed over the last (latent) dimension."""
    var_ratio = (q_log_var - p_log_var).exp()
    mean_term = (q_mu - p_mu).pow(2) / p_log_var.exp()
    return 0.5 * (var_ratio + mean_term - 1.0 - (q_log_var - p_log_var)).sum(-1)


class KLDivergenceCallback(ObjectiveCallback):
    """``KL(posterior || prior)`` summed over latent dims, mean over the batch, times ``weight``."""

    required_latents = ("posterior_dist", "prior_dist")

    def __call__(
        self,
        batch: dict[str, Any],
        batch_idx: int,
        step_name: str,
        latents: dict[str, Any],
        mine_policy: MinePolicy,
    ) -> dict[str, torch.Tensor]:
        q, p = latents["posterior_dist"], latents["prior_dist"]
        kl = gaussian_kl(q["mu"], q["log_var"], p["mu"], p["log_var"])
        if kl.dim() == 2:  # one latent per frame (TinyPolicy's bottleneck): summed over the window, as BC's loss is
            mask = batch.get("mask")
            kl = (kl if mask is None else kl * mask.to(kl.dtype)).sum(1)  # padding frames don't count
        kl = kl.mean()
        return {
            "loss": kl * self.weight,
            "kl_div": kl,
            "weight": torch.tensor(float(self.weight)),
        }


class KLWarmupCallback(KLDivergenceCallback):
    """The KL objective with a linear warm-up of its weight: ``weight * min(1, step / warmup_steps)``.

    A small KL weight early lets the goal latent carry information before the prior pulls it in (avoids
    posterior collapse). ``step`` is MineLightning's optimizer step count, so a resumed run continues the
    schedule where it stopped. The weight in effect is logged as ``weight``.
    """

    def __init__(self, weight: float = 0.01, warmup_steps: int = 1000, start_weight: float = 0.0) -> None:
        super().__init__(weight)
        if warmup_steps < 0:
            raise ValueError(f"KLWarmupCallback: warmup_steps must be >= 0, got {warmup_steps}")
        self.final_weight, self.start_weight, self.warmup_steps = float(weight), float(start_weight), int(warmup_steps)
        self.on_step(0)

    def weight_at(self, step: int) -> float:
        if self.warmup_steps == 0 or step >= self.warmup_steps:
            return self.final_weight
        return self.start_weight + (self.final_weight - self.start_weight) * step / self.warmup_steps

    def on_step(self, global_step: int) -> None:
        self.weight = self.weight_at(global_step)
