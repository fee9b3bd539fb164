"""Synthetic contractor recordings: a scripted agent in a tiny rendered world, whose actions follow from its frames.

Each episode is a ``NAME.mp4`` (H.264, yuv420p) plus a ``NAME.jsonl`` in the VPT contractor format, so it goes
through exactly the same ingest path as real data. The scene is a flat world seen in first person:

* sky above / ground below the horizon; the horizon moves with pitch (positive pitch looks down, as in Minecraft);
* static clutter fixed in the world: darker ground stripes and light "clouds" at fixed yaw angles, and ground bands
  that scroll towards the viewer while walking, so turning and walking are visible in the pixels;
* one red target block. Its screen x follows the yaw relative to the agent, y the pitch, size shrinks with distance.

The scripted policy reads only what is on screen: turn towards the target when off-centre (mouse dx/dy, several
mu-law camera bins, within about +-10 degrees), walk forward when centred and far (sometimes sprinting), and hold
attack when close. The block shows cracks while it is attacked and breaks after a few frames, then a new one appears
at a random angle and distance. Occasional jumps and idle frames add some noise.

With ``segmentation=True`` (the default) each episode also gets ``NAME.segmentation.npz``
(:mod:`minesweep.data.segmentation`): per frame the target's on-screen rectangle as a mask, the target's id, and the
hindsight interaction type: ``mine`` for targets broken later in the episode, ``approach`` for the last one if the
episode ends before it breaks; frames where the target is off screen are marked invalid.

Care is taken with the contractor quirks (see fixtures/vpt/actions/README.md): no attack press at step 0 (it would
trigger the attack-stuck fix) and the hotbar field stays 0 (a change would count as a hotbar press).

Each step's ``stats`` holds the counter ``minecraft.mine_block:minecraft.red_wool``: the targets broken so far,
counted after the step's action, so each broken target is a ``mine_block:red_wool`` event at the step that broke it
(:mod:`minesweep.data.events`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from minesweep.data.segmentation import INTERACTION_TYPES, sidecar_path, write_segmentation
from minesweep.video import H264Writer

__all__ = ["write_synthetic_episode", "generate_recordings"]

CAMERA_SCALER = 0.15  # contractor mouse counts -> degrees
MINED_STAT = "minecraft.mine_block:minecraft.red_wool"  # targets broken so far (the first target has id 0)
FOV_X = 70.0  # horizontal field of view, degrees
EYE = 1.62  # eye height, metres
BLOCK = 1.0  # target block edge, metres
CLOSE = 2.6  # attack range, metres
WALK, SPRINT = 0.22, 0.28  # metres per frame (20 fps)

SKY_TOP = np.array([95, 140, 235], np.float32)
SKY_LOW = np.array([170, 205, 250], np.float32)
GROUND = np.array([92, 150, 60], np.float32)
TARGET = np.array([215, 45, 40], np.uint8)
TARGET_EDGE = np.array([120, 20, 20], np.uint8)
CLOUD = np.array([240, 244, 250], np.uint8)


@dataclass
class _Agent:
    yaw: float = 0.0  # degrees, world frame
    pitch: float = 0.0  # degrees, positive looks down
    x: float = 0.0
    z: float = 0.0
    travelled: float = 0.0  # metres walked: scrolls the ground bands
    jump_t: int = -1  # frames since the jump started, -1 on the ground
    # the target, in polar coordinates around the agent's position
    t_yaw: float = 0.0
    t_dist: float = 8.0
    hardness: int = 6  # attack frames to break it
    damage: int = 0
    sprinting: bool = False
    target_id: int = -1  # counts spawned targets: the object id of the segmentation
    keys: list[str] = field(default_factory=list)
    buttons: list[int] = field(default_factory=list)


def _wrap(deg: float) -> float:
    return (deg + 180.0) % 360.0 - 180.0


def _eye_height(agent: _Agent) -> float:
    if agent.jump_t < 0:
        return EYE
    return EYE + 1.1 * math.sin(math.pi * agent.jump_t / 10.0)


def _target_pitch(agent: _Agent) -> float:
    """Angle below the eye line of the block's centre (positive = below, like Minecraft pitch)."""
    return math.degrees(math.atan2(_eye_height(agent) - BLOCK / 2, agent.t_dist))


def _spawn_target(agent: _Agent, rng: np.random.Generator) -> None:
    agent.t_yaw = _wrap(agent.yaw + rng.uniform(-32.0, 32.0))
    agent.t_dist = rng.uniform(5.0, 14.0)
    agent.hardness = int(rng.integers(5, 11))
    agent.damage = 0
    agent.sprinting = bool(rng.random() < 0.35)
    agent.target_id += 1


class _Scene:
    """Renders the world for one episode; the clutter layout is fixed per episode (seeded)."""

    def __init__(self, width: int, height: int, rng: np.random.Generator) -> None:
        self.w, self.h = width, height
        self.ppd = width / FOV_X  # pixels per degree, both axes (square pixels)
        self.stripe_yaws = np.sort(rng.uniform(-180, 180, size=int(rng.integers(10, 16))))
        self.stripe_widths = rng.uniform(0.6, 2.5, size=self.stripe_yaws.size)  # degrees
        self.clouds = [
            (rng.uniform(-180, 180), rng.uniform(-9, -2), rng.uniform(4, 12), rng.uniform(1.0, 2.5))
            for _ in range(int(rng.integers(5, 9)))
        ]  # (yaw, pitch, width deg, height deg)
        tint = rng.uniform(0.85, 1.15, size=3)  # per-episode ground colour
        self._shades = np.stack([GROUND * tint * b * s for b in (1.0, 0.86) for s in (1.0, 0.7)]).astype(np.uint8)
        rows = np.arange(height, dtype=np.float32)[:, None]
        self._sky = (SKY_TOP + (SKY_LOW - SKY_TOP) * (rows / max(height - 1, 1))).astype(np.uint8)
        self._rows = np.arange(height, dtype=np.float32) + 0.5

    def _screen_x(self, rel_yaw_deg: np.ndarray | float) -> np.ndarray | float:
        return self.w / 2 + rel_yaw_deg * self.ppd

    def render(self, agent: _Agent) -> np.ndarray:
        w, h, ppd = self.w, self.h, self.ppd
        horizon = h / 2 - agent.pitch * ppd
        eye = _eye_height(agent)

        # Ground: bands by distance (scroll while walking), darker stripes at fixed yaws. Filled row by row and
        # with slices: per-pixel gathers would cost more than the rest of the frame.
        below = np.maximum(self._rows - horizon, 1e-3) / ppd  # degrees below the horizon
        dist = eye / np.tan(np.radians(np.minimum(below, 89.0)))
        band = (np.floor((dist + agent.travelled) / 1.5) % 2).astype(np.intp)
        ground = self._rows >= horizon
        img = np.empty((h, w, 3), np.uint8)
        img[:] = np.where(ground[:, None], self._shades[band * 2], self._sky)[:, None, :]
        g0 = int(np.argmax(ground)) if ground.any() else h
        dark = self._shades[band[g0:] * 2 + 1][:, None, :]
        for r, sw in zip((self.stripe_yaws - agent.yaw + 180.0) % 360.0 - 180.0, self.stripe_widths, strict=False):
            c0 = min(max(int(round(self._screen_x(r - sw / 2))), 0), w)
            c1 = min(max(int(round(self._screen_x(r + sw / 2))), 0), w)
            img[g0:, c0:c1] = dark

        for c_yaw, c_pitch, c_w, c_h in self.clouds:
            cx = self._screen_x(_wrap(c_yaw - agent.yaw))
            cy = h / 2 + (c_pitch - agent.pitch) * ppd
            self._fill(img, cx - c_w * ppd / 2, cy - c_h * ppd / 2, cx + c_w * ppd / 2, cy + c_h * ppd / 2, CLOUD)
        self._draw_target(img, agent)
        return img

    def _target_box(self, agent: _Agent) -> tuple[float, float, float, float, float]:
        """(x0, y0, x1, y1, size) of the target block on screen, in pixels (unclipped)."""
        size = math.degrees(2 * math.atan2(BLOCK / 2, agent.t_dist)) * self.ppd
        cx = self._screen_x(_wrap(agent.t_yaw - agent.yaw))
        cy = self.h / 2 + (_target_pitch(agent) - agent.pitch) * self.ppd
        return cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2, size

    def target_pixels(self, agent: _Agent) -> tuple[int, int, int, int]:
        """Row/column range ``(r0, r1, c0, c1)`` the target covers, clipped to the frame and rounded exactly as
        it is drawn (empty when off screen)."""
        x0, y0, x1, y1, _ = self._target_box(agent)
        h, w = self.h, self.w
        return (max(int(round(y0)), 0), min(int(round(y1)), h), max(int(round(x0)), 0), min(int(round(x1)), w))

    def _draw_target(self, img: np.ndarray, agent: _Agent) -> None:
        x0, y0, x1, y1, size = self._target_box(agent)
        self._fill(img, x0, y0, x1, y1, TARGET_EDGE)
        edge = max(size * 0.12, 0.6)
        self._fill(img, x0 + edge, y0 + edge, x1 - edge, y1 - edge, TARGET)
        if agent.damage:  # cracks: dark horizontal bars, more of them as the block breaks
            n = 1 + 4 * agent.damage // max(agent.hardness, 1)
            for k in range(n):
                yy = y0 + size * (k + 1) / (n + 1)
                self._fill(img, x0 + edge, yy - edge / 2, x1 - edge, yy + edge / 2, TARGET_EDGE)

    @staticmethod
    def _fill(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour: np.ndarray) -> None:
        h, w = img.shape[:2]
        c0, c1 = max(int(round(x0)), 0), min(int(round(x1)), w)
        r0, r1 = max(int(round(y0)), 0), min(int(round(y1)), h)
        if c1 > c0 and r1 > r0:
            img[r0:r1, c0:c1] = colour


def _policy(agent: _Agent, rng: np.random.Generator, t: int) -> tuple[int, int, list[str], list[int]]:
    """What the scripted player does in front of the current frame: (mouse dx, mouse dy, keys, mouse buttons)."""
    rel_yaw = _wrap(agent.t_yaw - agent.yaw)
    rel_pitch = _target_pitch(agent) - agent.pitch
    keys: list[str] = []
    buttons: list[int] = []
    if rng.random() < 0.03:  # hesitation: a null frame now and then
        return 0, 0, keys, buttons

    dx = dy = 0
    gain = rng.uniform(0.35, 0.65)
    if abs(rel_yaw) > 1.0:
        dx = round(float(np.clip(rel_yaw * gain + rng.normal(0, 0.3), -11.0, 11.0)) / CAMERA_SCALER)
    if abs(rel_pitch) > 1.0:
        dy = round(float(np.clip(rel_pitch * gain + rng.normal(0, 0.3), -11.0, 11.0)) / CAMERA_SCALER)

    centred = abs(rel_yaw) < 4.0 and abs(rel_pitch) < 6.0
    if centred and agent.t_dist > CLOSE:
        keys.append("key.keyboard.w")
        if agent.sprinting:
            keys.append("key.keyboard.left.control")
        if agent.jump_t < 0 and rng.random() < 0.03:
            keys.append("key.keyboard.space")
    elif centred and t > 0:  # never press attack at step 0: that would trigger the attack-stuck fix
        buttons.append(0)
    return dx, dy, keys, buttons


def _step(agent: _Agent, dx: int, dy: int, keys: list[str], buttons: list[int], rng: np.random.Generator) -> None:
    """Advance the world by one frame under the action."""
    agent.yaw = _wrap(agent.yaw + dx * CAMERA_SCALER)
    agent.pitch = float(np.clip(agent.pitch + dy * CAMERA_SCALER, -90.0, 90.0))
    if "key.keyboard.space" in keys and agent.jump_t < 0:
        agent.jump_t = 0
    elif agent.jump_t >= 0:
        agent.jump_t = agent.jump_t + 1 if agent.jump_t < 9 else -1
    if "key.keyboard.w" in keys:
        speed = SPRINT if "key.keyboard.left.control" in keys else WALK
        # move along the view direction; the target's polar coordinates follow
        heading = math.radians(agent.yaw)
        agent.x -= math.sin(heading) * speed
        agent.z += math.cos(heading) * speed
        agent.travelled += speed
        rel = math.radians(_wrap(agent.t_yaw - agent.yaw))
        fwd, side = agent.t_dist * math.cos(rel) - speed, agent.t_dist * math.sin(rel)
        agent.t_dist = max(math.hypot(fwd, side), 0.5)
        agent.t_yaw = _wrap(agent.yaw + math.degrees(math.atan2(side, fwd)))
    if 0 in buttons:
        agent.damage += 1
        if agent.damage >= agent.hardness:
            _spawn_target(agent, rng)


def _json_step(
    t: int,
    agent: _Agent,
    dx: int,
    dy: int,
    keys: list[str],
    buttons: list[int],
    prev_keys: list[str],
    prev_buttons: list[int],
    rng: np.random.Generator,
) -> dict:
    return {
        "mouse": {
            "x": 640.0,
            "y": 360.0,
            "dx": float(dx),
            "dy": float(dy),
            "scaledX": 0.0,
            "scaledY": 0.0,
            "dwheel": 0.0,
            "buttons": buttons,
            "newButtons": [b for b in buttons if b not in prev_buttons],
        },
        "keyboard": {"keys": keys, "newKeys": [k for k in keys if k not in prev_keys], "chars": ""},
        "isGuiOpen": False,
        "isGuiInventory": False,
        "hotbar": 0,  # constant: a change would count as a hotbar press
        "yaw": round(agent.yaw, 5),
        "pitch": round(agent.pitch, 5),
        "xpos": agent.x,
        "ypos": 64.0 + (_eye_height(agent) - EYE),
        "zpos": agent.z,
        "tick": t,
        "milli": 1_650_000_000_000 + 50 * t,
        "inventory": [],
        "serverTick": 6000 + t,
        "serverTickDurationMs": round(float(rng.uniform(40.0, 50.0)), 4),
        "stats": {},  # filled in after the step's action (write_synthetic_episode)
    }


def write_synthetic_episode(
    out_dir: str | Path,
    name: str,
    frames: int,
    seed: int,
    width: int = 640,
    height: int = 360,
    fps: int = 20,
    segmentation: bool = True,
) -> tuple[Path, Path]:
    """Write ``out_dir/name.mp4`` and ``out_dir/name.jsonl`` (``frames`` frames and steps); deterministic in ``seed``.
    With ``segmentation``, also ``out_dir/name.segmentation.npz`` (the video and actions are the same either way).

    Returns the (mp4, jsonl) paths.
    """
    if frames <= 0:
        raise ValueError(f"frames must be positive, got {frames}")
    if width % 2 or height % 2:
        raise ValueError(f"width and height must be even for yuv420p, got {width}x{height}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scene = _Scene(width, height, rng)
    agent = _Agent(yaw=float(rng.uniform(-180, 180)), pitch=float(rng.uniform(-5, 15)))
    _spawn_target(agent, rng)

    mp4, jsonl = out_dir / f"{name}.mp4", out_dir / f"{name}.jsonl"
    mask = np.zeros((frames, height, width), np.bool_) if segmentation else None
    target_ids = np.full(frames, -1, np.int32)
    with H264Writer(mp4, width, height, fps) as video, open(jsonl, "w") as lines:
        for t in range(frames):
            video.write(scene.render(agent))
            if mask is not None:
                r0, r1, c0, c1 = scene.target_pixels(agent)
                if r1 > r0 and c1 > c0:
                    mask[t, r0:r1, c0:c1] = True
                    target_ids[t] = agent.target_id
            dx, dy, keys, buttons = _policy(agent, rng, t)
            step = _json_step(t, agent, dx, dy, keys, buttons, agent.keys, agent.buttons, rng)
            agent.keys, agent.buttons = keys, buttons
            _step(agent, dx, dy, keys, buttons, rng)
            step["stats"][MINED_STAT] = agent.target_id  # counted after the action: an event at the breaking step
            lines.write(json.dumps(step))
            lines.write("\n")
    if mask is not None:
        valid = target_ids >= 0
        # Hindsight labels: every target but the current one was broken (a new one spawns only then).
        broken = valid & (target_ids < agent.target_id)
        interaction = np.where(broken, INTERACTION_TYPES.index("mine"), INTERACTION_TYPES.index("approach"))
        write_segmentation(
            sidecar_path(mp4),
            {"mask": mask, "object_id": target_ids, "valid": valid, "interaction": np.where(valid, interaction, -1)},
        )
    return mp4, jsonl


def generate_recordings(
    out_dir: str | Path,
    episodes: int,
    frames: int,
    seed: int = 0,
    width: int = 640,
    height: int = 360,
    segmentation: bool = True,
) -> list[Path]:
    """Write ``episodes`` synthetic recordings ``synth-0000.mp4/.jsonl`` (and ``.segmentation.npz``), ... into
    ``out_dir``; returns the mp4 paths."""
    paths = []
    for i in range(episodes):
        episode_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        mp4, _ = write_synthetic_episode(
            out_dir, f"synth-{i:04d}", frames, episode_seed, width, height, segmentation=segmentation
        )
        paths.append(mp4)
    return paths
