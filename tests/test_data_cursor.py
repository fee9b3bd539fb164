"""GUI cursor compositing (minesweep.data.ingest.cursor): sprite, position scaling, clipping, blend arithmetic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minesweep.actions.contractor import ContractorFormatError, read_jsonl
from minesweep.data.ingest.cursor import CURSOR_SIZE, cursor_inputs, cursor_sprite, draw_cursor


def _frames(n: int = 3, h: int = 360, w: int = 640, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _loop_reference(frame: np.ndarray, sprite: np.ndarray, left: int, top: int) -> None:
    """Per-pixel transcription of the documented rule (float64 alpha, truncating cast, clip at every border)."""
    for r in range(sprite.shape[0]):
        for c in range(sprite.shape[1]):
            fr, fc = top + r, left + c
            if 0 <= fr < frame.shape[0] and 0 <= fc < frame.shape[1]:
                a = sprite[r, c, 3] / 255.0
                for ch in range(3):
                    frame[fr, fc, ch] = np.uint8(float(frame[fr, fc, ch]) * (1 - a) + float(sprite[r, c, ch]) * a)


def test_sprite_is_white_arrow_with_black_outline_and_alpha() -> None:
    sprite = cursor_sprite()
    assert sprite.shape == (CURSOR_SIZE, CURSOR_SIZE, 4) and sprite.dtype == np.uint8
    assert not sprite.flags.writeable
    alpha, rgb = sprite[..., 3], sprite[..., :3]
    assert set(np.unique(alpha)) == {0, 255}
    opaque = alpha == 255
    assert opaque[0, 0], "the tip (hotspot) is the top-left pixel"
    assert not opaque[0, 15] and not opaque[15, 15], "the right and bottom corners are transparent"
    assert (rgb[~opaque] == 0).all()
    white = opaque & (rgb == 255).all(-1)
    black = opaque & (rgb == 0).all(-1)
    assert (white | black == opaque).all(), "only white and black opaque pixels"
    assert white.sum() > 30 and black.sum() > 20
    # The outline: every white pixel's 4 neighbours are opaque (white fill never touches transparency).
    padded = np.pad(opaque, 1)
    for r, c in zip(*np.nonzero(white), strict=False):
        assert padded[r, c + 1] and padded[r + 2, c + 1] and padded[r + 1, c] and padded[r + 1, c + 2]


def test_position_is_scaled_from_720_and_truncated() -> None:
    frames = np.zeros((2, 360, 640, 3), np.uint8)
    # 101 * 0.5 = 50.5 -> 50; 203 * 0.5 = 101.5 -> 101. Frame 1: 99.9 * 0.5 = 49.95 -> 49.
    draw_cursor(frames, np.array([101.0, 99.9]), np.array([203.0, 203.0]), np.array([True, True]))
    # White pixels of the sprite land exactly where expected (black ones are invisible on a black frame).
    white = np.zeros((360, 640), bool)
    white[101:117, 50:66] = (cursor_sprite()[..., :3] == 255).all(-1)
    assert ((frames[0] == 255).all(-1) == white).all()
    white1 = np.zeros((360, 640), bool)
    white1[101:117, 49:65] = (cursor_sprite()[..., :3] == 255).all(-1)
    assert ((frames[1] == 255).all(-1) == white1).all()
    # Another frame height: 720-high frames use the coordinates as they are.
    big = np.zeros((1, 720, 1280, 3), np.uint8)
    draw_cursor(big, np.array([101.0]), np.array([203.0]), np.array([True]))
    white2 = np.zeros((720, 1280), bool)
    white2[203:219, 101:117] = (cursor_sprite()[..., :3] == 255).all(-1)
    assert ((big[0] == 255).all(-1) == white2).all()


def test_original_height_parameter() -> None:
    frames = np.zeros((1, 360, 640, 3), np.uint8)
    draw_cursor(frames, np.array([100.0]), np.array([40.0]), np.array([True]), original_height=360)
    ys, xs = np.nonzero((frames[0] == 255).all(-1))
    white = np.argwhere((cursor_sprite()[..., :3] == 255).all(-1))
    assert ys.min() == 40 + white[:, 0].min() and xs.min() == 100 + white[:, 1].min()


def test_no_change_when_gui_closed() -> None:
    frames = _frames()
    before = frames.copy()
    draw_cursor(frames, np.array([100.0, 200.0, 300.0]), np.array([100.0, 200.0, 300.0]), np.zeros(3, bool))
    assert np.array_equal(frames, before)
    draw_cursor(
        frames, np.array([100.0, 200.0, 300.0]), np.array([100.0, 200.0, 300.0]), np.array([False, True, False])
    )
    assert np.array_equal(frames[[0, 2]], before[[0, 2]])
    assert not np.array_equal(frames[1], before[1])
    changed = np.argwhere((frames[1] != before[1]).any(-1))
    assert changed.min(0).tolist() >= [100, 100] and changed.max(0).tolist() <= [115, 115]


@pytest.mark.parametrize(
    "x, y",
    [(1270.0, 700.0), (-10.0, 100.0), (100.0, -13.0), (-30.0, -30.0), (1300.0, 10.0), (1279.0, 719.0), (5.5, 7.9)],
)
def test_matches_per_pixel_rule_with_clipping(x: float, y: float) -> None:
    rng = np.random.default_rng(1)
    sprite = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)  # fractional alphas exercise the truncation
    frames = _frames(2, seed=2)
    expected = frames.copy()
    _loop_reference(expected[1], sprite, int(x * 0.5), int(y * 0.5))
    draw_cursor(frames, np.array([0.0, x]), np.array([0.0, y]), np.array([False, True]), sprite=sprite)
    assert np.array_equal(frames, expected)


def test_partly_off_frame_draws_the_visible_part_only() -> None:
    frames = np.zeros((1, 360, 640, 3), np.uint8)
    # x = 1270 / 2 = 635: only sprite columns 0..4 are inside; y = 700 / 2 = 350: rows 0..9.
    draw_cursor(frames, np.array([1270.0]), np.array([700.0]), np.array([True]))
    white = (cursor_sprite()[..., :3] == 255).all(-1)
    assert ((frames[0, 350:, 635:] == 255).all(-1) == white[:10, :5]).all()
    assert not frames[0, :350].any() and not frames[0, :, :635].any()
    # Fully outside: nothing happens, no error.
    frames2 = np.zeros((1, 360, 640, 3), np.uint8)
    draw_cursor(frames2, np.array([5000.0]), np.array([-500.0]), np.array([True]))
    assert not frames2.any()


def test_hand_computed_pixels() -> None:
    sprite = np.zeros((16, 16, 4), np.uint8)
    sprite[0, 0] = (255, 0, 10, 128)  # alpha 128/255 = 0.50196...
    sprite[0, 1] = (255, 255, 255, 255)
    sprite[1, 0] = (7, 7, 7, 0)
    sprite[2, 2] = (200, 100, 0, 51)  # alpha 0.2
    sprite[2, 3] = (100, 100, 100, 5)  # same colour as the frame, alpha 5/255
    frames = np.full((1, 20, 20, 3), 100, np.uint8)
    draw_cursor(frames, np.array([8.0]), np.array([6.0]), np.array([True]), original_height=40, sprite=sprite)
    # scale 20/40 = 0.5 -> top-left (x, y) = (4, 3)
    # R: 100 * (1 - 128/255) + 255 * 128/255 = 177.80 -> 177; G: 100 * 127/255 = 49.80 -> 49;
    # B: 49.80 + 10 * 128/255 = 54.82 -> 54
    assert frames[0, 3, 4].tolist() == [177, 49, 54]
    assert frames[0, 3, 5].tolist() == [255, 255, 255]
    assert frames[0, 4, 4].tolist() == [100, 100, 100]
    # 100 * 0.8 + 200 * 0.2 = 120, 100 * 0.8 + 100 * 0.2 = 100, 100 * 0.8 = 80 (all exact in float64)
    assert frames[0, 5, 6].tolist() == [120, 100, 80]
    # The cast truncates: 100 * (1 - 5/255) + 100 * 5/255 = 99.99999999999999 in float64 -> 99, not 100.
    assert frames[0, 5, 7].tolist() == [99, 99, 99]
    untouched = np.ones((20, 20), bool)
    untouched[3, 4] = untouched[3, 5] = untouched[5, 6] = untouched[5, 7] = False
    assert (frames[0][untouched] == 100).all()


def test_bad_arguments() -> None:
    frames = np.zeros((2, 36, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="expected \\(2,\\)"):
        draw_cursor(frames, np.zeros(3), np.zeros(2), np.zeros(2, bool))
    with pytest.raises(ValueError, match="bool"):
        draw_cursor(frames, np.zeros(2), np.zeros(2), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        draw_cursor(frames.astype(np.float32), np.zeros(2), np.zeros(2), np.zeros(2, bool))
    with pytest.raises(ValueError, match="frame 1"):
        draw_cursor(frames, np.array([0.0, np.nan]), np.zeros(2), np.ones(2, bool))


def _step(x: float = 10.0, y: float = 20.0, gui: bool = False) -> dict:
    return {"mouse": {"x": x, "y": y, "dx": 0, "dy": 0, "buttons": [], "newButtons": []}, "isGuiOpen": gui}


def test_cursor_inputs_from_jsonl(tmp_path) -> None:
    path = tmp_path / "ep.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in [_step(1, 2), _step(640.5, 360.25, True), _step(3, 4)]))
    x, y, gui = cursor_inputs(read_jsonl(path), source=path)
    assert x.tolist() == [1, 640.5, 3] and y.tolist() == [2, 360.25, 4] and gui.tolist() == [False, True, False]
    assert x.dtype == np.float64 and gui.dtype == np.bool_


@pytest.mark.parametrize(
    "broken, message",
    [
        ({"mouse": {"x": 1, "y": 2}}, "step 1: missing key 'isGuiOpen'"),
        ({"isGuiOpen": True}, "step 1: missing key 'mouse'"),
        ({"isGuiOpen": True, "mouse": {"y": 2}}, "step 1: missing key 'mouse.x'"),
        ({"isGuiOpen": False, "mouse": {"x": 2}}, "step 1: missing key 'mouse.y'"),
        ({"isGuiOpen": 1, "mouse": {"x": 1, "y": 2}}, "'isGuiOpen' must be true or false"),
        ({"isGuiOpen": True, "mouse": {"x": "1", "y": 2}}, "'mouse.x' must be a number"),
    ],
)
def test_cursor_inputs_errors_name_file_and_step(broken: dict, message: str) -> None:
    with pytest.raises(ContractorFormatError) as info:
        cursor_inputs([_step(), broken], source="rec/ep7.jsonl")
    assert str(info.value).startswith("rec/ep7.jsonl: ") and message in str(info.value)
