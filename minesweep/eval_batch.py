"""A policy playing many Crafter worlds at once: one forward per step over a batch of the worlds still playing.

Each world keeps its own row of the policy's memory and its own sampling generator, seeded from the world seed and
the evaluation seed (:func:`world_generator`), so what the policy does in world ``k`` does not depend on which other
worlds share its batch, on the batch size or on how many processes play: the same RNG draws meet the same logits.
(The logits themselves are equal up to float rounding: CPU kernels may sum in another order for another batch
size, about 1e-6 in a log-probability, which changes a sampled action only at such a near tie.)

Batching needs the policy's state to be a list of tensors with the batch first (TinyPolicy's GRU state, VPT's,
GROOT's and ROCKET's ``[mask, K, V]`` per layer): rows are appended when a world starts and dropped when it ends.
A policy whose state is laid out otherwise plays one world at a time (:func:`state_is_batch_first`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from minesweep.envs.crafter import CrafterEnv, agent_to_action
from minesweep.envs.crafter_record import EpisodeResult
from minesweep.policies.base import MinePolicy, State

__all__ = ["world_generator", "state_is_batch_first", "as_video_frame", "BatchedPolicy", "VideoSpec", "play_policy"]

log = logging.getLogger("minesweep")

EnvFactory = Callable[..., CrafterEnv]  # called with seed=


def world_generator(world_seed: int, eval_seed: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """The sampling generator of one world: a function of the world seed and the evaluation seed only."""
    # SeedSequence mixes the pair, so that (world 1, eval 0) and (world 0, eval 1) draw unrelated noise
    entropy = [int(eval_seed) % 2**64, int(world_seed) % 2**64]
    seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) >> 1  # manual_seed: < 2**63
    return torch.Generator(device=device).manual_seed(seed)


def state_is_batch_first(policy: MinePolicy) -> bool:
    """Whether ``initial_state(n)`` is None or a list of tensors with ``n`` rows first, the same otherwise: then
    rows of worlds can be appended and dropped. Checked on the policy itself, since layouts differ by policy."""
    try:
        one, three = policy.initial_state(1), policy.initial_state(3)
    except Exception as error:  # noqa: BLE001 - any failure means: do not batch
        log.info("eval: %s.initial_state(n) failed (%s)", type(policy).__name__, error)
        return False
    if one is None or three is None:
        return one is None and three is None
    if not isinstance(one, (list, tuple)) or not isinstance(three, (list, tuple)) or len(one) != len(three):
        return False
    return all(
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.dim() >= 1
        and a.shape[0] == 1
        and b.shape[0] == 3
        and a.shape[1:] == b.shape[1:]
        for a, b in zip(one, three, strict=False)
    )


def as_video_frame(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` after the colour conversion of an H.264 recording and its decoding: RGB -> yuv420p -> RGB (PyAV)."""
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(format="yuv420p").reformat(format="rgb24").to_ndarray()


class BatchedPolicy:
    """A MinePolicy acting for a changing set of worlds: :meth:`add` a world, :meth:`act` on one frame of each,
    :meth:`remove` the worlds that ended. Rows keep the order in which worlds were added.

    ``video_frames``: pass each frame through the RGB -> yuv420p -> RGB conversion that recordings go through
    (H.264 stores colour at half resolution), so the policy sees colours as it saw them in training.
    """

    def __init__(
        self, policy: MinePolicy, deterministic: bool = False, video_frames: bool = False, eval_seed: int = 0
    ) -> None:
        self.policy, self.deterministic, self.video_frames = policy, bool(deterministic), bool(video_frames)
        self.eval_seed = int(eval_seed)
        self.state: State = None
        self.generators: list[torch.Generator] = []
        self.first: list[bool] = []

    def __len__(self) -> int:
        return len(self.first)

    def add(self, world_seed: int) -> None:
        device = self.policy.device
        new = self.policy.initial_state(1)
        if len(self) == 0 or new is None:
            self.state = new
        else:
            self.state = [torch.cat([old, row]) for old, row in zip(self.state, new, strict=False)]
        self.generators.append(world_generator(world_seed, self.eval_seed, device))
        self.first.append(True)

    def remove(self, rows: Sequence[int]) -> None:
        if not rows:
            return
        gone = set(rows)
        keep = [i for i in range(len(self)) if i not in gone]
        if self.state is not None:
            index = torch.tensor(keep, dtype=torch.long, device=self.policy.device)
            self.state = [s.index_select(0, index) for s in self.state] if keep else None
        self.generators = [self.generators[i] for i in keep]
        self.first = [self.first[i] for i in keep]

    @torch.no_grad()
    def act(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """One Crafter action per world (row order) for its frame: the sampled VPT buttons mapped back to Crafter
        (``agent_to_action``: an action outside the 17 plays noop; the camera has no Crafter meaning)."""
        if len(frames) != len(self):
            raise ValueError(f"BatchedPolicy.act: {len(frames)} frames for {len(self)} worlds")
        if self.video_frames:
            frames = [as_video_frame(f) for f in frames]
        device = self.policy.device
        image = torch.from_numpy(np.stack(frames)).to(device)[:, None]  # (B, 1, H, W, 3) uint8
        first = torch.tensor(self.first, dtype=torch.bool, device=device)[:, None]
        action, self.state = self.policy.get_action(
            {"image": image, "first": first}, self.state, deterministic=self.deterministic, generator=self.generators
        )
        self.first = [False] * len(self)
        buttons = action["buttons"].reshape(len(self), -1)[:, 0]
        return agent_to_action(buttons.cpu().numpy())


@dataclass(frozen=True)
class VideoSpec:
    """The policy's episode in world ``seed`` goes to ``path`` (H.264, ``size`` x ``size``), its first
    ``max_steps`` frames. Plain data, so that a worker process can write it."""

    path: str
    seed: int
    max_steps: int
    size: int = 256
    fps: int = 10


class _World:
    """One world being played: its env, the last observation and what the episode has gathered so far."""

    def __init__(self, seed: int, env: CrafterEnv, video: VideoSpec | None) -> None:
        self.seed, self.env = seed, env
        self.obs, self.info = env.reset()
        self.total, self.actions, self.done = 0.0, [], False
        self.writer, self.video = None, video
        if video is not None and video.seed == seed and video.max_steps > 0:
            from minesweep.video import H264Writer

            Path(video.path).parent.mkdir(parents=True, exist_ok=True)
            self.writer = H264Writer(video.path, video.size, video.size, fps=video.fps)

    def step(self, action: int) -> None:
        if self.writer is not None and self.writer.count < self.video.max_steps:
            self.writer.write(self.env.render(self.video.size))  # the frame this action answers
        self.actions.append(int(action))
        self.obs, reward, self.done, self.info = self.env.step(int(action))
        self.total += reward
        if self.done:
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def result(self, player: str) -> EpisodeResult:
        return EpisodeResult(
            seed=self.seed,
            player=player,
            length=len(self.actions),
            episode_return=float(self.total),
            achievements=dict(self.info["achievements"]),
            actions=self.actions,
        )


def play_policy(
    batch: BatchedPolicy,
    env_factory: EnvFactory,
    seeds: Sequence[int],
    on_result: Callable[[EpisodeResult], None],
    batch_size: int | None = None,
    video: VideoSpec | None = None,
    player: str = "policy",
) -> None:
    """Play every world of ``seeds`` once with ``batch``'s policy, at most ``batch_size`` worlds at a time
    (default: all); a world that ends leaves the batch and the next one joins. ``on_result`` gets each episode
    as it ends (so not in seed order)."""
    if len(batch):
        raise ValueError("play_policy: the BatchedPolicy already has worlds")
    pending = deque(int(s) for s in seeds)
    limit = len(pending) if batch_size is None else max(1, int(batch_size))
    active: list[_World] = []
    try:
        while pending or active:
            while pending and len(active) < limit:
                seed = pending.popleft()
                active.append(_World(seed, env_factory(seed=seed), video))
                batch.add(seed)
            actions = batch.act([w.obs for w in active])
            ended = []
            for row, (world, action) in enumerate(zip(active, actions, strict=False)):
                world.step(int(action))
                if world.done:
                    ended.append(row)
                    on_result(world.result(player))
            batch.remove(ended)
            active = [w for w in active if not w.done]
    finally:
        for world in active:
            world.close()
