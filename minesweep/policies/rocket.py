"""ROCKET-1 style policy: act on the object a segmentation mask points at, the way an interaction type says.

    image (B,T,H,W,3) + segment_mask (B,T,H,W) -> 4-channel frames
    segment_interaction (B,T) -> embedding e (index 0: no interaction / no segmentation)
    frames -> conv blocks, each conv -> GroupNorm -> FiLM(e) -> ReLU -> pool -> linear     (per frame)
           -> memory blocks, each FiLM(e) -> VPT transformer block (memory of past frames)
           -> LayerNorm -> action head (shared Minecraft head, ``nucleus_prob`` top-p sampling) and value head

The interaction type modulates every block (FiLM: a per-channel scale and shift computed from ``e``), so the same
mask can mean "mine it" or "approach it". FiLM layers start as the identity. The memory state is VPT's flat
``[mask, K, V] * layers`` list; ``first`` resets it at episode starts.

Batches come from a store with the segmentation modality (``segment_*`` keys, see
minesweep/data/loading/datamodule.py);
at inference pass ``condition={'segment_mask': ..., 'segment_interaction': ...}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from minesweep.data.segmentation import INTERACTION_TYPES
from minesweep.policies.backbones import to_float_frames
from minesweep.policies.base import Latents, MinePolicy, State
from minesweep.policies.memory import TransformerStack, transformer_memory

__all__ = ["RocketPolicy", "FiLM", "FiLMConvBlock"]

_NEEDS_SEGMENTATION = (
    "RocketPolicy needs input['{key}'] ({what}); train on a store with the segmentation modality "
    "(recordings with NAME.segmentation.npz, e.g. `minesweep-data synth`, then `minesweep-data ingest`), "
    "or pass it in condition= at inference"
)


class FiLM(nn.Module):
    """``x * (1 + gamma(e)) + beta(e)`` per channel; zero-initialised, so it starts as the identity."""

    def __init__(self, cond_dim: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x`` (N,C,H,W) with ``cond`` (N,D), or (..., C) with ``cond`` (..., D)."""
        gamma, beta = self.linear(cond).chunk(2, dim=-1)
        if x.dim() == 4:
            gamma, beta = gamma[:, :, None, None], beta[:, :, None, None]
        return x * (1.0 + gamma) + beta


class FiLMConvBlock(nn.Module):
    """conv -> GroupNorm -> FiLM -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, cond_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(1, out_channels)
        self.film = FiLM(cond_dim, out_channels)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.film(self.norm(self.conv(x)), cond))


class RocketPolicy(MinePolicy):
    """ROCKET-1 (see the module docstring)."""

    def __init__(
        self,
        hidsize: int = 256,
        channels: Sequence[int] = (16, 32, 32),
        interaction_dim: int = 32,
        n_interactions: int = len(INTERACTION_TYPES),
        memory_layers: int = 2,
        memory_heads: int = 4,
        memory_size: int = 64,
        pointwise_ratio: int = 4,
        temperature: float = 1.0,
        nucleus_prob: float | None = None,
        name: str = "rocket",
    ) -> None:
        super().__init__(hidsize, temperature=temperature, name=name, nucleus_prob=nucleus_prob)
        if hidsize % memory_heads:
            raise ValueError(f"RocketPolicy: hidsize {hidsize} must be divisible by memory_heads {memory_heads}")
        if len(channels) != 3:
            raise ValueError(f"RocketPolicy: channels must list 3 conv widths, got {list(channels)}")
        self.hidsize, self.n_layers, self.maxlen = hidsize, memory_layers, memory_size
        self.n_interactions = n_interactions
        # Row 0: no interaction (frames without segmentation); type i is row i + 1.
        self.interaction = nn.Embedding(n_interactions + 1, interaction_dim)
        c1, c2, c3 = channels
        self.conv_blocks = nn.ModuleList(
            [
                FiLMConvBlock(4, c1, 8, 4, interaction_dim),  # RGB + object mask
                FiLMConvBlock(c1, c2, 3, 2, interaction_dim),
                FiLMConvBlock(c2, c3, 3, 2, interaction_dim),
            ]
        )
        self.pool = nn.AdaptiveAvgPool2d(4)  # keeps where the masked object is, coarsely
        self.project = nn.Sequential(nn.Linear(c3 * 16, hidsize), nn.ReLU(inplace=True), nn.LayerNorm(hidsize))
        self.memory = TransformerStack(
            memory_layers,
            residual=True,
            hidsize=hidsize,
            heads=memory_heads,
            maxlen=memory_size,
            pointwise_ratio=pointwise_ratio,
            pointwise_use_activation=False,
        )
        self.memory_films = nn.ModuleList(FiLM(interaction_dim, hidsize) for _ in range(memory_layers))
        self.final_ln = nn.LayerNorm(hidsize)

    def initial_state(self, batch_size: int | None = None) -> State:
        return transformer_memory(self.n_layers, self.maxlen, self.hidsize, batch_size, self.final_ln.weight)

    def _condition(self, input: dict[str, Any], B: int, T: int, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask (B,T,H,W), interaction index (B,T) with 0 = none) from the input, checked."""
        if "segment_mask" not in input:
            raise KeyError(_NEEDS_SEGMENTATION.format(key="segment_mask", what="(B,T,H,W) object mask"))
        if "segment_interaction" not in input:
            raise KeyError(_NEEDS_SEGMENTATION.format(key="segment_interaction", what="(B,T) interaction type"))
        mask = input["segment_mask"]
        if tuple(mask.shape) != (B, T, H, W):
            raise ValueError(
                f"RocketPolicy: segment_mask is {tuple(mask.shape)}, expected {(B, T, H, W)} "
                "(one mask per frame, at the image resolution)"
            )
        interaction = torch.as_tensor(input["segment_interaction"], device=mask.device).long()
        if interaction.dim() <= 1:  # one type per sequence (or for all): the same at every step
            interaction = interaction.reshape(-1, 1).expand(B, T)
        valid = input.get("segment_valid")
        if valid is not None:
            interaction = torch.where(valid.bool(), interaction, torch.full_like(interaction, -1))
        if ((interaction < -1) | (interaction >= self.n_interactions)).any():
            raise ValueError(f"RocketPolicy: segment_interaction must be in -1..{self.n_interactions - 1}")
        return mask, interaction + 1

    def forward(self, input: dict[str, Any], state_in: State = None, **kwargs: Any) -> tuple[Latents, State]:
        image = input["image"]
        B, T, H, W, _ = image.shape
        mask, interaction = self._condition(input, B, T, H, W)
        first = input.get("first")
        if first is None:
            first = torch.zeros(B, T, dtype=torch.bool, device=image.device)
        state = self.initial_state(B) if state_in is None else state_in
        if len(state) != 3 * self.n_layers:
            raise ValueError(f"RocketPolicy: state has {len(state)} tensors, expected 3 per memory layer")

        dtype = self.project[0].weight.dtype
        e = self.interaction(interaction)  # (B,T,D)
        x = to_float_frames(image.reshape(B * T, H, W, 3), dtype)
        x = torch.cat([x, mask.reshape(B * T, 1, H, W).to(dtype)], dim=1)
        e_flat = e.reshape(B * T, -1)
        for block in self.conv_blocks:
            x = block(x, e_flat)
        x = self.project(self.pool(x).flatten(1)).reshape(B, T, -1)

        state_out: list[torch.Tensor] = []
        first = first.bool()
        for i, (film, block) in enumerate(zip(self.memory_films, self.memory.blocks, strict=False)):
            x, block_state = block(film(x, e), first, state[3 * i : 3 * i + 3])
            state_out += block_state
        h = self.final_ln(torch.relu(x))
        latents = {"pi_logits": self.pi_head(h), "vpred": self.value_head(h), "pi_h": h}
        return latents, state_out
