"""The VPT (Video Pre-Training) Minecraft action space.

Three representations of one action:

* **env action**: 20 factored buttons (0/1, in :data:`BUTTONS` order) and a camera
  move ``[pitch, yaw]`` in degrees, as the MineRL env takes it.
* **factored action**: the same buttons and the camera quantised to two mu-law bins
  ``[pitch_bin, yaw_bin]`` in ``0..10`` (bin 5 = no movement).
* **agent action**: two integers, the joint buttons index (``0..8640``) and the joint
  camera index (``0..120``), which the policy heads predict.

Everything here reproduces OpenAI's VPT reference (``lib/actions.py`` and
``lib/action_mapping.py``) bit for bit, including its quirks; the comments say where.
All functions are vectorised over any leading batch shape ``...``. Torch tensors are
accepted (converted to numpy) but the results are always numpy arrays.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "BUTTONS",
    "N_BUTTONS",
    "N_BUTTON_COMBINATIONS",
    "INVENTORY_INDEX",
    "NULL_BUTTONS_INDEX",
    "N_CAMERA_BINS",
    "N_CAMERA_INDICES",
    "CAMERA_NULL_BIN",
    "CAMERA_NULL_INDEX",
    "CAMERA_MAXVAL",
    "CAMERA_BINSIZE",
    "CAMERA_MU",
    "BUTTON_INDEX_TO_FACTORED",
    "BUTTON_INDEX_CAMERA_META_OFF",
    "CAMERA_INDEX_TO_BINS",
    "camera_to_bins",
    "bins_to_camera",
    "env_to_agent",
    "agent_to_env",
]

# --------------------------------------------------------------------------- constants

#: The factored buttons, in the reference ``Buttons.ALL`` order.
BUTTONS: tuple[str, ...] = (
    "attack",
    "back",
    "forward",
    "jump",
    "left",
    "right",
    "sneak",
    "sprint",
    "use",
    "drop",
    "inventory",
    *(f"hotbar.{i}" for i in range(1, 10)),
)
N_BUTTONS = 20

CAMERA_MAXVAL = 10  # degrees; larger moves are clipped before quantisation
CAMERA_BINSIZE = 2
CAMERA_MU = 10
N_CAMERA_BINS = 11  # per axis: (2 * maxval) / binsize + 1
N_CAMERA_INDICES = N_CAMERA_BINS * N_CAMERA_BINS
CAMERA_NULL_BIN = N_CAMERA_BINS // 2
CAMERA_NULL_INDEX = CAMERA_NULL_BIN * N_CAMERA_BINS + CAMERA_NULL_BIN

# Sizes of the groups of the joint buttons index, slowest-varying first:
# hotbar, fore_back, left_right, sprint_sneak, use, drop, attack, jump, camera-meta.
_GROUP_SIZES = (10, 3, 3, 3, 2, 2, 2, 2, 2)
N_BUTTON_COMBINATIONS = int(np.prod(_GROUP_SIZES)) + 1  # + the lone "inventory" action
INVENTORY_INDEX = N_BUTTON_COMBINATIONS - 1
NULL_BUTTONS_INDEX = 0

_B = {name: i for i, name in enumerate(BUTTONS)}
_HOTBAR_COLS = np.arange(_B["hotbar.1"], _B["hotbar.9"] + 1)

# --------------------------------------------------------------------------- helpers


def _as_numpy(x: Any) -> np.ndarray:
    """numpy view of ``x``; torch tensors are moved to CPU without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_last_dim(x: np.ndarray, n: int, name: str) -> None:
    if x.ndim == 0 or x.shape[-1] != n:
        raise ValueError(f"{name}: expected shape (..., {n}), got {x.shape}")


def _check_range(x: np.ndarray, hi: int, name: str) -> np.ndarray:
    """Integer array in ``[0, hi)``; numpy would otherwise wrap negative indices silently."""
    if x.dtype.kind not in "iub":
        if x.size and not np.all(np.mod(x, 1) == 0):
            raise ValueError(f"{name}: expected integer indices, got dtype {x.dtype}")
    x = x.astype(np.int64)
    if x.size and (x.min() < 0 or x.max() >= hi):
        raise ValueError(f"{name}: indices must be in [0, {hi - 1}], got [{x.min()}, {x.max()}]")
    return x


# --------------------------------------------------------------------------- camera


def camera_to_bins(camera_deg: Any) -> np.ndarray:
    """Mu-law quantise camera degrees ``(..., 2)`` (or any shape) to bins ``0..10``, int64.

    float64 throughout and ``np.round`` (half to even), with the reference's order of
    operations. Exactly at a half-bin boundary the bin depends on the last bit of
    ``np.log``, i.e. on the numpy build and CPU: the VPT golden data (numpy 1.26, whose
    AVX-512 log is 1 ulp low at 3.3166247903554) has -2.3166247903554 -> 3, while a
    correctly rounded log (numpy 2.x here) gives 2. Only such exact-boundary inputs differ.
    """
    x = _as_numpy(camera_deg).astype(np.float64)
    x = np.clip(x, -CAMERA_MAXVAL, CAMERA_MAXVAL) / CAMERA_MAXVAL
    v = np.sign(x) * np.log(1.0 + CAMERA_MU * np.abs(x)) / np.log(1.0 + CAMERA_MU)
    v = v * CAMERA_MAXVAL
    return np.round((v + CAMERA_MAXVAL) / CAMERA_BINSIZE).astype(np.int64)


def bins_to_camera(bins: Any) -> np.ndarray:
    """Inverse of :func:`camera_to_bins`: bins -> bin-centre degrees, float64."""
    b = _as_numpy(bins)
    v = (b * CAMERA_BINSIZE - CAMERA_MAXVAL) / CAMERA_MAXVAL
    x = np.sign(v) * (1.0 / CAMERA_MU) * ((1.0 + CAMERA_MU) ** np.abs(v) - 1.0)
    return (x * CAMERA_MAXVAL).astype(np.float64)


# --------------------------------------------------------------------------- lookup tables


def _build_button_table() -> tuple[np.ndarray, np.ndarray]:
    """Decode every joint buttons index into factored buttons, by mixed-radix digits."""
    idx = np.arange(INVENTORY_INDEX)
    digits = []
    for size in reversed(_GROUP_SIZES):  # the last group varies fastest
        digits.append(idx % size)
        idx = idx // size
    cam_on, jump, attack, drop, use, ss, lr, fb, hotbar = digits

    table = np.zeros((N_BUTTON_COMBINATIONS, N_BUTTONS), dtype=np.int8)
    table[:-1, _B["forward"]] = fb == 1
    table[:-1, _B["back"]] = fb == 2
    table[:-1, _B["left"]] = lr == 1
    table[:-1, _B["right"]] = lr == 2
    table[:-1, _B["sprint"]] = ss == 1
    table[:-1, _B["sneak"]] = ss == 2
    table[:-1, _B["use"]] = use
    table[:-1, _B["drop"]] = drop
    table[:-1, _B["attack"]] = attack
    table[:-1, _B["jump"]] = jump
    rows = np.nonzero(hotbar)[0]
    table[rows, _HOTBAR_COLS[hotbar[rows] - 1]] = 1
    table[INVENTORY_INDEX, _B["inventory"]] = 1

    # Camera meta "none" forces the camera to null. The inventory action has no camera
    # group, and the reference leaves it False there: (8640, cam) keeps its camera.
    meta_off = np.zeros(N_BUTTON_COMBINATIONS, dtype=bool)
    meta_off[:-1] = cam_on == 0
    return table, meta_off


#: Factored buttons (BUTTONS order) of each joint buttons index, int8 (8641, 20).
#: BUTTON_INDEX_CAMERA_META_OFF: True where agent->env forces the camera to null, (8641,).
BUTTON_INDEX_TO_FACTORED, BUTTON_INDEX_CAMERA_META_OFF = _build_button_table()
#: ``[pitch_bin, yaw_bin]`` of each joint camera index, int8 (121, 2). Pitch is major.
CAMERA_INDEX_TO_BINS = np.stack(np.divmod(np.arange(N_CAMERA_INDICES), N_CAMERA_BINS), axis=-1).astype(np.int8)
for _t in (BUTTON_INDEX_TO_FACTORED, BUTTON_INDEX_CAMERA_META_OFF, CAMERA_INDEX_TO_BINS):
    _t.flags.writeable = False  # shared module-level tables


# --------------------------------------------------------------------------- conversions


def _pair_choice(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Group ``[none, first, second]`` where pressing both cancels out (forward/back, left/right)."""
    return np.where(first & second, 0, np.where(first, 1, np.where(second, 2, 0)))


def env_to_agent(buttons: Any, camera: Any) -> tuple[np.ndarray, np.ndarray]:
    """Env action -> agent action ``(buttons_index, camera_index)``, int64 arrays of shape ``(...)``.

    ``buttons``: ``(..., 20)``, nonzero = pressed, in :data:`BUTTONS` order.
    ``camera``: ``(..., 2)`` degrees ``[pitch, yaw]``.

    Reference rules: forward+back and left+right cancel to none; sprint+sneak gives
    sneak and several hotbar keys give the highest slot (the later group member wins);
    the camera meta flag is on iff the bins are not (5, 5); ``inventory`` overrides
    everything, giving ``(8640, 60)``.
    """
    b = _as_numpy(buttons) != 0
    _check_last_dim(b, N_BUTTONS, "buttons")
    bins = camera_to_bins(camera)
    _check_last_dim(bins, 2, "camera")
    if b.shape[:-1] != bins.shape[:-1]:
        raise ValueError(f"batch shapes differ: buttons {b.shape}, camera {bins.shape}")

    hotbar = np.max(b[..., _HOTBAR_COLS] * np.arange(1, 10), axis=-1)  # highest slot, 0 = none
    fb = _pair_choice(b[..., _B["forward"]], b[..., _B["back"]])
    lr = _pair_choice(b[..., _B["left"]], b[..., _B["right"]])
    ss = np.where(b[..., _B["sneak"]], 2, np.where(b[..., _B["sprint"]], 1, 0))
    cam_on = np.any(bins != CAMERA_NULL_BIN, axis=-1)

    idx = hotbar.astype(np.int64)
    for digit, size in (
        (fb, 3),
        (lr, 3),
        (ss, 3),
        (b[..., _B["use"]], 2),
        (b[..., _B["drop"]], 2),
        (b[..., _B["attack"]], 2),
        (b[..., _B["jump"]], 2),
        (cam_on, 2),
    ):
        idx = idx * size + digit
    cam_idx = bins[..., 0] * N_CAMERA_BINS + bins[..., 1]

    inventory = b[..., _B["inventory"]]
    idx = np.where(inventory, INVENTORY_INDEX, idx).astype(np.int64)
    cam_idx = np.where(inventory, CAMERA_NULL_INDEX, cam_idx).astype(np.int64)
    return idx, cam_idx


def agent_to_env(buttons_index: Any, camera_index: Any) -> tuple[np.ndarray, np.ndarray]:
    """Agent action -> env action: ``(buttons (..., 20) uint8, camera (..., 2) float64 degrees)``.

    Even buttons indices (camera meta "none") force the camera to null whatever the
    camera index; the inventory index 8640 does not (reference behaviour).
    """
    bidx = _check_range(_as_numpy(buttons_index), N_BUTTON_COMBINATIONS, "buttons_index")
    cidx = _check_range(_as_numpy(camera_index), N_CAMERA_INDICES, "camera_index")
    bidx, cidx = np.broadcast_arrays(bidx, cidx)
    cidx = np.where(BUTTON_INDEX_CAMERA_META_OFF[bidx], CAMERA_NULL_INDEX, cidx)
    buttons = BUTTON_INDEX_TO_FACTORED[bidx].astype(np.uint8)
    camera = bins_to_camera(CAMERA_INDEX_TO_BINS[cidx].astype(np.int64))
    return buttons, camera
