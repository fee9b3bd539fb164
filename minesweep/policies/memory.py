"""The memory transformer of OpenAI's VPT (Transformer-XL style: a causal window over cached past keys/values).

Shared by VPT, GROOT, ROCKET and the backbones. Its recurrent state is a flat list of batch-first tensors,
``[mask_0, K_0, V_0, mask_1, K_1, V_1, ...]`` (:func:`transformer_memory`), so a trainer can index, reset and
detach it without knowing the model. Details of the reference are reproduced on purpose and marked "(reference)".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from minesweep.policies.layers import FanInReLULayer, fan_in_init_

__all__ = ["TransformerStack", "TransformerBlock", "clipped_causal_mask", "transformer_memory"]

REL_ATTN_NBASIS = 10  # basis functions of the relative-position attention bias
MASKED_LOGIT = -1e9  # (reference) added to masked attention logits instead of -inf


def clipped_causal_mask(
    first: torch.Tensor, state_mask: torch.Tensor, t: int, maxlen: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which keys each query may attend to, and the memory mask to carry to the next chunk.

    Keys are ``[maxlen cached frames, t new frames]``. Query ``i`` sees key ``j`` iff
    ``0 <= maxlen + i - j < maxlen``: exactly the last ``maxlen`` frames, itself included.
    Cached keys are additionally valid only where ``state_mask`` says so and when the chunk
    does not start an episode.

    (reference) Only ``first[:, 0]`` counts: an episode start in the middle of a chunk is
    ignored, and the cached K/V are never zeroed, only masked.

    ``first`` (B,T) bool, ``state_mask`` (B,1,maxlen) bool -> mask (B,t,maxlen+t), (B,1,maxlen).
    """
    device = first.device
    not_first = ~first[:, :1, None]  # (B,1,1)
    d = relative_distance(t, maxlen, device)
    band = (d >= 0) & (d < maxlen)  # (t, maxlen+t)
    past_ok = state_mask & not_first  # (B,1,maxlen)
    key_ok = torch.cat([past_ok, torch.ones_like(past_ok[..., :1]).expand(-1, -1, t)], dim=-1)
    mask = band & key_ok  # (B,t,maxlen+t)
    # The new frames become valid memory; older memory survives only if no episode started.
    new_state_mask = torch.cat(
        [past_ok[..., t:], torch.ones(first.shape[0], 1, min(t, maxlen), dtype=torch.bool, device=device)],
        dim=-1,
    )
    return mask, new_state_mask


def relative_distance(t: int, maxlen: int, device: torch.device) -> torch.Tensor:
    """``d[i, j] = maxlen + i - j``: how many frames key ``j`` lies before query ``i``."""
    i = torch.arange(t, device=device)[:, None]
    j = torch.arange(maxlen + t, device=device)[None, :]
    return maxlen + i - j


class CachedSelfAttention(nn.Module):
    """Multi-head self-attention over ``[cached K/V, new frames]`` with a learned
    relative-position bias; reference ``SelfAttentionLayer`` (``orc_block``)."""

    def __init__(self, hidsize: int, heads: int, maxlen: int, init_scale: float) -> None:
        super().__init__()
        self.heads, self.maxlen = heads, maxlen
        self.head_dim = hidsize // heads
        # (reference) q and proj have biases, k and v do not.
        self.q_layer = nn.Linear(hidsize, hidsize)
        self.k_layer = nn.Linear(hidsize, hidsize, bias=False)
        self.v_layer = nn.Linear(hidsize, hidsize, bias=False)
        self.proj_layer = nn.Linear(hidsize, hidsize)
        # Relative-position bias: per head, per query, REL_ATTN_NBASIS coefficients (from r_layer)
        # that mix the basis rows of b_nd, one column per distance 0..maxlen-1.
        self.r_layer = nn.Linear(hidsize, REL_ATTN_NBASIS * heads)
        self.b_nd = nn.Parameter(torch.zeros(REL_ATTN_NBASIS, maxlen))
        for layer in (self.q_layer, self.k_layer, self.v_layer, self.r_layer):
            fan_in_init_(layer)
        fan_in_init_(self.proj_layer, init_scale)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B,n,hid) -> (B,heads,n,head_dim); channel = head * head_dim + k."""
        B, n, _ = x.shape
        return x.view(B, n, self.heads, self.head_dim).transpose(1, 2)

    def relative_bias(self, x: torch.Tensor) -> torch.Tensor:
        """(B,t,hid) -> (B,heads,t,maxlen+t): ``sum_n R[h,i,n] b_nd[n,d]``, 0 outside the band."""
        B, t, _ = x.shape
        if self.maxlen == 0:  # (reference) no memory, no band: the bias is zero (an IDM's window attention)
            return x.new_zeros(B, self.heads, t, t)
        # (reference) r_layer's channels are head-major: [h0 n0..n9, h1 n0..n9, ...].
        R = self.r_layer(x).view(B, t, self.heads, REL_ATTN_NBASIS).transpose(1, 2)
        by_distance = R @ self.b_nd  # (B,heads,t,maxlen), indexed by distance d
        d = relative_distance(t, self.maxlen, x.device)
        band = (d >= 0) & (d < self.maxlen)
        index = d.clamp(0, self.maxlen - 1).expand(B, self.heads, -1, -1)
        return by_distance.gather(-1, index) * band

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, K_cache: torch.Tensor, V_cache: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B,t,hid), mask (B,t,maxlen+t) -> x + attention, and the new K/V caches."""
        B, t, hid = x.shape
        K = torch.cat([K_cache, self.k_layer(x)], dim=1)  # (B,maxlen+t,hid)
        V = torch.cat([V_cache, self.v_layer(x)], dim=1)
        q, k, v = self.split_heads(self.q_layer(x)), self.split_heads(K), self.split_heads(V)

        # (reference, use_muP_factor) the logit scale is 1/head_dim, not 1/sqrt(head_dim).
        logits = (q @ k.transpose(-2, -1)) / self.head_dim + self.relative_bias(x)
        logits = logits + MASKED_LOGIT * (~mask[:, None]).to(logits.dtype)
        weights = torch.softmax(logits.float(), dim=-1).to(v.dtype)
        attended = (weights @ v).transpose(1, 2).reshape(B, t, hid)
        # (reference) the residual adds this layer's input, which is already layer-normed.
        keep = K.shape[1] - self.maxlen  # (not K[:, -maxlen:], which keeps everything when maxlen is 0)
        return x + self.proj_layer(attended), K[:, keep:], V[:, keep:]


class MaskedAttention(nn.Module):
    """Builds the clipped-causal mask and runs ``orc_block``; reference ``MaskedAttention``.

    ``causal=False`` is the reference's ``mask="none"`` without memory (``maxlen == 0``, an inverse dynamics
    model): every frame of the window attends to every other, past and future. Frames where ``key_valid``
    (B,t) is False (padding after an episode's end; the reference has none) are not attended to."""

    def __init__(self, hidsize: int, heads: int, maxlen: int, init_scale: float, causal: bool = True) -> None:
        super().__init__()
        if not causal and maxlen != 0:
            raise ValueError(f"non-causal attention keeps no memory: maxlen must be 0, got {maxlen}")
        self.maxlen, self.causal = maxlen, causal
        self.orc_block = CachedSelfAttention(hidsize, heads, maxlen, init_scale)

    def forward(
        self,
        x: torch.Tensor,
        first: torch.Tensor,
        state: Sequence[torch.Tensor],
        key_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        state_mask, K_cache, V_cache = state
        if self.causal:
            mask, state_mask = clipped_causal_mask(first, state_mask, x.shape[1], self.maxlen)
        else:
            B, t = x.shape[:2]
            valid = torch.ones(B, t, dtype=torch.bool, device=x.device) if key_valid is None else key_valid.bool()
            # A window of padding only would attend to nothing (a NaN softmax): let its frames see themselves.
            mask = valid[:, None, :] | torch.eye(t, dtype=torch.bool, device=x.device)
        x, K_cache, V_cache = self.orc_block(x, mask, K_cache, V_cache)
        return x, [state_mask, K_cache, V_cache]


class TransformerBlock(nn.Module):
    """``y = LN(x) + Attn(LN(x)); out = y + MLP(y)``; reference ``ResidualRecurrentBlock``.

    (reference) The raw input ``x`` is dropped: the only residual is around the normalised
    input, and the MLP (LN -> Linear no bias -> ReLU -> Linear) is applied to ``y``. With ``residual=False``
    (the reference's ``is_residual=False``) the MLP has no residual either: ``out = MLP(y)``.
    """

    def __init__(
        self,
        hidsize: int,
        heads: int,
        maxlen: int,
        pointwise_ratio: int,
        pointwise_use_activation: bool,
        init_scale: float,
        residual: bool = True,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.residual = residual
        self.pre_r_ln = nn.LayerNorm(hidsize)
        self.r = MaskedAttention(hidsize, heads, maxlen, init_scale, causal)
        self.mlp0 = FanInReLULayer(hidsize, hidsize * pointwise_ratio, kind="linear", norm="layer")
        self.mlp1 = FanInReLULayer(
            hidsize * pointwise_ratio,
            hidsize,
            kind="linear",
            init_scale=init_scale,
            activation=pointwise_use_activation,
        )

    def forward(
        self,
        x: torch.Tensor,
        first: torch.Tensor,
        state: Sequence[torch.Tensor],
        key_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        y, state = self.r(self.pre_r_ln(x), first, state, key_valid)
        out = self.mlp1(self.mlp0(y))
        return (y + out if self.residual else out), state


def transformer_memory(
    n_layers: int, maxlen: int, hidsize: int, batch_size: int | None, like: torch.Tensor
) -> list[torch.Tensor]:
    """The initial state of a TransformerStack: per layer an all-False memory mask (B,1,maxlen) and zero K, V
    (B,maxlen,hidsize), on ``like``'s device and in its dtype."""
    B = 1 if batch_size is None else batch_size
    state = []
    for _ in range(n_layers):
        state.append(torch.zeros(B, 1, maxlen, dtype=torch.bool, device=like.device))
        state.append(torch.zeros(B, maxlen, hidsize, dtype=like.dtype, device=like.device))
        state.append(torch.zeros(B, maxlen, hidsize, dtype=like.dtype, device=like.device))
    return state


class TransformerStack(nn.Module):
    """Blocks in sequence, each with its own ``[mask, K, V]`` state; reference
    ``ResidualRecurrentBlocks``."""

    def __init__(self, n_layers: int, residual: bool, **block_kwargs: Any) -> None:
        super().__init__()
        # (reference) residual blocks start at n_layers**-0.5, times 2**-0.5 for the MLP's second residual;
        # without residuals (is_residual=False) at 1, and the MLP adds nothing back.
        scale = n_layers**-0.5 * 2**-0.5 if residual else 1.0
        self.blocks = nn.ModuleList(
            TransformerBlock(init_scale=scale, residual=residual, **block_kwargs) for _ in range(n_layers)
        )

    def forward(
        self,
        x: torch.Tensor,
        first: torch.Tensor,
        state: Sequence[torch.Tensor],
        key_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``key_valid`` (B,t): frames non-causal attention may attend to (see :class:`MaskedAttention`)."""
        state_out: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            x, block_state = block(x, first, state[3 * i : 3 * i + 3], key_valid)
            state_out += block_state
        return x, state_out
