"""Synthetic contractor recordings: format, determinism, colours, and a learnable (scripted) policy."""

import av
import numpy as np
import pytest

from minesweep.actions import BUTTONS, camera_to_bins
from minesweep.actions.contractor import contractor_to_env, read_jsonl
from minesweep.data.recordings import synth
from minesweep.data.recordings.synth import generate_recordings, write_synthetic_episode

W, H, N = 96, 64, 160
STEP_KEYS = {
    "mouse",
    "keyboard",
    "isGuiOpen",
    "isGuiInventory",
    "hotbar",
    "yaw",
    "pitch",
    "xpos",
    "ypos",
    "zpos",
    "tick",
    "milli",
    "inventory",
    "serverTick",
    "serverTickDurationMs",
    "stats",
}
MOUSE_KEYS = {"x", "y", "dx", "dy", "scaledX", "scaledY", "dwheel", "buttons", "newButtons"}


@pytest.fixture(scope="module")
def episode(tmp_path_factory):
    """One episode, plus the exact RGB frames handed to the encoder."""
    out = tmp_path_factory.mktemp("synth")
    rendered = []

    class Recording(synth.H264Writer):
        def write(self, frame):
            rendered.append(frame.copy())
            super().write(frame)

    mp = pytest.MonkeyPatch()
    mp.setattr(synth, "H264Writer", Recording)
    try:
        mp4, jsonl = write_synthetic_episode(out, "ep", N, seed=3, width=W, height=H)
    finally:
        mp.undo()
    return mp4, jsonl, np.stack(rendered)


def decode(path):
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(stream)]), stream.average_rate


def test_contractor_format(episode):
    mp4, jsonl, _ = episode
    frames, rate = decode(mp4)
    assert frames.shape == (N, H, W, 3) and rate == 20
    steps = read_jsonl(jsonl)
    assert len(steps) == N
    for step in steps:
        assert STEP_KEYS <= step.keys() and MOUSE_KEYS <= step["mouse"].keys()
        assert {"keys", "newKeys", "chars"} <= step["keyboard"].keys()
        assert step["hotbar"] == 0  # a change from the initial 0 would count as a hotbar press
    assert 0 not in steps[0]["mouse"]["newButtons"]  # would trigger the attack-stuck fix
    assert [s["tick"] for s in steps] == list(range(N))


def test_video_has_the_rendered_colours(episode):
    mp4, _, rendered = episode
    frames, _ = decode(mp4)
    diff = np.abs(frames.astype(int) - rendered.astype(int))
    # limited-range yuv420p costs ~1-3 levels on flat colours, more at the (many, small) edges of 96x64 frames
    assert diff.mean() < 5, "decoded video differs from the rendered RGB frames (channel order / colour range?)"
    assert np.median(diff) <= 3
    # per-channel means agree too: a swapped R/B would fail here (the target is red, the ground green)
    np.testing.assert_allclose(frames.mean(axis=(0, 1, 2)), rendered.mean(axis=(0, 1, 2)), atol=2)


def test_deterministic_in_seed(tmp_path):
    a = generate_recordings(tmp_path / "a", episodes=2, frames=20, seed=5, width=64, height=64)
    b = generate_recordings(tmp_path / "b", episodes=2, frames=20, seed=5, width=64, height=64)
    c = generate_recordings(tmp_path / "c", episodes=1, frames=20, seed=6, width=64, height=64)
    assert [p.name for p in a] == ["synth-0000.mp4", "synth-0001.mp4"]
    for pa, pb in zip(a, b, strict=False):
        assert pa.with_suffix(".jsonl").read_text() == pb.with_suffix(".jsonl").read_text()
        np.testing.assert_array_equal(decode(pa)[0], decode(pb)[0])
    assert a[0].with_suffix(".jsonl").read_text() != c[0].with_suffix(".jsonl").read_text()
    assert a[0].with_suffix(".jsonl").read_text() != a[1].with_suffix(".jsonl").read_text()


def test_policy_is_rich_and_tied_to_the_target(episode):
    mp4, jsonl, rendered = episode
    env = contractor_to_env(read_jsonl(jsonl), source=str(jsonl))
    col = {name: i for i, name in enumerate(BUTTONS)}
    forward, attack = env.buttons[:, col["forward"]], env.buttons[:, col["attack"]]
    assert forward.mean() > 0.2 and attack.mean() > 0.05
    assert env.buttons[:, col["sprint"]].any()
    assert not env.buttons[:, col["hotbar.1"] :].any() and not env.buttons[:, col["inventory"]].any()
    bins = camera_to_bins(env.camera)
    assert len(np.unique(bins[:, 0])) >= 4 and len(np.unique(bins[:, 1])) >= 4
    assert np.mean(np.abs(env.camera) <= 10.0) > 0.95

    # Attack only while the target is big (close) and near the centre of the screen.
    red = (rendered[..., 0] > 150) & (rendered[..., 1] < 90) & (rendered[..., 2] < 90)
    area = red.mean(axis=(1, 2))
    assert (area > 0).mean() > 0.8, "the target should be visible in most frames"
    assert area[attack == 1].min() > area[forward == 1].mean()
    ys, xs = np.nonzero(red[attack == 1][0])
    assert abs(xs.mean() - W / 2) < W * 0.15 and abs(ys.mean() - H / 2) < H * 0.25


def test_rejects_odd_sizes(tmp_path):
    with pytest.raises(ValueError, match="even"):
        write_synthetic_episode(tmp_path, "x", 4, seed=0, width=63, height=64)
