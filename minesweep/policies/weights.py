"""Loading policy weights: reference state dicts and our own Lightning checkpoints, strictly."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

#: Where MineLightning keeps the policy inside a Lightning checkpoint's state dict.
CHECKPOINT_PREFIX = "mine_policy."
#: Where a checkpoint saved with an EMA (minesweep.ema, Lightning's WeightAveraging) keeps the trained weights; its
#: ``state_dict`` then holds the EMA weights.
TRAINED_WEIGHTS_KEY = "current_model_state"


def read_policy_state_dict(path: str | Path, trained: bool = False) -> dict[str, torch.Tensor]:
    """A policy state dict from ``path``: a plain state dict (e.g. VPT's ``.weights``) or a
    minesweep Lightning checkpoint (``.ckpt``). Loaded with ``weights_only=True``: data, never code.
    A checkpoint saved with an EMA gives its EMA weights, or with ``trained=True`` the trained ones."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"policy weights: no file at {path}")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused or not a torch file
        raise ValueError(f"policy weights: cannot read {path} as a tensor-only torch file: {error}") from error
    if not isinstance(loaded, Mapping):
        raise ValueError(f"policy weights: {path} holds a {type(loaded).__name__}, not a state dict")
    if "state_dict" in loaded and isinstance(loaded["state_dict"], Mapping):
        inner = loaded["state_dict"]
        if trained and isinstance(loaded.get(TRAINED_WEIGHTS_KEY), Mapping):
            inner = loaded[TRAINED_WEIGHTS_KEY]
        policy_keys = {k[len(CHECKPOINT_PREFIX) :]: v for k, v in inner.items() if k.startswith(CHECKPOINT_PREFIX)}
        if not policy_keys:
            raise ValueError(f"policy weights: checkpoint {path} has no '{CHECKPOINT_PREFIX}*' entries")
        return policy_keys
    return dict(loaded)


def load_policy_weights(
    policy: nn.Module, weights: str | Path | Mapping[str, torch.Tensor], source: str | Path | None = None
) -> None:
    """Strictly load: every key present, none extra, every shape equal; the error names each offender and
    ``source`` (default: ``weights`` when it is a path)."""
    source = source or (weights if not isinstance(weights, Mapping) else "<state dict>")
    state_dict = read_policy_state_dict(weights) if not isinstance(weights, Mapping) else weights
    own = policy.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected))
    if mismatched:
        problems.append("shape mismatches: " + "; ".join(mismatched))
    if problems:
        raise ValueError(f"cannot load weights from {source} into policy:\n  " + "\n  ".join(problems))
    policy.load_state_dict(state_dict, strict=True)
