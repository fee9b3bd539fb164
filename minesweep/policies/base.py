"""The policy interface every trainable model implements (MineStudio-compatible)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import nn

from minesweep.policies.heads import Generators, MineActionHead, ValueHead

State = list[torch.Tensor] | None
Latents = dict[str, Any]


class MinePolicy(nn.Module, ABC):
    """A policy maps a window of observations (and a carried state) to ``latents``.

    ``forward(input, state_in) -> (latents, state_out)``: ``input`` is the batch dict (at least
    ``image`` uint8 (B,T,H,W,3) and, for memory models, ``first`` bool (B,T) marking episode
    starts); ``latents`` must hold ``pi_logits`` (from ``self.pi_head``) and ``vpred`` and may
    hold anything an objective needs. ``state_in=None`` means "start from ``initial_state``".
    """

    #: Stateful policies get their memory carried across consecutive windows of an episode.
    is_stateful: bool = True
    #: The action head's class (its ``pi_logits``, ``sample``, ``logprob``): the joint VPT action space by default.
    action_head: type[MineActionHead] = MineActionHead

    def __init__(
        self, hidsize: int, temperature: float = 1.0, name: str | None = None, nucleus_prob: float | None = None
    ) -> None:
        super().__init__()
        self.name = name or type(self).__name__
        self.pi_head = self.action_head(hidsize, temperature=temperature, nucleus_prob=nucleus_prob)
        self.value_head = ValueHead(hidsize)

    @abstractmethod
    def forward(self, input: dict[str, Any], state_in: State = None, **kwargs: Any) -> tuple[Latents, State]: ...

    @abstractmethod
    def initial_state(self, batch_size: int | None = None) -> State: ...

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def get_action(
        self,
        input: dict[str, Any],
        state_in: State = None,
        condition: dict[str, Any] | None = None,
        *,
        deterministic: bool = False,
        nucleus_prob: float | None = None,
        generator: Generators = None,
    ) -> tuple[dict[str, torch.Tensor], State]:
        """Act on a window (or a single step with T=1): an agent action per frame and the new state.

        ``condition`` holds what a goal-conditioned policy follows (e.g. GROOT's reference video,
        ROCKET's object mask); its entries are added to ``input``. ``deterministic`` takes the most
        likely action, otherwise one is sampled (within the top-``nucleus_prob`` mass if given), with noise from
        ``generator``: the global RNG (None), one ``torch.Generator``, or one per batch row (then a row's actions
        do not depend on the rows batched with it).
        """
        if condition:
            input = {**input, **condition}
        latents, state_out = self(input, state_in)
        action = self.pi_head.sample(
            latents["pi_logits"], deterministic=deterministic, nucleus_prob=nucleus_prob, generator=generator
        )
        return action, state_out
