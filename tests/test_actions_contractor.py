"""minesweep.actions.contractor against the VPT data-loader golden trace (shared/fixtures/vpt/actions)."""

from __future__ import annotations

import copy
import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from minesweep.actions import (
    BUTTONS,
    MOUSE_COUNTS_TO_DEGREES,
    ContractorFormatError,
    EnvActions,
    contractor_to_env,
    read_jsonl,
)

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "vpt" / "actions"
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"VPT golden fixtures not found at {FIXTURES}")
DEG_TOL = 1e-6


@cache
def _trace() -> dict:
    return json.loads((FIXTURES / "jsonl_to_env.json").read_text())


def _sequences() -> list[dict]:
    return _trace()["sequences"] if FIXTURES.is_dir() else []


def _json_steps(seq: dict) -> list[dict]:
    return [copy.deepcopy(s["json_step"]) for s in seq["steps"]]


# --------------------------------------------------------------------------- golden trace


@needs_fixtures
def test_constants_match_reference() -> None:
    c = _trace()["constants"]
    assert MOUSE_COUNTS_TO_DEGREES == c["CAMERA_SCALER"] == 0.15
    from minesweep.actions import KEYBOARD_BUTTON_MAPPING

    assert KEYBOARD_BUTTON_MAPPING == c["KEYBOARD_BUTTON_MAPPING"]


@needs_fixtures
@pytest.mark.parametrize("seq_pos", range(len(_sequences())) if FIXTURES.is_dir() else [])
def test_legacy_pipeline_every_step(seq_pos: int) -> None:
    seq = _sequences()[seq_pos]
    out = contractor_to_env(_json_steps(seq), legacy_vpt_camera=True, source=seq["name"])
    assert isinstance(out, EnvActions) and len(out) == seq["n_steps"] == len(seq["steps"])
    assert out.buttons.shape == (len(out), 20) and out.buttons.dtype == np.uint8
    assert out.camera.shape == (len(out), 2) and out.camera.dtype == np.float32
    assert out.is_null.dtype == bool and out.esc.dtype == bool
    for i, step in enumerate(seq["steps"]):
        p = step["pipeline"]
        env = p["env_action"]
        where = f"{seq['name']} step {i}"
        assert out.buttons[i].tolist() == [env[k] for k in BUTTONS], where
        assert bool(out.esc[i]) == bool(env["ESC"]), where
        np.testing.assert_allclose(out.camera[i], env["camera"], rtol=0, atol=DEG_TOL, err_msg=where)
        assert bool(out.is_null[i]) == p["is_null_action"] == (not p["kept"]), where
    assert int(np.count_nonzero(~out.is_null)) == seq["n_kept"]
    kept = [s["pipeline"]["output_index"] for s in seq["steps"] if s["pipeline"]["kept"]]
    assert kept == list(range(seq["n_kept"]))


@needs_fixtures
def test_default_mode_keeps_float_camera() -> None:
    n_fractional = 0
    for seq in _sequences():
        steps = _json_steps(seq)
        legacy = contractor_to_env(steps, legacy_vpt_camera=True)
        exact = contractor_to_env(steps)
        np.testing.assert_array_equal(exact.buttons, legacy.buttons)
        np.testing.assert_array_equal(exact.is_null, legacy.is_null)
        np.testing.assert_array_equal(exact.esc, legacy.esc)
        want = np.array([[s["mouse"]["dy"] * 0.15, s["mouse"]["dx"] * 0.15] for s in steps])
        np.testing.assert_allclose(exact.camera, want, rtol=0, atol=DEG_TOL)
        np.testing.assert_array_equal(legacy.camera, np.trunc(want))
        n_fractional += int(np.count_nonzero(want != np.trunc(want)))
    assert n_fractional > 0  # the data does exercise truncation


@needs_fixtures
def test_read_jsonl_roundtrip(tmp_path: Path) -> None:
    seq = _sequences()[0]
    path = tmp_path / "episode.jsonl"
    path.write_text("".join(json.dumps(s["json_step"]) + "\n" for s in seq["steps"]) + "\n")
    steps = read_jsonl(path)
    assert steps == [s["json_step"] for s in seq["steps"]]
    out = contractor_to_env(steps, legacy_vpt_camera=True, source=path.name)
    assert int(np.count_nonzero(~out.is_null)) == seq["n_kept"]


# --------------------------------------------------------------------------- rules (no fixtures)


def _step(keys=(), buttons=(), new_buttons=(), dx=0.0, dy=0.0, hotbar=0, gui=False) -> dict:
    return {
        "mouse": {
            "x": 320.0,
            "y": 180.0,
            "dx": dx,
            "dy": dy,
            "dwheel": 0.0,
            "buttons": list(buttons),
            "newButtons": list(new_buttons),
        },
        "keyboard": {"keys": list(keys), "newKeys": [], "chars": ""},
        "isGuiOpen": gui,
        "hotbar": hotbar,
    }


def _pressed(out: EnvActions, i: int) -> set[str]:
    return {BUTTONS[j] for j in np.nonzero(out.buttons[i])[0]}


def test_camera_truncation_and_null_rules() -> None:
    steps = [
        _step(dx=1),  # 0.15 deg -> 0 but not null
        _step(dx=-14, dy=6),  # [0.9, -2.1] -> [0, -2]
        _step(dx=66.6667),  # 10.000005 -> 10
        _step(dx=3000, dy=-3000),  # not clipped, not wrapped
        _step(gui=True, dy=20),  # GUI does not change the action
        _step(),
    ]
    legacy = contractor_to_env(steps, legacy_vpt_camera=True)
    np.testing.assert_array_equal(legacy.camera, [[0, 0], [0, -2], [0, 10], [-450, 450], [3, 0], [0, 0]])
    np.testing.assert_array_equal(legacy.is_null, [False] * 5 + [True])
    exact = contractor_to_env(steps)
    np.testing.assert_allclose(exact.camera[:3], [[0, 0.15], [0.9, -2.1], [0, 10.000005]], atol=1e-5)


def test_keys_and_mouse_buttons() -> None:
    steps = [
        _step(keys=["key.keyboard.f3", "key.keyboard.tab", "key.keyboard.t"]),  # unmapped only: null
        _step(keys=["key.keyboard.escape"]),  # ESC: not a button, not null
        _step(keys=["key.keyboard.f"]),  # swapHands: dropped, not null
        _step(buttons=[2]),  # pickItem: dropped, not null
        _step(buttons=[3, 4]),  # other mouse buttons are ignored
        _step(buttons=[0, 1], keys=["key.keyboard.w", "key.keyboard.s", "key.keyboard.e"]),
    ]
    out = contractor_to_env(steps)
    np.testing.assert_array_equal(out.is_null, [True, False, False, False, True, False])
    np.testing.assert_array_equal(out.esc, [False, True, False, False, False, False])
    assert all(not _pressed(out, i) for i in range(5))
    assert _pressed(out, 5) == {"attack", "use", "forward", "back", "inventory"}


def test_attack_stuck_fix() -> None:
    steps = [
        _step(buttons=[0], new_buttons=[0], keys=["key.keyboard.w"]),  # stuck fires despite forward
        _step(buttons=[0]),  # only the stuck attack: null
        _step(buttons=[0, 1], new_buttons=[1]),  # still stuck: use only
        _step(buttons=[0], new_buttons=[0]),  # a new press of 0 clears it and keeps the attack
        _step(buttons=[0]),
    ]
    out = contractor_to_env(steps)
    assert [_pressed(out, i) for i in range(5)] == [{"forward"}, set(), {"use"}, {"attack"}, {"attack"}]
    np.testing.assert_array_equal(out.is_null, [False, True, False, False, False])
    # [0, 1] at step 0 does not trigger it
    out = contractor_to_env([_step(buttons=[0, 1], new_buttons=[0, 1]), _step(buttons=[0])])
    assert _pressed(out, 1) == {"attack"}
    # and the input is not mutated (the reference edits mouse.buttons in place)
    assert steps[1]["mouse"]["buttons"] == [0]


def test_hotbar_tracking() -> None:
    steps = [
        _step(hotbar=3),  # first step compares with 0: hotbar.4, yet still null
        _step(hotbar=3),
        _step(hotbar=0, keys=["key.keyboard.w"]),
        _step(hotbar=5, keys=["key.keyboard.2"]),  # field and key both fire
    ]
    out = contractor_to_env(steps)
    assert [_pressed(out, i) for i in range(4)] == [
        {"hotbar.4"},
        set(),
        {"hotbar.1", "forward"},
        {"hotbar.6", "hotbar.2"},
    ]
    np.testing.assert_array_equal(out.is_null, [True, True, False, False])
    assert not contractor_to_env([_step(hotbar=0)]).buttons.any()


def test_empty_episode() -> None:
    out = contractor_to_env([])
    assert len(out) == 0 and out.buttons.shape == (0, 20) and out.camera.shape == (0, 2)


# --------------------------------------------------------------------------- errors


def test_missing_key_names_source_step_and_key() -> None:
    steps = [_step() for _ in range(13)]
    del steps[12]["mouse"]["dx"]
    with pytest.raises(ContractorFormatError) as err:
        contractor_to_env(steps, source="episode.jsonl")
    assert str(err.value) == "episode.jsonl: step 12: missing key 'mouse.dx'"
    assert isinstance(err.value, ValueError)

    steps = [_step(), _step()]
    del steps[1]["keyboard"]
    with pytest.raises(ContractorFormatError, match=r"<jsonl>: step 1: missing key 'keyboard.keys'"):
        contractor_to_env(steps)
    steps = [_step()]
    del steps[0]["hotbar"]
    with pytest.raises(ContractorFormatError, match="step 0: missing key 'hotbar'"):
        contractor_to_env(steps)


def test_bad_values_raise() -> None:
    with pytest.raises(ContractorFormatError, match="step 0: 'mouse.dx' must be a number"):
        contractor_to_env([_step(dx="3")])
    with pytest.raises(ContractorFormatError, match="step 0: 'hotbar'"):
        contractor_to_env([_step(hotbar=9)])
    with pytest.raises(ContractorFormatError, match="step 1: expected a JSON object"):
        contractor_to_env([_step(), [1, 2]])


def test_read_jsonl_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_step()) + "\n" + json.dumps(_step()) + "\n{not json\n")
    with pytest.raises(ContractorFormatError, match=r"bad\.jsonl: line 3: invalid JSON") as err:
        read_jsonl(path)
    assert isinstance(err.value, ValueError)
    path.write_text(json.dumps(_step()) + "\n[1, 2]\n")
    with pytest.raises(ContractorFormatError, match="line 2: expected a JSON object"):
        read_jsonl(path)


def test_read_jsonl_trailing_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "ok.jsonl"
    path.write_text(json.dumps(_step(dx=2)) + "\n" + json.dumps(_step()) + "\n\n")
    steps = read_jsonl(path)
    assert len(steps) == 2 and steps[0]["mouse"]["dx"] == 2


def test_product_does_not_read_shared() -> None:
    pkg = Path(__file__).resolve().parents[1] / "minesweep" / "actions"
    for src in pkg.glob("*.py"):
        text = src.read_text()
        assert "fixtures" not in text and '"shared"' not in text, src
