"""Behaviour cloning: negative log-likelihood of the recorded agent action."""

from __future__ import annotations

from typing import Any

import torch

from minesweep.actions.space import CAMERA_NULL_INDEX
from minesweep.objectives.base import ObjectiveCallback
from minesweep.policies.base import MinePolicy


class BehaviorCloneCallback(ObjectiveCallback):
    """``-log p(a)`` summed over time, camera term masked on the null camera bin, all terms masked
    by ``batch['mask']`` (padding), mean over the batch, times ``weight``.

    ``loss_per_frame`` (nats per valid frame) is logged too: unlike the per-window sum it is
    comparable across window lengths.
    """

    required_latents = ("pi_logits",)

    def __call__(
        self,
        batch: dict[str, Any],
        batch_idx: int,
        step_name: str,
        latents: dict[str, Any],
        mine_policy: MinePolicy,
    ) -> dict[str, torch.Tensor]:
        if "agent_action" not in batch:
            raise KeyError(f"{self.name} needs batch['agent_action']; the data module does not provide it")
        agent_action = batch["agent_action"]
        pi_logits = latents["pi_logits"]
        log_prob = mine_policy.pi_head.logprob(agent_action, pi_logits, return_dict=True)
        with torch.no_grad():  # logged only: keeping it out of the graph saves its activations
            entropy = mine_policy.pi_head.entropy(pi_logits, return_dict=True)

        camera_mask = (agent_action["camera"] != CAMERA_NULL_INDEX).float().squeeze(-1)
        mask = batch.get("mask")
        mask = torch.ones_like(camera_mask) if mask is None else mask.to(camera_mask.dtype)

        camera_loss = -(log_prob["camera"] * mask * camera_mask).sum(-1)
        button_loss = -(log_prob["buttons"] * mask).sum(-1)
        window_entropy = (entropy["camera"] * mask * camera_mask + entropy["buttons"] * mask).sum(-1)
        bc_loss = camera_loss + button_loss
        valid_frames = mask.sum().clamp_min(1.0)
        return {
            "loss": bc_loss.mean() * self.weight,
            "camera_loss": camera_loss.mean(),
            "button_loss": button_loss.mean(),
            "entropy": window_entropy.mean(),
            "loss_per_frame": bc_loss.sum() / valid_frames,
            "weight": torch.tensor(float(self.weight)),
        }
