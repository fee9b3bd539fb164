"""The segmentation modality: per frame, the mask of the object the player will interact with.

A recording ``NAME.mp4`` + ``NAME.jsonl`` may carry a third file, ``NAME.segmentation.npz`` (the *sidecar*), with
one entry per frame::

    mask         bool  (T, H, W)  pixels of the object (H, W: the recording's resolution)
    object_id    int32 (T,)       which object (stable within an episode), -1 where none
    interaction  int8  (T,)       index into INTERACTION_TYPES of what is done with it, -1 where none
    valid        bool  (T,)       False for frames that have no segmentation (object not visible, unlabelled)

This is what ROCKET-style policies are conditioned on. Labels are hindsight labels: a frame's object is the one the
player interacts with next, and ``interaction`` says how. Where ``valid`` is False the mask is empty and the ids
are -1 (enforced by :func:`check_segmentation`). Ingest resizes the masks to the store resolution
(``minesweep.data.ingest.resize.resize_masks``); the store keeps them beside the video (``segmentation/<id>.npz``,
same keys).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = [
    "INTERACTION_TYPES",
    "SIDECAR_SUFFIX",
    "SegmentationError",
    "check_segmentation",
    "read_sidecar",
    "write_segmentation",
    "sidecar_path",
    "empty_segmentation",
]

#: Interaction types, in index order (``interaction`` values; -1 = none).
INTERACTION_TYPES: tuple[str, ...] = ("approach", "mine", "hunt", "use", "craft", "switch")
SIDECAR_SUFFIX = ".segmentation.npz"
KEYS = {"mask": np.bool_, "object_id": np.int32, "interaction": np.int8, "valid": np.bool_}


class SegmentationError(ValueError):
    """A segmentation file or array is malformed; the message names the source and the key."""


def sidecar_path(mp4: str | Path) -> Path:
    """``dir/NAME.mp4`` -> ``dir/NAME.segmentation.npz``."""
    mp4 = Path(mp4)
    return mp4.with_name(mp4.stem + SIDECAR_SUFFIX)


def check_segmentation(seg: Mapping[str, np.ndarray], source: str, length: int | None = None) -> dict[str, np.ndarray]:
    """Validated copies with the canonical dtypes; frames marked invalid get an empty mask and ids -1.

    ``source`` (a file or an episode id) and the offending key are named in every error.
    """
    missing = [k for k in KEYS if k not in seg]
    if missing:
        raise SegmentationError(f"{source}: segmentation lacks {missing} (needs {sorted(KEYS)})")
    out = {}
    for key, dtype in KEYS.items():
        value = np.asarray(seg[key])
        if key in ("object_id", "interaction") and not np.issubdtype(value.dtype, np.integer):
            raise SegmentationError(f"{source}: segmentation {key!r} must be integers, got {value.dtype}")
        out[key] = value.astype(dtype, copy=True)
    if out["mask"].ndim != 3:
        raise SegmentationError(f"{source}: segmentation 'mask' must be (T, H, W), got shape {out['mask'].shape}")
    lengths = {k: len(v) if v.ndim else None for k, v in out.items()}
    for key in ("object_id", "interaction", "valid"):
        if out[key].ndim != 1:
            raise SegmentationError(f"{source}: segmentation {key!r} must be (T,), got shape {out[key].shape}")
    if len(set(lengths.values())) != 1:
        raise SegmentationError(f"{source}: segmentation arrays have different lengths {lengths}")
    if length is not None and lengths["mask"] != length:
        raise SegmentationError(f"{source}: segmentation has {lengths['mask']} frames, the episode has {length}")
    bad = (out["interaction"] < -1) | (out["interaction"] >= len(INTERACTION_TYPES))
    if bad.any():
        frame = int(np.argmax(bad))
        raise SegmentationError(
            f"{source}: segmentation 'interaction' at frame {frame} is {out['interaction'][frame]}"
            f", not in -1..{len(INTERACTION_TYPES) - 1}"
        )
    invalid = ~out["valid"]
    out["mask"][invalid] = False
    out["object_id"][invalid] = -1
    out["interaction"][invalid] = -1
    return out


def read_sidecar(path: str | Path, length: int | None = None) -> dict[str, np.ndarray]:
    """Read and validate a ``NAME.segmentation.npz``; errors name the file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            seg = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise SegmentationError(f"{path}: unreadable segmentation file: {err}") from err
    return check_segmentation(seg, str(path), length)


def write_segmentation(path: str | Path, seg: Mapping[str, np.ndarray]) -> None:
    """Write validated arrays, compressed (masks are mostly empty)."""
    np.savez_compressed(path, **check_segmentation(seg, str(path)))


def empty_segmentation(length: int, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """``length`` frames without segmentation."""
    h, w = size
    return {
        "mask": np.zeros((length, h, w), np.bool_),
        "object_id": np.full(length, -1, np.int32),
        "interaction": np.full(length, -1, np.int8),
        "valid": np.zeros(length, np.bool_),
    }
