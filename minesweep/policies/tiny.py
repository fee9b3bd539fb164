"""A small memory policy for tests and CPU demos: a strided CNN + a GRU memory.

Its action and value heads read a stochastic bottleneck of the memory's output (a variational information
bottleneck: a diagonal Gaussian posterior ``q(z | h)``, sampled in training, its mean when acting), whose prior is
``N(0, I)``: the latents carry ``posterior_dist`` / ``prior_dist``, so ``objective=[bc,kl]`` trains it with a
KL penalty on how much of each frame the policy keeps (on in conf/policy/tiny.yaml; off by default in the class, so
checkpoints saved before it existed still load; Alemi et al., "Deep
Variational Information Bottleneck", 2017).

Fast on two CPU cores, yet a real recurrent policy: its state is carried across windows and
reset wherever ``first`` marks an episode start.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from minesweep.policies.base import Latents, MinePolicy, State


class PoolTo(nn.Module):
    """Average-pools a (N, C, H, W) map to ``size`` x ``size``; a map of that size already passes untouched (an
    identity pooling still costs 5% of a tiny training step, mostly in its backward)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.size, self.size):
            return x
        return nn.functional.adaptive_avg_pool2d(x, self.size)


class ImageEncoder(nn.Module):
    """uint8 (N,H,W,3) -> (N,hidsize); three convolutions, average-pooled to ``pool`` x ``pool`` (so any frame size
    works), and a linear projection.

    The class defaults are the Atari encoder (kernels 8, 4, 3, strides 4, 2, 2, pooled to 4x4): on a 64x64 frame
    it leaves a 2x2 map, which the pooling only repeats. conf/policy/tiny.yaml instead cuts the frame into Crafter's
    own tiles: a 64x64 Crafter frame is 9x9 tiles of 7x7 pixels (the local view and the inventory), so kernel 7,
    stride 7 embeds each tile once, two 1x1 convolutions make that a small per-tile network, and the projection reads
    the whole 9x9 map (pooled to 9x9 it is unchanged), which keeps where each thing is relative to the player."""

    def __init__(
        self,
        hidsize: int,
        channels: tuple[int, int, int] = (16, 32, 32),
        strides: tuple[int, int, int] = (4, 2, 2),
        kernels: tuple[int, int, int] = (8, 4, 3),
        padding: tuple[int, int, int] = (0, 0, 0),
        pool: int = 4,
    ) -> None:
        super().__init__()
        if not len(channels) == len(strides) == len(kernels) == len(padding) == 3:
            raise ValueError(
                f"TinyPolicy: channels, strides, kernels and padding list 3 values each, got {channels}, "
                f"{strides}, {kernels}, {padding}"
            )
        layers: list[nn.Module] = []
        c_in = 3
        for c_out, k, s, p in zip(channels, kernels, strides, padding, strict=True):
            layers += [nn.Conv2d(c_in, c_out, kernel_size=k, stride=s, padding=p), nn.ReLU()]
            c_in = c_out
        layers += [PoolTo(pool), nn.Flatten()]
        self.convs = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Linear(c_in * pool * pool, hidsize), nn.ReLU())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).float() / 255.0
        return self.project(self.convs(x))


class Bottleneck(nn.Module):
    """(..., hidsize) -> a diagonal Gaussian ``q(z | h)`` over ``z`` (``latent_dim``), and the features the heads
    read, projected back from ``z``: a reparameterised sample in training mode, the mean in eval mode. It starts
    nearly deterministic (log-variance -4), so that BC alone learns as fast as without it; a KL term then widens it
    wherever the actions do not need the detail."""

    def __init__(self, hidsize: int, latent_dim: int = 32, initial_log_var: float = -4.0) -> None:
        super().__init__()
        self.encode = nn.Linear(hidsize, 2 * latent_dim)
        nn.init.constant_(self.encode.bias[latent_dim:], initial_log_var)
        self.decode = nn.Sequential(nn.Linear(latent_dim, hidsize), nn.ReLU())
        # The noise comes from its own generator, seeded by a count of training calls kept in the state dict: a
        # resumed run draws the same noise as the run that was never interrupted (the global RNG is not saved).
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mu, log_var = self.encode(h).chunk(2, dim=-1)
        posterior = {"mu": mu, "log_var": log_var.clamp(-10.0, 10.0)}
        if not self.training:
            return self.decode(mu), posterior
        generator = torch.Generator(device=mu.device).manual_seed(0x5EED + int(self.calls))
        self.calls += 1
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return self.decode(mu + noise * (0.5 * posterior["log_var"]).exp()), posterior


class TinyPolicy(MinePolicy):
    def __init__(
        self,
        hidsize: int = 128,
        channels: tuple[int, int, int] = (16, 32, 32),
        temperature: float = 1.0,
        name: str = "tiny",
        bottleneck: bool = False,
        latent_dim: int = 32,
        strides: tuple[int, int, int] = (4, 2, 2),
        kernels: tuple[int, int, int] = (8, 4, 3),
        padding: tuple[int, int, int] = (0, 0, 0),
        pool: int = 4,
    ) -> None:
        super().__init__(hidsize, temperature=temperature, name=name)
        self.hidsize = hidsize
        self.encoder = ImageEncoder(hidsize, tuple(channels), tuple(strides), tuple(kernels), tuple(padding), pool)
        self.memory = nn.GRUCell(hidsize, hidsize)
        self.norm = nn.LayerNorm(hidsize)
        self.bottleneck = Bottleneck(hidsize, latent_dim) if bottleneck else None

    def initial_state(self, batch_size: int | None = None) -> State:
        n = 1 if batch_size is None else batch_size
        return [torch.zeros(n, self.hidsize, device=self.device)]

    def forward(self, input: dict[str, Any], state_in: State = None, **kwargs: Any) -> tuple[Latents, State]:
        image = input["image"]
        B, T = image.shape[:2]
        features = self.encoder(image.reshape(B * T, *image.shape[2:])).reshape(B, T, -1)
        first = input.get("first")
        if first is None:
            first = torch.zeros(B, T, dtype=torch.bool, device=image.device)
        hidden = (self.initial_state(B) if state_in is None else state_in)[0]
        outputs, hidden = self._recur(features, hidden, first)
        h = self.norm(outputs + features)
        latents: Latents = {}
        if self.bottleneck is not None:
            h, posterior = self.bottleneck(h)
            prior = {"mu": torch.zeros_like(posterior["mu"]), "log_var": torch.zeros_like(posterior["log_var"])}
            latents.update(posterior_dist=posterior, prior_dist=prior)
        latents.update(pi_logits=self.pi_head(h), vpred=self.value_head(h), pi_h=h)
        return latents, [hidden]

    def _recur(
        self, features: torch.Tensor, hidden: torch.Tensor, first: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The GRU over (B, T, hidsize), the memory of a slot wiped where ``first`` marks an episode start (before
        that step). Each stretch of steps without a start in any slot runs as one fused ``torch.gru`` call with the
        cell's own weights: stepping ``self.memory`` frame by frame up to float rounding, without T Python steps and
        their autograd nodes (a third of the recurrence's time in a tiny training step)."""
        starts = first.any(dim=0).nonzero().flatten().tolist()
        bounds = sorted({0, *starts, first.shape[1]})
        weights = [self.memory.weight_ih, self.memory.weight_hh, self.memory.bias_ih, self.memory.bias_hh]
        outputs = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            hidden = hidden * (~first[:, a]).unsqueeze(-1).to(hidden.dtype)
            # torch.gru(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
            out, last = torch.gru(
                features[:, a:b].contiguous(),
                hidden.unsqueeze(0).contiguous(),
                weights,
                True,
                1,
                0.0,
                self.training,
                False,
                True,
            )
            outputs.append(out)
            hidden = last[0]
        return torch.cat(outputs, dim=1), hidden
