"""GROOT: a policy that follows a goal given as a reference gameplay video.

    reference video (B,R,H,W,3) -> backbone per frame -> temporal transformer -> masked mean -> posterior N(mu, var)
    its first frame             -> backbone           -> MLP                                  -> prior     N(mu, var)
    goal z: a reparameterised posterior sample in training, the posterior mean in eval (the prior mean when
            there is no reference video)
    observation (B,T,H,W,3)     -> backbone per frame -> fused with z (the goal token) -> memory transformer
                                -> action head (shared Minecraft head) and value head

Trained self-supervised with BC + KL(posterior || prior) (``objective=[bc,kl]``): the reference video is, by
default, the training window itself, so the goal latent has to summarise what happens in it, and the KL term
keeps that summary predictable from the first frame. ``data.reference_window=other`` takes the reference from a
different window of the same episode instead (``batch['reference_image']``).

Latents: ``pi_logits``, ``vpred``, ``posterior_dist`` / ``prior_dist`` (``{'mu', 'log_var'}``, (B, latent_dim),
what :class:`minesweep.objectives.KLDivergenceCallback` reads), ``goal`` and ``pi_h``. The memory decoder is VPT's
transformer stack (:class:`minesweep.policies.memory.TransformerStack`), so the state is VPT's flat
``[mask, K, V] * layers`` list and episode starts (``first``) reset it the same way.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from minesweep.policies.backbones import SmallCNN
from minesweep.policies.base import Latents, MinePolicy, State
from minesweep.policies.heads import Generators
from minesweep.policies.memory import TransformerStack, transformer_memory

__all__ = ["GrootPolicy", "GaussianHead", "VideoEncoder", "FirstFrameEncoder", "sinusoidal_positions"]

LOG_VAR_RANGE = (-10.0, 10.0)  # keeps exp(log_var) finite in float32 when an encoder runs away


def sinusoidal_positions(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """(length, dim) fixed sin/cos position codes: no maximum reference length to configure."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    codes = torch.zeros(length, dim, device=device)
    codes[:, 0::2] = torch.sin(position * freq)
    codes[:, 1::2] = torch.cos(position * freq)[:, : dim // 2]
    return codes


class GaussianHead(nn.Module):
    """(..., hidsize) -> ``{'mu', 'log_var'}`` of a diagonal Gaussian over the goal latent."""

    def __init__(self, hidsize: int, latent_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidsize, 2 * latent_dim)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, log_var = self.linear(h).chunk(2, dim=-1)
        return {"mu": mu, "log_var": log_var.clamp(*LOG_VAR_RANGE)}


class VideoEncoder(nn.Module):
    """Per-frame features (B,R,hid) -> temporal transformer (bidirectional) -> mean over real frames -> posterior."""

    def __init__(self, hidsize: int, latent_dim: int, layers: int, heads: int) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            hidsize, heads, dim_feedforward=4 * hidsize, dropout=0.0, batch_first=True, norm_first=True
        )
        self.temporal = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        # Normalised frame features: on the scale of the position codes, so that neither drowns the other.
        self.in_norm = nn.LayerNorm(hidsize)
        self.norm = nn.LayerNorm(hidsize)
        self.head = GaussianHead(hidsize, latent_dim)

    def forward(self, features: torch.Tensor, valid: torch.Tensor) -> dict[str, torch.Tensor]:
        B, R, hid = features.shape
        valid = valid.bool().clone()
        valid[~valid.any(1)] = True  # an all-padding reference (a padding window): attend to it anyway, no NaNs
        x = self.in_norm(features) + sinusoidal_positions(R, hid, features.device).to(features.dtype)
        x = self.norm(self.temporal(x, src_key_padding_mask=~valid))
        weights = valid.to(x.dtype).unsqueeze(-1)
        pooled = (x * weights).sum(1) / weights.sum(1)
        return self.head(pooled)


class FirstFrameEncoder(nn.Module):
    """Features of the reference's first frame (B,hid) -> MLP -> prior."""

    def __init__(self, hidsize: int, latent_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(hidsize), nn.Linear(hidsize, hidsize), nn.ReLU(inplace=True))
        self.head = GaussianHead(hidsize, latent_dim)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.mlp(features))


class GrootPolicy(MinePolicy):
    """GROOT (see the module docstring). ``backbone`` maps (N,H,W,3) frames to (N, out_dim) features and is shared
    by the video encoder, the prior and the decoder (default: :class:`SmallCNN`)."""

    def __init__(
        self,
        hidsize: int = 256,
        latent_dim: int = 64,
        backbone: nn.Module | None = None,
        encoder_layers: int = 2,
        encoder_heads: int = 4,
        decoder_layers: int = 2,
        decoder_heads: int = 4,
        memory_size: int = 64,
        pointwise_ratio: int = 4,
        temperature: float = 1.0,
        nucleus_prob: float | None = None,
        name: str = "groot",
    ) -> None:
        super().__init__(hidsize, temperature=temperature, name=name, nucleus_prob=nucleus_prob)
        if hidsize % decoder_heads or hidsize % encoder_heads:
            raise ValueError(f"GrootPolicy: hidsize {hidsize} must be divisible by the encoder and decoder heads")
        self.hidsize, self.latent_dim, self.n_layers, self.maxlen = hidsize, latent_dim, decoder_layers, memory_size
        self.backbone = SmallCNN(hidsize) if backbone is None else backbone
        out_dim = getattr(self.backbone, "out_dim", hidsize)
        self.project = nn.Identity() if out_dim == hidsize else nn.Linear(out_dim, hidsize)
        self.video_encoder = VideoEncoder(hidsize, latent_dim, encoder_layers, encoder_heads)
        self.image_encoder = FirstFrameEncoder(hidsize, latent_dim)
        # The goal token: z projected to hidsize, fused with every frame's features.
        self.goal_token = nn.Linear(latent_dim, hidsize)
        self.fuse = nn.Sequential(nn.Linear(2 * hidsize, hidsize), nn.ReLU(inplace=True), nn.LayerNorm(hidsize))
        self.decoder = TransformerStack(
            decoder_layers,
            residual=True,
            hidsize=hidsize,
            heads=decoder_heads,
            maxlen=memory_size,
            pointwise_ratio=pointwise_ratio,
            pointwise_use_activation=False,
        )
        self.final_ln = nn.LayerNorm(hidsize)

    # -- state: VPT's memory layout -----------------------------------------------------------------------
    def initial_state(self, batch_size: int | None = None) -> State:
        return transformer_memory(self.n_layers, self.maxlen, self.hidsize, batch_size, self.final_ln.weight)

    # -- encoders -----------------------------------------------------------------------------------------
    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(B,T,H,W,C) -> (B,T,hidsize)."""
        B, T = frames.shape[:2]
        return self.project(self.backbone(frames.reshape(B * T, *frames.shape[2:]))).reshape(B, T, -1)

    def encode_reference(
        self, reference: torch.Tensor, valid: torch.Tensor | None = None, features: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(posterior, prior) of a reference video (B,R,H,W,3); ``valid`` (B,R) marks its real frames."""
        if features is None:
            features = self.frame_features(reference)
        if valid is None:
            valid = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
        return self.video_encoder(features, valid > 0), self.image_encoder(features[:, 0])

    @torch.no_grad()
    def encode_goal(self, reference: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The goal (posterior mean, (B, latent_dim)) of a reference video: encode it once, then act with
        ``condition={'goal': z}`` at every step."""
        return self.encode_reference(reference, valid)[0]["mu"]

    @torch.no_grad()
    def prior_goal(self, first_frame: torch.Tensor) -> torch.Tensor:
        """The prior mean (B, latent_dim) from one frame (B,H,W,3): the goal when no reference is given."""
        features = self.frame_features(first_frame[:, None])
        return self.image_encoder(features[:, 0])["mu"]

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, input: dict[str, Any], state_in: State = None, **kwargs: Any) -> tuple[Latents, State]:
        """``input``: ``image`` (B,T,H,W,3), optional ``first``, ``mask``; the goal comes from ``goal`` (B,latent)
        if given, else from ``reference_image`` (+ ``reference_mask``), else from the window itself."""
        image = input["image"]
        B, T = image.shape[:2]
        first = input.get("first")
        if first is None:
            first = torch.zeros(B, T, dtype=torch.bool, device=image.device)
        state = self.initial_state(B) if state_in is None else state_in
        if len(state) != 3 * self.n_layers:
            raise ValueError(f"GrootPolicy: state has {len(state)} tensors, expected 3 per decoder layer")
        features = self.frame_features(image)

        latents: Latents = {}
        goal = input.get("goal")
        if goal is None:
            if "reference_image" in input:
                posterior, prior = self.encode_reference(input["reference_image"], input.get("reference_mask"))
            else:  # self-supervised: the window is its own reference (its backbone features are reused)
                posterior, prior = self.encode_reference(image, input.get("mask"), features=features)
            if self.training:  # reparameterisation: gradients reach mu and log_var
                goal = posterior["mu"] + torch.randn_like(posterior["mu"]) * (0.5 * posterior["log_var"]).exp()
            else:
                goal = posterior["mu"]
            latents.update(posterior_dist=posterior, prior_dist=prior)
        elif goal.shape != (B, self.latent_dim):
            raise ValueError(f"GrootPolicy: input['goal'] is {tuple(goal.shape)}, expected ({B}, {self.latent_dim})")

        token = self.goal_token(goal.to(features.dtype))[:, None].expand(-1, T, -1)
        x = self.fuse(torch.cat([features, token], dim=-1))
        x, state_out = self.decoder(x, first.bool(), state)
        h = self.final_ln(F.relu(x))
        latents.update(pi_logits=self.pi_head(h), vpred=self.value_head(h), goal=goal, pi_h=h)
        return latents, state_out

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
        """Act toward ``condition``: ``{'reference_image': video}`` (its posterior mean), ``{'goal': z}`` (e.g. from
        :meth:`encode_goal`), or None for the prior mean of the window's first frame."""
        merged = {**input, **(condition or {})}
        if "goal" not in merged:
            if "reference_image" in merged:
                goal = self.encode_goal(merged["reference_image"], merged.get("reference_mask"))
            else:
                goal = self.prior_goal(input["image"][:, 0])
            condition = {**(condition or {}), "goal": goal}
        return super().get_action(
            input, state_in, condition, deterministic=deterministic, nucleus_prob=nucleus_prob, generator=generator
        )
