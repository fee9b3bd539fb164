"""KL divergence between a posterior and a prior diagonal Gaussian (e.g. GROOT's goal latent)."""

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
        return {
            "loss": kl.mean() * self.weight,
            "kl_div": kl.mean(),
            "weight": torch.tensor(float(self.weight)),
        }
