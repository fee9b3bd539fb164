"""The GUI mouse cursor, drawn onto contractor frames while a GUI (inventory, crafting table, ...) is open.

The recorder does not capture the OS cursor, so in GUI frames the player's pointer is invisible. OpenAI's VPT data
loader (``data_loader.py``, openai/Video-Pre-Training @ 095519f) therefore composites a cursor sprite onto every
frame whose step has ``isGuiOpen``; models trained on VPT data expect it. Its semantics, reproduced here:

* it works on the ORIGINAL frame (640x360), before the resize to the training resolution;
* position: ``int(mouse.x * H / 720)``, ``int(mouse.y * H / 720)`` with ``H`` the frame height (the recorder's
  mouse coordinates are in a 720-pixel-high GUI space); ``int`` truncates toward zero. The position is the
  sprite's top-left corner, which is the arrow's tip;
* the sprite is 16x16 RGBA; ``alpha = A / 255.0`` (float64) and each covered pixel becomes
  ``(frame * (1 - alpha) + sprite * alpha).astype(uint8)``, i.e. truncated, not rounded;
* the sprite is clipped at the right and bottom borders.

Differences, on purpose:

* the reference reads its sprite from ``cursors/mouse_cursor_white_16x16.png`` (the top-left 16x16 of that image),
  which we cannot ship; :func:`cursor_sprite` draws an equivalent one in code: a white arrow with a 1-pixel black
  outline, tip at (0, 0), opaque (alpha 255) on the arrow and transparent (alpha 0) elsewhere. Pass ``sprite=``
  to use another (for instance the real png, loaded by the caller);
* the reference blends in BGR (OpenCV frames) and converts to RGB afterwards; the blend is per channel, so
  blending an RGB sprite onto RGB frames gives the same bytes. Our frames are RGB;
* a negative position (the reference's Python slicing would wrap it to the opposite border or fail) is clipped at
  the left and top borders like at the others: the visible part of the sprite is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np

from minesweep.actions.contractor import ContractorFormatError, check_number

__all__ = ["CURSOR_SIZE", "MINEREC_ORIGINAL_HEIGHT", "cursor_sprite", "draw_cursor", "cursor_inputs"]

CURSOR_SIZE = 16
MINEREC_ORIGINAL_HEIGHT = 720  # height of the recorder's GUI coordinate space (mouse.x / mouse.y)

# Our own 16x16 arrow: '#' black outline, 'o' white fill, '.' transparent. Tip at the top-left corner.
_ARROW = (
    "#...............",
    "##..............",
    "#o#.............",
    "#oo#............",
    "#ooo#...........",
    "#oooo#..........",
    "#ooooo#.........",
    "#oooooo#........",
    "#ooooooo#.......",
    "#oooooooo#......",
    "#ooooo#####.....",
    "#oo#oo#.........",
    "#o#.#oo#........",
    "##..#oo#........",
    "#....#oo#.......",
    ".....####.......",
)


def _make_sprite() -> np.ndarray:
    sprite = np.zeros((CURSOR_SIZE, CURSOR_SIZE, 4), np.uint8)
    rows = np.array([list(r) for r in _ARROW])
    sprite[rows == "o"] = (255, 255, 255, 255)
    sprite[rows == "#"] = (0, 0, 0, 255)
    sprite.flags.writeable = False
    return sprite


_SPRITE = _make_sprite()


def cursor_sprite() -> np.ndarray:
    """The default cursor: uint8 RGBA ``(16, 16, 4)`` (read-only)."""
    return _SPRITE


def draw_cursor(
    frames: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    gui_open: np.ndarray,
    *,
    original_height: int = MINEREC_ORIGINAL_HEIGHT,
    sprite: np.ndarray | None = None,
) -> None:
    """Composite the cursor onto ``frames`` (uint8 RGB ``(N, H, W, 3)``, modified in place) where ``gui_open``.

    ``x``, ``y``: the steps' ``mouse.x`` / ``mouse.y`` (``(N,)``, in a space ``original_height`` pixels high).
    ``sprite``: uint8 RGBA ``(h, w, 4)``, default :func:`cursor_sprite`. All frames are done in one vectorised
    gather/blend/scatter.
    """
    frames_arr = frames
    if (
        not isinstance(frames_arr, np.ndarray)
        or frames_arr.dtype != np.uint8
        or frames_arr.ndim != 4
        or frames_arr.shape[-1] != 3
    ):
        raise ValueError(
            f"frames must be a uint8 numpy array (N, H, W, 3), got "
            f"{getattr(frames_arr, 'dtype', type(frames_arr))}{list(np.shape(frames_arr))}"
        )
    n, height, width, _ = frames_arr.shape
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    gui_open = np.asarray(gui_open)
    for name, arr in (("x", x), ("y", y), ("gui_open", gui_open)):
        if arr.shape != (n,):
            raise ValueError(f"{name} has shape {arr.shape}, expected ({n},) like the frames")
    if gui_open.dtype != np.bool_:
        raise ValueError(f"gui_open must be a bool array, got {gui_open.dtype}")
    if original_height <= 0:
        raise ValueError(f"original_height must be positive, got {original_height}")
    sprite = _SPRITE if sprite is None else np.asarray(sprite)
    if sprite.dtype != np.uint8 or sprite.ndim != 3 or sprite.shape[2] != 4:
        raise ValueError(f"sprite must be uint8 RGBA (h, w, 4), got {sprite.dtype}{list(sprite.shape)}")

    idx = np.flatnonzero(gui_open)
    if idx.size == 0:
        return
    if not (np.isfinite(x[idx]).all() and np.isfinite(y[idx]).all()):
        bad = idx[~(np.isfinite(x[idx]) & np.isfinite(y[idx]))][0]
        raise ValueError(f"frame {bad}: cursor position ({x[bad]}, {y[bad]}) is not finite")

    scale = height / original_height  # the reference computes the factor first, then multiplies
    left = np.trunc(x[idx] * scale).astype(np.int64)  # int(): truncation toward zero
    top = np.trunc(y[idx] * scale).astype(np.int64)
    sh, sw = sprite.shape[:2]
    rows = top[:, None] + np.arange(sh)  # (k, sh)
    cols = left[:, None] + np.arange(sw)  # (k, sw)
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]  # (k, sh, sw)
    k_i, r_i, c_i = np.nonzero(inside)
    if k_i.size == 0:
        return
    f_i, fr, fc = idx[k_i], rows[k_i, r_i], cols[k_i, c_i]
    alpha = sprite[r_i, c_i, 3:] / 255.0  # float64, like the reference
    under = frames_arr[f_i, fr, fc]  # (m, 3) gathered pixels
    # Same expression and dtypes as the reference, so the truncation gives the same bytes.
    frames_arr[f_i, fr, fc] = (under * (1 - alpha) + sprite[r_i, c_i, :3] * alpha).astype(np.uint8)


def _number(step: Mapping, key: str, index: int, source: str) -> float:
    mouse = step.get("mouse")
    if not isinstance(mouse, Mapping):
        raise ContractorFormatError(f"{source}: step {index}: missing key 'mouse'", step=index)
    if key not in mouse:
        raise ContractorFormatError(f"{source}: step {index}: missing key 'mouse.{key}'", step=index)
    return check_number(mouse[key], f"mouse.{key}", source, index)  # finite and in range


def cursor_inputs(
    steps: Sequence[Mapping], source: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, gui_open)`` arrays (float64, float64, bool; ``(T,)``) from contractor steps, as read by
    :func:`minesweep.actions.contractor.read_jsonl`.

    Every step must have ``isGuiOpen`` (a bool) and ``mouse.x`` / ``mouse.y`` (numbers); otherwise a
    :class:`ContractorFormatError` names the file (``source``), the step index and the key.
    """
    where = "<jsonl>" if source is None else os.fspath(source)
    n = len(steps)
    x = np.zeros(n, np.float64)
    y = np.zeros(n, np.float64)
    gui = np.zeros(n, bool)
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping):
            raise ContractorFormatError(f"{where}: step {i}: expected a JSON object, got {type(step).__name__}", step=i)
        if "isGuiOpen" not in step:
            raise ContractorFormatError(f"{where}: step {i}: missing key 'isGuiOpen'", step=i)
        flag = step["isGuiOpen"]
        if not isinstance(flag, bool):
            raise ContractorFormatError(f"{where}: step {i}: 'isGuiOpen' must be true or false, got {flag!r}", step=i)
        gui[i] = flag
        x[i] = _number(step, "x", i, where)
        y[i] = _number(step, "y", i, where)
    return x, y, gui
