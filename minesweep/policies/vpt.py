"""OpenAI's VPT policy (``MinecraftAgentPolicy``), re-implemented.

Same architecture, same state-dict names and shapes, and (in float32) the same numbers as the
reference ``openai/Video-Pre-Training`` code, so released foundation weights load unchanged:

    image uint8 (B,T,H,W,3)
      -> ImpalaCNN (3 down-stacks of residual conv blocks) -> dense 256      net.img_process.cnn
      -> linear to hidsize                                                      net.img_process.linear
      -> n x transformer block over time, with a memory of past keys/values    net.recurrent_layer
      -> ReLU -> lastlayer -> final LayerNorm                                   net.lastlayer, net.final_ln
      -> action head (8641 buttons x 121 camera) and value head                 pi_head, value_head

The reference has several surprising details; they are reproduced on purpose and marked
"(reference)" below. The memory transformer (and its recurrent state, a flat list of batch-first
tensors ``[mask_0, K_0, V_0, ...]``) is :mod:`minesweep.policies.memory`, shared with GROOT and ROCKET;
the fan-in initialised layers are :mod:`minesweep.policies.layers`.

Fresh weights follow the reference's fan-in (row-norm) scheme with zero biases, but the
initial values are not the reference's: load released weights for reference behaviour.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from minesweep.policies.base import Latents, MinePolicy, State
from minesweep.policies.heads import ValueHead
from minesweep.policies.layers import FanInReLULayer, fan_in_init_
from minesweep.policies.memory import TransformerStack, transformer_memory
from minesweep.policies.weights import load_policy_weights

CNN_OUTSIZE = 256  # width of the ImpalaCNN's dense output (fixed in the reference)
BLOCKS_PER_STACK = 2  # residual blocks per ImpalaCNN down-stack

# --------------------------------------------------------------------------- image encoder


class ImpalaBlock(nn.Module):
    """``x + conv1(conv0(x))``; (reference) no ReLU after the residual add."""

    def __init__(self, chans: int, norm: str | None, groups: int, init_scale: float) -> None:
        super().__init__()
        s = math.sqrt(init_scale)
        self.conv0 = FanInReLULayer(chans, chans, norm=norm, groups=groups, init_scale=s)
        self.conv1 = FanInReLULayer(chans, chans, norm=norm, groups=groups, init_scale=s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(self.conv0(x))


class ImpalaDownStack(nn.Module):
    """firstconv -> max-pool /2 -> GroupNorm (``n``) -> residual blocks."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        norm: str | None,
        groups: int,
        post_pool_groups: int | None,
        init_scale: float,
        first_conv_norm: bool = True,
    ) -> None:
        super().__init__()
        first_norm = norm if first_conv_norm else None
        # Its ReLU is applied after the max-pool (forward): the same numbers, on a quarter of the pixels.
        self.firstconv = FanInReLULayer(in_chans, out_chans, norm=first_norm, groups=groups, activation=False)
        self.n = nn.GroupNorm(post_pool_groups, out_chans) if post_pool_groups is not None else None
        block_scale = init_scale / math.sqrt(BLOCKS_PER_STACK)
        self.blocks = nn.ModuleList(ImpalaBlock(out_chans, norm, groups, block_scale) for _ in range(BLOCKS_PER_STACK))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # relu(max_pool(x)) == max_pool(relu(x)) exactly, gradients included (ReLU is monotone, so the max picks the
        # same element), and the ReLU and its backward then run on a quarter of the pixels.
        x = F.relu(F.max_pool2d(self.firstconv(x), kernel_size=3, stride=2, padding=1), inplace=True)
        if self.n is not None:
            x = self.n(x)
        for block in self.blocks:
            x = block(x)
        return x


class ImpalaCNN(nn.Module):
    """(N,H,W,3) float image -> (N,256) features."""

    def __init__(
        self,
        img_shape: Sequence[int],
        chans: Sequence[int],
        conv_norm: str | None,
        groups: int,
        dense_norm: str | None,
        post_pool_groups: int | None,
        first_conv_norm: bool = False,
    ) -> None:
        super().__init__()
        h, w, c = img_shape
        stacks = []
        for i, out_chans in enumerate(chans):
            # (reference) the very first conv sees raw pixels and has no norm (so it has a bias), unless
            # first_conv_norm (an IDM, whose first conv sees its 3D convolution's features).
            stacks.append(
                ImpalaDownStack(
                    c,
                    out_chans,
                    norm=conv_norm,
                    groups=groups,
                    post_pool_groups=post_pool_groups,
                    init_scale=math.sqrt(len(chans)),
                    first_conv_norm=i > 0 or first_conv_norm,
                )
            )
            c, h, w = out_chans, (h + 1) // 2, (w + 1) // 2  # max_pool(3, stride 2, pad 1)
        self.stacks = nn.ModuleList(stacks)
        self.dense = FanInReLULayer(c * h * w, CNN_OUTSIZE, kind="linear", norm=dense_norm, init_scale=1.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # HWC -> CHW, a channels-last view: oneDNN's faster layout for these convolutions
        if self.stacks[0].firstconv.norm is not None and torch.is_grad_enabled() and not x.requires_grad:
            # torch 2.13's CPU GroupNorm backward crashes (segfault) on a channels-last input that needs no gradient
            x = x.contiguous()
        for stack in self.stacks:
            x = stack(x)
        return self.dense(x.flatten(1))  # (reference) flattened in C,H,W order


class ImageEncoder(nn.Module):
    """uint8 frames (B,T,H,W,3) -> (B,T,hidsize); reference ``ImgObsProcess``."""

    def __init__(self, hidsize: int, cnn: ImpalaCNN, dense_norm: str | None) -> None:
        super().__init__()
        self.cnn = cnn
        self.linear = FanInReLULayer(CNN_OUTSIZE, hidsize, kind="linear", norm=dense_norm)

    def forward(self, image: torch.Tensor, stem: nn.Module | None = None) -> torch.Tensor:
        """``stem``: a module over the scaled frames (B,T,H,W,3) -> (B,T,H,W,C) before the CNN (an IDM's 3D
        convolution; the caller owns it, as in the reference's state dict)."""
        B, T = image.shape[:2]
        # (reference) pixels are only scaled to [0, 1]: no mean/std normalisation.
        x = image.to(self.linear.layer.weight.dtype) / 255.0
        if stem is not None:
            x = stem(x)
        return self.linear(self.cnn(x.reshape(B * T, *x.shape[2:]))).reshape(B, T, -1)


class FrameConv3d(nn.Module):
    """A 3D convolution over (frames, height, width) then ReLU: (B,T,H,W,C) -> (B,T,H,W,C'); the reference
    IDM's ``conv3d_layer`` (a fan-in initialised layer without norm). Its temporal padding is zeros: frames
    near a window's edges see blank frames beyond it."""

    def __init__(self, inchan: int, outchan: int, kernel_size: Sequence[int], padding: Sequence[int]) -> None:
        super().__init__()
        self.layer = nn.Conv3d(inchan, outchan, tuple(kernel_size), padding=tuple(padding))
        fan_in_init_(self.layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.layer(x.permute(0, 4, 1, 2, 3))).permute(0, 2, 3, 4, 1)


# --------------------------------------------------------------------------- memory transformer


class VPTNet(nn.Module):
    """Image encoder -> memory transformer -> final layers; reference ``MinecraftPolicy``."""

    def __init__(
        self,
        hidsize: int,
        img_encoder: ImageEncoder,
        recurrent_layer: TransformerStack,
        dense_norm: str | None,
        use_pre_lstm_ln: bool,
        conv3d_layer: FrameConv3d | None = None,
    ) -> None:
        super().__init__()
        self.conv3d_layer = conv3d_layer  # before the image encoder (an IDM); None: not in the state dict
        self.img_process = img_encoder
        self.pre_lstm_ln = nn.LayerNorm(hidsize) if use_pre_lstm_ln else None
        self.recurrent_layer = recurrent_layer
        self.lastlayer = FanInReLULayer(hidsize, hidsize, kind="linear", norm=dense_norm)
        self.final_ln = nn.LayerNorm(hidsize)
        self.use_lastlayer = True

    def forward(
        self,
        image: torch.Tensor,
        first: torch.Tensor,
        state: Sequence[torch.Tensor],
        key_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.img_process(image, stem=self.conv3d_layer)
        if self.pre_lstm_ln is not None:
            x = self.pre_lstm_ln(x)
        x, state_out = self.recurrent_layer(x, first, state, key_valid)
        # (reference) an unconditional ReLU after the transformer stack. (reference, IDM) InverseActionNet computes
        # lastlayer and then normalises its input instead: use_lastlayer=False.
        x = F.relu(x)
        x = self.final_ln(self.lastlayer(x) if self.use_lastlayer else x)
        return x, state_out


# --------------------------------------------------------------------------- the policy

# Reference kwargs that have no effect on this model family (the reference's MinecraftPolicy swallows them too):
# ``final_relu`` (it applies its final ReLU unconditionally) and ``dense_init_norm_kwargs`` (it derives them from
# ``init_norm_kwargs``), both in the released IDM's network kwargs.
_IGNORED_KWARGS = {"single_output", "input_shape", "active_reward_monitors", "final_relu", "dense_init_norm_kwargs"}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"VPTPolicy: {message}")


class VPTPolicy(MinePolicy):
    """VPT's ``MinecraftAgentPolicy`` (the released 1x/2x/3x foundation-model family).

    Takes the reference ``policy_kwargs`` (plus ``temperature`` from its ``pi_head_kwargs``).
    Kwargs that select architectures the released models do not use (LSTM recurrence,
    batch norm, ...) raise a ValueError instead of being silently swallowed.
    """

    def __init__(
        self,
        *,
        hidsize: int,
        attention_heads: int,
        n_recurrence_layers: int,
        attention_memory_size: int,
        timesteps: int,
        impala_width: int = 1,
        impala_chans: Sequence[int] = (16, 32, 32),
        impala_kwargs: Mapping[str, Any] | None = None,
        init_norm_kwargs: Mapping[str, Any] | None = None,
        pointwise_ratio: int = 4,
        pointwise_use_activation: bool = False,
        use_pre_lstm_ln: bool = False,
        img_shape: Sequence[int] = (128, 128, 3),
        temperature: float = 1.0,
        name: str = "vpt",
        # Reference switches; only the released models' values are supported.
        recurrence_type: str = "transformer",
        attention_mask_style: str = "clipped_causal",
        use_pointwise_layer: bool = True,
        recurrence_is_residual: bool = True,
        only_img_input: bool = True,
        diff_mlp_embedding: bool = False,
        first_conv_norm: bool = False,
        scale_input_img: bool = True,
        img_statistics: Any = None,
        obs_processing_width: int = CNN_OUTSIZE,
        conv3d_params: Mapping[str, Any] | None = None,
        **ignored: Any,
    ) -> None:
        unknown = set(ignored) - _IGNORED_KWARGS
        if unknown:
            raise TypeError(f"VPTPolicy: unknown kwargs {sorted(unknown)}")
        _require(recurrence_type == "transformer", f"{recurrence_type=} is not supported")
        _require(attention_mask_style in ("clipped_causal", "none"), f"{attention_mask_style=} is not supported")
        causal = attention_mask_style == "clipped_causal"
        _require(use_pointwise_layer, "use_pointwise_layer=False is not supported")
        _require(only_img_input, "only_img_input=False is not supported")
        _require(not diff_mlp_embedding, "diff_mlp_embedding=True is not supported")
        _require(scale_input_img and img_statistics is None, "only scale_input_img=True, img_statistics=None")
        _require(obs_processing_width == CNN_OUTSIZE, f"obs_processing_width must be {CNN_OUTSIZE}")
        _require(hidsize % attention_heads == 0, f"{hidsize=} is not divisible by {attention_heads=}")
        if causal:
            _require(attention_memory_size > timesteps, "attention_memory_size must exceed timesteps")
        else:  # the reference's "none" mask over a memory would attend across episodes: only the IDM's no-memory case
            _require(
                attention_memory_size == timesteps,
                "attention_mask_style='none' needs attention_memory_size == timesteps (no memory, as the released IDM)",
            )
        conv3d = dict(conv3d_params or {})
        stem_kwargs = {k: conv3d.pop(k) for k in ("inchan", "outchan", "kernel_size", "padding") if k in conv3d}
        _require(not conv3d, f"unsupported conv3d_params {sorted(conv3d)}")
        if conv3d_params is not None:
            # its temporal kernel sees frames t+1, t+2: an IDM's stem (IDMPolicy), never a policy's
            _require(not causal, "conv3d_params (a 3D conv over future frames too) needs attention_mask_style='none'")
            _require(len(stem_kwargs) == 4, "conv3d_params needs inchan, outchan, kernel_size and padding")
            _require(stem_kwargs["inchan"] == 3, "conv3d_params.inchan must be 3 (RGB frames)")
        channels = stem_kwargs["outchan"] if conv3d_params is not None else 3
        _require(
            len(img_shape) == 3 and img_shape[2] == channels,
            f"img_shape must be (H, W, {channels}) (the CNN's input channels), got {img_shape}",
        )

        impala_kwargs = dict({"post_pool_groups": 1} if impala_kwargs is None else impala_kwargs)
        post_pool_groups = impala_kwargs.pop("post_pool_groups", None)
        _require(not impala_kwargs, f"unsupported impala_kwargs {sorted(impala_kwargs)}")
        init_norm_kwargs = dict({"group_norm_groups": 1} if init_norm_kwargs is None else init_norm_kwargs)
        _require(not init_norm_kwargs.pop("batch_norm", False), "batch_norm=True is not supported")
        groups = init_norm_kwargs.pop("group_norm_groups", None)
        _require(not init_norm_kwargs, f"unsupported init_norm_kwargs {sorted(init_norm_kwargs)}")
        # (reference) convs get GroupNorm(group_norm_groups); the dense layers then get LayerNorm.
        conv_norm = dense_norm = None
        if groups is not None:
            conv_norm, dense_norm = "group", "layer"

        super().__init__(hidsize, temperature=temperature, name=name)
        self.value_head = ValueHead(hidsize, normalized=True)  # VPT predicts normalised values
        self.hidsize, self.img_shape = hidsize, tuple(img_shape)
        self.n_layers = n_recurrence_layers
        # (reference) the memory holds attention_memory_size - timesteps past frames.
        self.maxlen = attention_memory_size - timesteps
        self.timesteps = timesteps  # frames per training window (an IDM's labelling window)

        cnn = ImpalaCNN(
            img_shape,
            chans=[int(impala_width * c) for c in impala_chans],
            conv_norm=conv_norm,
            groups=groups or 1,
            dense_norm=dense_norm,
            post_pool_groups=post_pool_groups,
            first_conv_norm=first_conv_norm,
        )
        recurrent = TransformerStack(
            n_recurrence_layers,
            residual=recurrence_is_residual,
            causal=causal,
            hidsize=hidsize,
            heads=attention_heads,
            maxlen=self.maxlen,
            pointwise_ratio=pointwise_ratio,
            pointwise_use_activation=pointwise_use_activation,
        )
        encoder = ImageEncoder(hidsize, cnn, dense_norm)
        stem = FrameConv3d(**stem_kwargs) if conv3d_params is not None else None
        self.net = VPTNet(hidsize, encoder, recurrent, dense_norm, use_pre_lstm_ln, conv3d_layer=stem)

    def initial_state(self, batch_size: int | None = None) -> State:
        """Per layer: an all-False memory mask (B,1,maxlen) and zero K, V (B,maxlen,hidsize)."""
        return transformer_memory(self.n_layers, self.maxlen, self.hidsize, batch_size, self.net.final_ln.weight)

    def forward(self, input: dict[str, Any], state_in: State = None, **kwargs: Any) -> tuple[Latents, State]:
        image = input["image"]
        B, T, H, W, _ = image.shape
        _require((H, W) == self.img_shape[:2], f"image is {H}x{W}, the model expects {self.img_shape[:2]}")
        first = input.get("first")
        if first is None:
            first = torch.zeros(B, T, dtype=torch.bool, device=image.device)
        state = self.initial_state(B) if state_in is None else state_in
        _require(len(state) == 3 * self.n_layers, f"state has {len(state)} tensors, not 3 per layer")

        h, state_out = self.net(image, first.bool(), state, key_valid=input.get("mask"))
        latents = {"pi_logits": self.pi_head(h), "vpred": self.value_head(h), "pi_h": h, "vf_h": h}
        return latents, state_out

    def denormalize_value(self, vpred: torch.Tensor) -> torch.Tensor:
        """Normalised ``vpred`` -> value in return units (the value head's EWMA statistics)."""
        return self.value_head.denormalize(vpred)

    @classmethod
    def from_model_file(cls, model_file: str, **overrides: Any) -> VPTPolicy:
        """Build the architecture a released ``.model`` file describes (weights load separately,
        e.g. with ``policy.weights=...``); ``overrides`` replace single kwargs."""
        policy_kwargs, pi_head_kwargs = read_model_file(model_file)
        return cls(**{**policy_kwargs, **pi_head_kwargs, **overrides})

    @classmethod
    def from_reference(
        cls,
        state_dict: str | Path | Mapping[str, torch.Tensor],
        policy_kwargs: Mapping[str, Any] | None = None,
        pi_head_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> VPTPolicy:
        """Build from the reference's ``policy_kwargs``/``pi_head_kwargs`` (or plain kwargs) and
        load a reference-named state dict (a mapping or a ``torch.save``-d file) strictly."""
        policy = cls(**{**(policy_kwargs or {}), **(pi_head_kwargs or {}), **kwargs})
        load_vpt_weights(policy, state_dict)
        return policy


def load_vpt_weights(policy: nn.Module, state_dict: str | Path | Mapping[str, torch.Tensor]) -> None:
    """Strictly load reference-named weights (the reference loader uses ``strict=False`` and would
    silently keep random weights). Raises ValueError naming every offending key."""
    load_policy_weights(policy, state_dict)


class _KwargsOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data only: a released ``.model`` file is a pickle of nested kwargs dicts."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a VPT .model file should hold only plain kwargs "
            f"(dicts, lists, strings, numbers)"
        )


def read_model_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(policy_kwargs, pi_head_kwargs)`` from a released VPT ``.model`` file, without running code."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            params = _KwargsOnlyUnpickler(f).load()
        model_args = params["model"]["args"]
        policy_kwargs = dict(model_args["net"]["args"])
        pi_head_kwargs = dict(model_args.get("pi_head_opts") or {})
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{path}: not a VPT .model file (expected a pickle of "
            f"{{'model': {{'args': {{'net': {{'args': ...}}, 'pi_head_opts': ...}}}}}}): {error}"
        ) from error
    if "temperature" in pi_head_kwargs:
        pi_head_kwargs["temperature"] = float(pi_head_kwargs["temperature"])
    return policy_kwargs, pi_head_kwargs
