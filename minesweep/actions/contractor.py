"""Contractor ``.jsonl`` recordings -> MineRL env actions.

One ``.jsonl`` line is one recorded step (mouse, keyboard, hotbar slot, ...). This module
reproduces what OpenAI's VPT data loader does with an episode: the per-step conversion
(``json_action_to_env_action``) plus its cross-step state (the attack-stuck fix and
hotbar tracking). Unlike the loader, null steps are kept and flagged in
``EnvActions.is_null`` so the caller decides whether to drop them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .space import BUTTONS, N_BUTTONS

__all__ = [
    "ContractorFormatError",
    "EnvActions",
    "MOUSE_COUNTS_TO_DEGREES",
    "KEYBOARD_BUTTON_MAPPING",
    "NUMBER_LIMITS",
    "check_number",
    "contractor_to_env",
    "read_jsonl",
    "read_jsonl_prefix",
]

#: Camera degrees per mouse count (the reference's CAMERA_SCALER; exactly the double 0.15).
MOUSE_COUNTS_TO_DEGREES = 360.0 / 2400.0

#: The 20 keyboard keys the reference maps; every other key is ignored.
#: ESC and swapHands are env keys outside BUTTONS: ESC is kept in ``EnvActions.esc``,
#: swapHands is dropped, but both still make a step non-null.
KEYBOARD_BUTTON_MAPPING: dict[str, str] = {
    "key.keyboard.escape": "ESC",
    "key.keyboard.s": "back",
    "key.keyboard.q": "drop",
    "key.keyboard.w": "forward",
    **{f"key.keyboard.{i}": f"hotbar.{i}" for i in range(1, 10)},
    "key.keyboard.e": "inventory",
    "key.keyboard.space": "jump",
    "key.keyboard.a": "left",
    "key.keyboard.d": "right",
    "key.keyboard.left.shift": "sneak",
    "key.keyboard.left.control": "sprint",
    "key.keyboard.f": "swapHands",
}

# Mouse buttons: 0 -> attack, 1 -> use, 2 -> pickItem (pickItem is not in BUTTONS).
_ATTACK_BUTTON, _USE_BUTTON, _PICK_ITEM_BUTTON = 0, 1, 2

_COL = {name: i for i, name in enumerate(BUTTONS)}
_ESC = -1  # pseudo-column for ESC
_NOT_KEPT = -2  # mapped key that is dropped from the output (swapHands)
_KEY_TO_COL: dict[str, int] = {
    key: _COL.get(name, _ESC if name == "ESC" else _NOT_KEPT) for key, name in KEYBOARD_BUTTON_MAPPING.items()
}


class ContractorFormatError(ValueError):
    """A contractor recording is malformed (missing key, bad JSON line, bad value).

    ``step``: how many steps before the bad one are fine (the episode's valid prefix), when known.
    """

    def __init__(self, message: str, step: int | None = None) -> None:
        super().__init__(message)
        self.step = step


@dataclass
class EnvActions:
    """Env actions of one episode, one row per recorded step (null steps included)."""

    buttons: np.ndarray  # (T, 20) uint8, BUTTONS order
    camera: np.ndarray  # (T, 2) float32 degrees [pitch, yaw]
    is_null: np.ndarray  # (T,) bool: the reference data loader would drop this step
    esc: np.ndarray  # (T,) bool: ESC pressed (not one of BUTTONS)

    def __len__(self) -> int:
        return int(self.buttons.shape[0])


_MISSING = object()


def _get(step: Mapping, dotted: str, source: str, index: int) -> Any:
    """``step["a"]["b"]`` for ``dotted="a.b"``, raising a ContractorFormatError that names it."""
    node: Any = step
    for part in dotted.split("."):
        value = node.get(part, _MISSING) if isinstance(node, Mapping) else _MISSING
        if value is _MISSING:
            raise ContractorFormatError(f"{source}: step {index}: missing key {dotted!r}", step=index)
        node = value
    return node


def _get_list(step: Mapping, dotted: str, source: str, index: int) -> list:
    value = _get(step, dotted, source, index)
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ContractorFormatError(
            f"{source}: step {index}: {dotted!r} must be a list, got {type(value).__name__}", step=index
        )
    return list(value)


#: Largest believable magnitude of each numeric field; beyond it a value is a recording glitch, not input, and
#: would become a garbage camera bin or cursor position. Python's json also accepts NaN and Infinity: rejected too.
#: ``mouse.dx/dy`` are mouse counts in one 50 ms step (2400 counts = 360 degrees): 10 000 is over four full
#: turns in a step, far beyond any human flick. ``mouse.x/y`` are GUI cursor pixels: 100 000 is beyond any
#: screen (an 8K display is 7680 wide).
NUMBER_LIMITS: dict[str, float] = {
    "mouse.dx": 10_000.0,
    "mouse.dy": 10_000.0,
    "mouse.x": 100_000.0,
    "mouse.y": 100_000.0,
}


def check_number(value: Any, dotted: str, source: str, index: int) -> float:
    """``value`` as a float if it is a finite number within ``NUMBER_LIMITS[dotted]``; else a
    ContractorFormatError naming ``source``, the step and the field (``step=index``: the steps before are valid)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractorFormatError(f"{source}: step {index}: {dotted!r} must be a number, got {value!r}", step=index)
    if isinstance(value, float) and not math.isfinite(value):
        raise ContractorFormatError(f"{source}: step {index}: {dotted!r} is {value!r}, not a finite number", step=index)
    limit = NUMBER_LIMITS.get(dotted, math.inf)
    if abs(value) > limit:  # compared before float(): a huge int would overflow
        shown = (
            f"{value:.6g}"
            if isinstance(value, float) or value.bit_length() < 64
            else f"an integer of {value.bit_length()} bits"
        )  # str() of a huge int can itself fail
        raise ContractorFormatError(
            f"{source}: step {index}: {dotted!r} is {shown}, out of range (|{dotted}| <= {limit:g})", step=index
        )
    return float(value)


def _get_number(step: Mapping, dotted: str, source: str, index: int) -> float:
    return check_number(_get(step, dotted, source, index), dotted, source, index)


def contractor_to_env(
    steps: Sequence[Mapping],
    *,
    legacy_vpt_camera: bool = False,
    source: str = "<jsonl>",
) -> EnvActions:
    """Convert one episode of contractor steps to env actions, with the loader's rules.

    Per step: mapped keys set their button (other keys are ignored); mouse buttons 0/1/2
    are attack/use/pickItem (pickItem is dropped from the output but, like any mapped
    input, makes the step non-null); the camera is ``[dy, dx] * 0.15`` degrees. A step
    is null when no mapped key or mouse button is held and ``dx == dy == 0``.

    Across steps (the reference ``data_loader`` worker):

    * attack-stuck fix: if step 0 has ``mouse.newButtons == [0]`` exactly, button 0 is
      removed from ``mouse.buttons`` until a later step whose ``newButtons`` contains 0
      (that step keeps its attack);
    * hotbar: when the ``hotbar`` field (0-based) differs from the previous step's, with
      the previous value starting at 0, ``hotbar.{hotbar+1}`` is set. This does not
      change ``is_null``.

    ``legacy_vpt_camera=True`` truncates the camera toward zero to whole degrees, as the
    reference does by writing into an int64 array (so ``dx=1`` is a non-null step with
    camera 0). The default keeps the exact float degrees. Neither clips nor wraps.

    Raises ContractorFormatError naming ``source``, the step index and the dotted key.
    """
    n = len(steps)
    buttons = np.zeros((n, N_BUTTONS), dtype=np.uint8)
    esc = np.zeros(n, dtype=bool)
    is_null = np.ones(n, dtype=bool)
    mouse_dxdy = np.zeros((n, 2), dtype=np.float64)

    attack_is_stuck = False
    last_hotbar = 0
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            raise ContractorFormatError(
                f"{source}: step {i}: expected a JSON object, got {type(step).__name__}", step=i
            )
        # The reference reads newButtons only at step 0 and while stuck; so do we.
        if i == 0:
            attack_is_stuck = _get_list(step, "mouse.newButtons", source, i) == [_ATTACK_BUTTON]
        elif attack_is_stuck:
            if _ATTACK_BUTTON in _get_list(step, "mouse.newButtons", source, i):
                attack_is_stuck = False
        mouse_buttons = _get_list(step, "mouse.buttons", source, i)
        if attack_is_stuck:
            mouse_buttons = [b for b in mouse_buttons if b != _ATTACK_BUTTON]

        null = True
        for key in _get_list(step, "keyboard.keys", source, i):
            col = _KEY_TO_COL.get(key) if isinstance(key, str) else None
            if col is None:
                continue  # unmapped keys (f3, tab, t, ...) do not count
            null = False
            if col == _ESC:
                esc[i] = True
            elif col >= 0:
                buttons[i, col] = 1

        dx = _get_number(step, "mouse.dx", source, i)
        dy = _get_number(step, "mouse.dy", source, i)
        mouse_dxdy[i] = (dy, dx)  # [pitch, yaw]
        if dx != 0 or dy != 0:
            null = False

        if _ATTACK_BUTTON in mouse_buttons:
            buttons[i, _COL["attack"]] = 1
            null = False
        if _USE_BUTTON in mouse_buttons:
            buttons[i, _COL["use"]] = 1
            null = False
        if _PICK_ITEM_BUTTON in mouse_buttons:
            null = False
        is_null[i] = null

        hotbar = _get(step, "hotbar", source, i)
        if isinstance(hotbar, bool) or not isinstance(hotbar, int) or not 0 <= hotbar <= 8:
            raise ContractorFormatError(
                f"{source}: step {i}: 'hotbar' must be an integer slot in 0..8, got {hotbar!r}", step=i
            )
        if hotbar != last_hotbar:
            buttons[i, _COL[f"hotbar.{hotbar + 1}"]] = 1
        last_hotbar = hotbar

    camera = mouse_dxdy * MOUSE_COUNTS_TO_DEGREES  # float64, like the reference's products
    if legacy_vpt_camera:
        camera = np.trunc(camera)  # int64 assignment in the reference truncates toward zero
    return EnvActions(buttons=buttons, camera=camera.astype(np.float32), is_null=is_null, esc=esc)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a contractor ``.jsonl`` file: one JSON object per line; blank lines are skipped."""
    steps, error = read_jsonl_prefix(path)
    if error is not None:
        raise error
    return steps


def read_jsonl_prefix(path: str | os.PathLike) -> tuple[list[dict], ContractorFormatError | None]:
    """The steps of a ``.jsonl`` up to its first bad line, and the error for that line (None if all are good)."""
    steps: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                message = f"{os.fspath(path)}: line {lineno}: invalid JSON ({err.msg} at column {err.colno})"
                return steps, ContractorFormatError(message, step=len(steps))
            if not isinstance(obj, dict):
                message = f"{os.fspath(path)}: line {lineno}: expected a JSON object, got {type(obj).__name__}"
                return steps, ContractorFormatError(message, step=len(steps))
            steps.append(obj)
    return steps, None
