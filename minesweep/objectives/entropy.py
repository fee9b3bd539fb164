"""Entropy bonus: rewards spread-out action distributions (a loss of ``-weight * entropy``)."""

from __future__ import annotations

from typing import Any

import torch

from minesweep.objectives.base import ObjectiveCallback
from minesweep.policies.base import MinePolicy


class EntropyBonusCallback(ObjectiveCallback):
    """``-weight * H(pi)`` per valid frame: the entropy of the button and camera distributions (nats), averaged
    over the real frames of the batch (``batch['mask']``). Counters the over-confidence BC drifts into on small
    data; keep ``weight`` small (1e-3..1e-2) next to BC, which sums over the window's frames."""

    required_latents = ("pi_logits",)

    def __call__(
        self,
        batch: dict[str, Any],
        batch_idx: int,
        step_name: str,
        latents: dict[str, Any],
        mine_policy: MinePolicy,
    ) -> dict[str, torch.Tensor]:
        entropy = mine_policy.pi_head.entropy(latents["pi_logits"], return_dict=True)
        buttons, camera = entropy["buttons"], entropy["camera"]
        mask = batch.get("mask")
        mask = torch.ones_like(buttons) if mask is None else mask.to(buttons.dtype)
        frames = mask.sum().clamp_min(1.0)
        per_frame = ((buttons + camera) * mask).sum() / frames
        return {
            "loss": -self.weight * per_frame,
            "entropy": per_frame.detach(),
            "button_entropy": (buttons * mask).sum().detach() / frames,
            "camera_entropy": (camera * mask).sum().detach() / frames,
            "weight": torch.tensor(float(self.weight)),
        }
