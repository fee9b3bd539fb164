"""Action and value heads shared by every Minecraft policy.

The action head is factored the way VPT factors the Minecraft action space: one categorical
over the 8641 joint button combinations and one over the 121 joint camera bins. Log-probabilities
are returned with a singleton action dimension, ``(B, T, 1, n)``, the reference layout, so that
released VPT weights and MineStudio-style objective callbacks work unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from minesweep.actions.space import N_BUTTON_COMBINATIONS, N_BUTTONS, N_CAMERA_BINS, N_CAMERA_INDICES

PiLogits = dict[str, torch.Tensor]
Action = dict[str, torch.Tensor]
#: Where sampling draws its randomness: the global RNG (None), one generator for the whole batch, or one per batch
#: row, so that a row's samples do not depend on which other rows share the batch (batched evaluation).
Generators = torch.Generator | Sequence[torch.Generator] | None


def uniform_like(x: torch.Tensor, generator: Generators = None) -> torch.Tensor:
    """Uniform [0, 1) noise shaped like ``x``, drawn from ``generator`` (see :data:`Generators`)."""
    if generator is None:
        return torch.rand_like(x)
    if isinstance(generator, torch.Generator):
        return torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    generators = list(generator)
    if len(generators) != x.shape[0]:
        raise ValueError(f"sampling: {len(generators)} generators for a batch of {x.shape[0]} rows")
    return torch.stack([torch.rand(x.shape[1:], generator=g, dtype=x.dtype, device=x.device) for g in generators])


class CategoricalHead(nn.Module):
    """``count`` independent categoricals over ``num_classes`` (one for a joint action; VPT's IDM has one per
    button): linear layer -> log-softmax of logits / temperature, shaped ``(..., count, num_classes)``."""

    def __init__(self, input_dim: int, num_classes: int, temperature: float = 1.0, count: int = 1) -> None:
        super().__init__()
        # Named like the reference so released state dicts load without renaming.
        self.linear_layer = nn.Linear(input_dim, count * num_classes)
        self.num_classes, self.count = num_classes, count
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear_layer(x).unflatten(-1, (self.count, self.num_classes))
        if self.temperature != 1.0:  # x / 1.0 is x: skipping it saves a pass over every logit (12% of a tiny step)
            logits = logits / self.temperature
        return F.log_softmax(logits.float(), dim=-1)

    @staticmethod
    def logprob(action: torch.Tensor, log_probs: torch.Tensor) -> torch.Tensor:
        """``action`` (..., count) int, ``log_probs`` (..., count, n) -> (...) summed over the ``count`` dim."""
        picked = torch.gather(log_probs, -1, action.long().unsqueeze(-1)).squeeze(-1)
        return picked.sum(-1)

    @staticmethod
    def entropy(log_probs: torch.Tensor) -> torch.Tensor:
        return -(log_probs.exp() * log_probs).sum(-1).sum(-1)

    @staticmethod
    def sample(
        log_probs: torch.Tensor,
        deterministic: bool = False,
        nucleus_prob: float | None = None,
        generator: Generators = None,
    ) -> torch.Tensor:
        """One class per position; ``nucleus_prob`` (top-p) keeps the smallest set of most likely
        classes whose probability reaches it and samples within that set. ``generator``: see :data:`Generators`."""
        if deterministic:
            return log_probs.argmax(-1)
        if nucleus_prob is not None and nucleus_prob < 1.0:
            log_probs = nucleus_filter(log_probs, nucleus_prob)
        # Gumbel-max: one exact categorical sample per position, fully vectorised.
        uniform = uniform_like(log_probs, generator).clamp_(1e-20, 1.0)
        return (log_probs - torch.log(-torch.log(uniform))).argmax(-1)


def nucleus_filter(log_probs: torch.Tensor, nucleus_prob: float) -> torch.Tensor:
    """Log-probabilities with every class outside the top-p nucleus set to -inf (last dim).

    A class is kept when the probability of the classes ranked above it is still below
    ``nucleus_prob``; the most likely class is therefore always kept.
    """
    if not 0.0 < nucleus_prob <= 1.0:
        raise ValueError(f"nucleus_prob must be in (0, 1], got {nucleus_prob}")
    sorted_lp, order = log_probs.sort(dim=-1, descending=True)
    mass_before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()
    drop_sorted = mass_before >= nucleus_prob
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return log_probs.masked_fill(drop, float("-inf"))


class MineActionHead(nn.Module):
    """Joint-buttons (8641-way) and joint-camera (121-way) categoricals.

    ``forward(h)`` gives ``pi_logits = {'buttons': (B,T,1,8641), 'camera': (B,T,1,121)}`` of
    normalised log-probabilities; ``logprob``/``entropy``/``sample`` take those dicts.
    """

    #: (classes, independent categoricals) of each component
    buttons_shape: tuple[int, int] = (N_BUTTON_COMBINATIONS, 1)
    camera_shape: tuple[int, int] = (N_CAMERA_INDICES, 1)

    def __init__(self, input_dim: int, temperature: float = 1.0, nucleus_prob: float | None = None) -> None:
        super().__init__()
        self.buttons = CategoricalHead(input_dim, self.buttons_shape[0], temperature, self.buttons_shape[1])
        self.camera = CategoricalHead(input_dim, self.camera_shape[0], temperature, self.camera_shape[1])
        if nucleus_prob is not None and not 0.0 < nucleus_prob <= 1.0:
            raise ValueError(f"nucleus_prob must be in (0, 1], got {nucleus_prob}")
        # Default top-p of sample(); a plain attribute, so state dicts are unchanged.
        self.nucleus_prob = nucleus_prob

    def components(self) -> dict[str, CategoricalHead]:
        return {"buttons": self.buttons, "camera": self.camera}

    def forward(self, x: torch.Tensor) -> PiLogits:
        return {name: head(x) for name, head in self.components().items()}

    def logprob(
        self, action: Action, pi_logits: PiLogits, return_dict: bool = False
    ) -> torch.Tensor | dict[str, torch.Tensor]:
        """Log-probability of ``action`` (each component (B,T,1)); (B,T) summed, or a dict per component."""
        per_component = {name: head.logprob(action[name], pi_logits[name]) for name, head in self.components().items()}
        return per_component if return_dict else sum(per_component.values())

    def entropy(self, pi_logits: PiLogits, return_dict: bool = False) -> torch.Tensor | dict[str, torch.Tensor]:
        per_component = {name: head.entropy(pi_logits[name]) for name, head in self.components().items()}
        return per_component if return_dict else sum(per_component.values())

    def sample(
        self,
        pi_logits: PiLogits,
        deterministic: bool = False,
        nucleus_prob: float | None = None,
        generator: Generators = None,
    ) -> Action:
        """An agent action per position: each component (B,T,1) int64. ``nucleus_prob`` (top-p)
        overrides the head's default; 1.0 or None samples from the full distribution. ``generator``: where the
        noise comes from (:data:`Generators`; components draw in order, buttons first)."""
        p = self.nucleus_prob if nucleus_prob is None else nucleus_prob
        return {
            name: head.sample(pi_logits[name], deterministic, p, generator) for name, head in self.components().items()
        }


class FactoredActionHead(MineActionHead):
    """VPT's inverse dynamics model's action head: each of the 20 buttons pressed or not, and each camera axis
    (pitch, yaw) one of 11 mu-law bins, all independent: ``pi_logits = {'buttons': (B,T,20,2), 'camera':
    (B,T,2,11)}``. The same env action space as :class:`MineActionHead`, without the joint combinations (the
    released IDM's ``pi_head`` layout). An action is ``{'buttons': (B,T,20), 'camera': (B,T,2)}`` of class indices:
    the env buttons themselves, and :func:`minesweep.actions.space.camera_to_bins` of the camera."""

    buttons_shape = (2, N_BUTTONS)
    camera_shape = (N_CAMERA_BINS, 2)


class EwmaNormalizer(nn.Module):
    """Running (EWMA) mean/variance of value targets, VPT's ``NormalizeEwma``.

    The value head predicts *normalised* values; ``denormalize`` maps them back to returns.
    Statistics are debiased like Adam's moments (``debiasing_term`` is the total EWMA weight).
    They are buffers, not parameters: they are statistics, so they must never reach an
    optimiser (the reference keeps them as ``requires_grad=False`` parameters; the state-dict
    entries are the same either way).
    """

    def __init__(self, size: int = 1, beta: float = 0.99999, epsilon: float = 1e-5) -> None:
        super().__init__()
        self.beta = beta
        self.epsilon = epsilon
        self.register_buffer("running_mean", torch.zeros(size))
        self.register_buffer("running_mean_sq", torch.zeros(size))
        self.register_buffer("debiasing_term", torch.tensor(0.0))

    def mean_var(self) -> tuple[torch.Tensor, torch.Tensor]:
        debias = self.debiasing_term.clamp(min=self.epsilon)
        mean = self.running_mean / debias
        # The floor keeps a fresh (all-zero) normaliser from dividing by zero.
        var = (self.running_mean_sq / debias - mean**2).clamp(min=1e-2)
        return mean, var

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return (x - mean) / torch.sqrt(var)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, var = self.mean_var()
        return x * torch.sqrt(var) + mean

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Fold a batch of (un-normalised) targets ``(..., size)`` into the running statistics."""
        x = x.detach().to(self.running_mean.dtype).reshape(-1, self.running_mean.shape[0])
        w = self.beta
        self.running_mean.mul_(w).add_(x.mean(0) * (1 - w))
        self.running_mean_sq.mul_(w).add_((x**2).mean(0) * (1 - w))
        self.debiasing_term.mul_(w).add_(1 - w)


class ValueHead(nn.Module):
    """Scalar value prediction (B,T,1).

    With ``normalized=True`` (VPT) the prediction is in normalised units and an
    :class:`EwmaNormalizer` (``self.normalizer``) holds the statistics to undo that.
    """

    def __init__(self, input_dim: int, normalized: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(input_dim, 1)
        self.normalizer = EwmaNormalizer(1) if normalized else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def denormalize(self, v: torch.Tensor) -> torch.Tensor:
        """Normalised prediction -> value in return units (identity without a normaliser)."""
        return v if self.normalizer is None else self.normalizer.denormalize(v)
