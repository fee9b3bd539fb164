"""The reference VPT's fan-in initialised layers, shared by its image encoder and its memory transformer."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FanInReLULayer", "fan_in_init_"]


def fan_in_init_(layer: nn.Conv2d | nn.Linear, scale: float = 1.0) -> None:
    """Scale each output unit's weights to norm ``scale`` and zero the bias (the reference scheme)."""
    with torch.no_grad():
        w = layer.weight
        w.mul_(scale / torch.linalg.vector_norm(w, dim=tuple(range(1, w.ndim)), keepdim=True))
        if layer.bias is not None:
            layer.bias.zero_()


class FanInReLULayer(nn.Module):
    """norm -> conv3x3 / linear -> ReLU, the reference ``FanInInitReLULayer``.

    (reference) The norm comes *before* the layer, and the layer has no bias when there is a
    norm. ``norm`` is ``"group"`` (GroupNorm with ``groups``), ``"layer"`` or None.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kind: str = "conv",
        norm: str | None = None,
        groups: int = 1,
        init_scale: float = 1.0,
        activation: bool = True,
    ) -> None:
        super().__init__()
        if norm == "group":
            self.norm = nn.GroupNorm(groups, in_dim)
        elif norm == "layer":
            self.norm = nn.LayerNorm(in_dim)
        else:
            self.norm = None
        if kind == "conv":
            self.layer = nn.Conv2d(in_dim, out_dim, kernel_size=3, padding=1, bias=self.norm is None)
        else:
            self.layer = nn.Linear(in_dim, out_dim, bias=self.norm is None)
        self.activation = activation
        fan_in_init_(self.layer, init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        x = self.layer(x)
        # In place: the layer output is not needed for backward (ReLU keeps its own output).
        return F.relu(x, inplace=True) if self.activation else x
