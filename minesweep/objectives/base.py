"""The objective interface: a weighted callback that turns (batch, latents) into a loss."""

from __future__ import annotations

from typing import Any

import torch

from minesweep.policies.base import MinePolicy


class MissingLatentError(KeyError):
    """An objective needs a latent that the policy does not produce."""

    def __str__(self) -> str:  # KeyError would otherwise quote the whole message
        return str(self.args[0])


class ObjectiveCallback:
    """Called as ``obj(batch, batch_idx, step_name, latents, mine_policy) -> dict``.

    The ``'loss'`` entry is added to the total loss; every other entry is only logged.
    ``required_latents`` names what the objective reads from ``latents``, so a policy that
    lacks one fails at the first step with an error naming both.
    """

    required_latents: tuple[str, ...] = ()

    def __init__(self, weight: float = 1.0) -> None:
        self.weight = weight
        self.name = type(self).__name__  # the trainer renames it after its config key

    def on_step(self, global_step: int) -> None:
        """Called by MineLightning before every training/validation step with the optimizer step count
        (restored on resume), for objectives whose weight follows a schedule. Does nothing by default."""

    def check_latents(self, latents: dict[str, Any], mine_policy: MinePolicy) -> None:
        for key in self.required_latents:
            if key not in latents:
                raise missing_latent(self.name, key, mine_policy, latents)

    def __call__(
        self,
        batch: dict[str, Any],
        batch_idx: int,
        step_name: str,
        latents: dict[str, Any],
        mine_policy: MinePolicy,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def missing_latent(objective: str, key: str, mine_policy: MinePolicy, latents: dict[str, Any]) -> MissingLatentError:
    policy_name = getattr(mine_policy, "name", type(mine_policy).__name__)
    return MissingLatentError(
        f"{objective} needs latents['{key}']; policy '{policy_name}' does not produce it "
        f"(it produces: {', '.join(sorted(latents))})"
    )
