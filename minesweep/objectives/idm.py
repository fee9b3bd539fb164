"""Inverse dynamics: behaviour cloning of the action at every frame from a window of past and future frames."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from minesweep.objectives.base import ObjectiveCallback
from minesweep.policies.base import MinePolicy
from minesweep.policies.heads import FactoredActionHead


def visible_frames(mask: torch.Tensor, future_frames: int) -> torch.Tensor:
    """``mask`` (B,T) of valid frames -> the frames whose next ``future_frames`` frames are valid too and inside
    the window: the action at ``t`` shows in frame ``t + 1``, so an IDM cannot see it at an episode's last frame
    or a window's last frame."""
    visible = mask.clone()
    for k in range(1, future_frames + 1):
        visible = visible * F.pad(mask[:, k:], (0, k))  # frames beyond the window count as unseen
    return visible


class InverseDynamicsCallback(ObjectiveCallback):
    """``-log p(a_t)`` of the env action at each frame (each of the 20 buttons, each camera axis's mu-law bin)
    under an IDM's factored head (:class:`~minesweep.policies.idm.IDMPolicy`), summed over time, mean over the
    batch, times ``weight``. Masked: padding (``batch['mask']``) and the last ``future_frames`` valid frames of each
    window (their future is outside it). Unlike BC's joint camera, "no camera move" is a class here (the centre
    bin of each axis), so the camera is never masked as null: an IDM must learn to predict it.

    Logged: ``buttons_exact`` / ``camera_exact``, the fraction of counted frames whose 20 buttons / 2 camera bins
    are all predicted right (most likely class), and ``loss_per_frame``.
    """

    required_latents = ("pi_logits",)

    def __init__(self, weight: float = 1.0, future_frames: int = 1) -> None:
        super().__init__(weight)
        if future_frames < 0:
            raise ValueError(f"future_frames must be >= 0, got {future_frames}")
        self.future_frames = future_frames

    def __call__(
        self,
        batch: dict[str, Any],
        batch_idx: int,
        step_name: str,
        latents: dict[str, Any],
        mine_policy: MinePolicy,
    ) -> dict[str, torch.Tensor]:
        if not isinstance(mine_policy.pi_head, FactoredActionHead):
            raise TypeError(
                f"{self.name} trains an inverse dynamics model: it needs a policy with the IDM's factored action "
                f"head (policy=idm_tiny, policy=vpt_idm_4x); policy '{getattr(mine_policy, 'name', '?')}' has a "
                f"{type(mine_policy.pi_head).__name__}"
            )
        env_action = batch.get("env_action")
        if env_action is None or "camera_bins" not in env_action:
            raise KeyError(f"{self.name} needs batch['env_action'] with 'buttons' and 'camera_bins' (MineDataModule)")
        target = {"buttons": (env_action["buttons"] != 0).long(), "camera": env_action["camera_bins"].long()}
        pi_logits = latents["pi_logits"]
        log_prob = mine_policy.pi_head.logprob(target, pi_logits, return_dict=True)  # each (B,T)

        mask = batch.get("mask")
        mask = torch.ones_like(log_prob["buttons"]) if mask is None else mask.to(log_prob["buttons"].dtype)
        counted = visible_frames(mask, self.future_frames)
        button_loss = -(log_prob["buttons"] * counted).sum(-1)
        camera_loss = -(log_prob["camera"] * counted).sum(-1)
        loss = button_loss + camera_loss
        n = counted.sum().clamp_min(1.0)
        with torch.no_grad():  # logged only
            predicted = mine_policy.pi_head.sample(pi_logits, deterministic=True)
            buttons_exact = (predicted["buttons"] == target["buttons"]).all(-1).to(counted.dtype)
            camera_exact = (predicted["camera"] == target["camera"]).all(-1).to(counted.dtype)
        return {
            "loss": loss.mean() * self.weight,
            "button_loss": button_loss.mean(),
            "camera_loss": camera_loss.mean(),
            "loss_per_frame": loss.sum() / n,
            "buttons_exact": (buttons_exact * counted).sum() / n,
            "camera_exact": (camera_exact * counted).sum() / n,
            "weight": torch.tensor(float(self.weight)),
        }
