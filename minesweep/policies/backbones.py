"""Per-frame image backbones: ``(N, H, W, C)`` frames -> ``(N, out_dim)`` features.

Goal-conditioned policies take one as a config choice (``backbone: {_target_: ...}``):

* :class:`SmallCNN`, our own strided CNN: fast on CPU, any resolution, trained from scratch;
* :class:`ImpalaBackbone`, VPT's ImpalaCNN (same parameter names as VPT's ``net.img_process.cnn``), which can start
  from a VPT checkpoint's image encoder (``vpt_weights``).

Frames are uint8 (scaled to [0, 1]) or already float.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["SmallCNN", "ImpalaBackbone", "to_float_frames"]


def to_float_frames(frames: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(N, H, W, C)`` uint8 or float -> ``(N, C, H, W)`` float in [0, 1]."""
    x = frames.permute(0, 3, 1, 2)
    return x.to(dtype) / 255.0 if frames.dtype == torch.uint8 else x.to(dtype)


class SmallCNN(nn.Module):
    """Three strided convolutions (/4, /2, /2), a 4x4 adaptive pool and a linear projection."""

    def __init__(self, out_dim: int, in_channels: int = 3, channels: Sequence[int] = (16, 32, 32)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.out_dim = out_dim
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=8, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c2, c3, kernel_size=3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(4),  # any input resolution; keeps a coarse layout (where things are)
            nn.Flatten(),
        )
        self.project = nn.Sequential(nn.Linear(c3 * 16, out_dim), nn.ReLU(inplace=True))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.project(self.convs(to_float_frames(frames, self.project[0].weight.dtype)))


class ImpalaBackbone(nn.Module):
    """VPT's ImpalaCNN (GroupNorm/LayerNorm variant of the released models) and a linear projection.

    ``vpt_weights``: a VPT state dict (``.weights``) or a minesweep checkpoint of a VPT policy; its
    ``net.img_process.cnn.*`` entries are loaded into ``self.cnn`` (strictly: shapes must match, so ``img_shape``
    and ``chans`` must be the checkpoint's).
    """

    VPT_PREFIX = "net.img_process.cnn."

    def __init__(
        self,
        out_dim: int,
        img_shape: Sequence[int] = (128, 128, 3),
        chans: Sequence[int] = (16, 32, 32),
        vpt_weights: str | None = None,
    ) -> None:
        super().__init__()
        from minesweep.policies.vpt import CNN_OUTSIZE, ImpalaCNN  # only when this backbone is chosen

        self.out_dim = out_dim
        self.img_shape = tuple(img_shape)
        self.cnn = ImpalaCNN(img_shape, chans, conv_norm="group", groups=1, dense_norm="layer", post_pool_groups=1)
        self.project = nn.Sequential(nn.Linear(CNN_OUTSIZE, out_dim), nn.ReLU(inplace=True))
        if vpt_weights:
            self.load_vpt_weights(vpt_weights)

    def load_vpt_weights(self, path: str | Path) -> None:
        from minesweep.policies.weights import load_policy_weights, read_policy_state_dict

        state = read_policy_state_dict(path)
        cnn_state = {k[len(self.VPT_PREFIX) :]: v for k, v in state.items() if k.startswith(self.VPT_PREFIX)}
        if not cnn_state:
            raise ValueError(f"ImpalaBackbone: {path} has no '{self.VPT_PREFIX}*' entries (not a VPT policy?)")
        load_policy_weights(self.cnn, cnn_state)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        H, W = frames.shape[1:3]
        if (H, W) != self.img_shape[:2]:
            raise ValueError(
                f"ImpalaBackbone: frames are {H}x{W}, the backbone expects {self.img_shape[:2]} "
                "(set backbone.img_shape to the data resolution)"
            )
        x = to_float_frames(frames, self.project[0].weight.dtype)
        return self.project(self.cnn(x.permute(0, 2, 3, 1)))  # ImpalaCNN takes channels last
