"""Playing Crafter episodes and writing them as contractor recordings (``NAME.mp4`` + ``NAME.jsonl``).

Frame ``t`` of a recording is the observation the player saw before its action ``t`` (as in contractor data), so an
episode of ``n`` steps is ``n`` frames and ``n`` jsonl lines; the final observation is not written. Episode ``i`` of
a recording run plays the world ``first_seed + i``: keep evaluation seeds out of that range (``minesweep-eval``
uses ``1_000_000`` and up by default). The runs' returns and achievements go to ``crafter_episodes.json`` beside the
recordings (ingest reads only ``.mp4``/``.jsonl`` pairs).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from minesweep.envs.crafter import ACTIONS, CrafterEnv, contractor_steps
from minesweep.envs.crafter_player import RandomPlayer, ScriptedPlayer
from minesweep.rich_bar import counting_bar

__all__ = [
    "Player",
    "EpisodeResult",
    "play_episode",
    "write_crafter_episode",
    "record_crafter",
    "CrafterRecordings",
    "SUMMARY",
]

SUMMARY = "crafter_episodes.json"


class Player(Protocol):
    name: str

    def act(self, obs: np.ndarray, info: dict) -> int: ...


@dataclass
class EpisodeResult:
    seed: int
    player: str
    length: int
    episode_return: float
    achievements: dict[str, int]  # achievement -> times unlocked in the episode
    name: str = ""
    actions: list[int] = field(default_factory=list, repr=False)
    # (step, achievement): each time action `step` made an achievement's count go up (the recording's events)
    events: list[tuple[int, str]] = field(default_factory=list, repr=False)

    def unlocked(self) -> list[str]:
        return sorted(k for k, v in self.achievements.items() if v > 0)


def play_episode(
    env: CrafterEnv,
    player: Player,
    on_step: Callable[[np.ndarray, int, dict], None] | None = None,
    seed: int | None = None,
) -> EpisodeResult:
    """Play one episode of ``env`` with ``player`` until death or the length limit.

    ``on_step(obs, action, info)`` is called before each step with the observation the action answers.
    """
    obs, info = env.reset()
    total, actions, events, done = 0.0, [], [], False
    while not done:
        action = int(player.act(obs, info))
        if on_step is not None:
            on_step(obs, action, info)
        before = info["achievements"]
        actions.append(action)
        obs, reward, done, info = env.step(action)
        total += reward
        for name, count in sorted(info["achievements"].items()):
            events.extend([(len(actions) - 1, name)] * max(0, count - before.get(name, 0)))
    return EpisodeResult(
        seed=env.seed if seed is None else seed,
        player=player.name,
        length=len(actions),
        episode_return=float(total),
        achievements=dict(info["achievements"]),
        actions=actions,
        events=events,
    )


def write_crafter_episode(
    out_dir: str | Path,
    name: str,
    seed: int,
    length: int = 500,
    size: int = 128,
    noise: float = 0.05,
    fps: int = 20,
    player: str = "scripted",
) -> EpisodeResult:
    """Play world ``seed`` with the scripted (or random) player; write ``out_dir/name.mp4`` and ``name.jsonl``.

    Deterministic in ``seed``: the world and the player's noise both follow it.
    """
    from minesweep.video import H264Writer  # PyAV: only where videos are written

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = CrafterEnv(seed, size=size, length=length)
    if player == "scripted":
        bot: Player = ScriptedPlayer(seed, noise=noise)
    elif player == "random":
        bot = RandomPlayer(seed)
    else:
        raise ValueError(f"player must be 'scripted' or 'random', got {player!r}")
    mp4, jsonl = out_dir / f"{name}.mp4", out_dir / f"{name}.jsonl"
    with H264Writer(mp4, size, size, fps) as video:
        result = play_episode(env, bot, on_step=lambda obs, action, info: video.write(obs))
    unlocked: list[list[str]] = [[] for _ in result.actions]
    for step, achievement in result.events:
        unlocked[step].append(achievement)
    # "events": the achievements each action unlocked (minesweep.data.events reads them at ingest)
    extra = [
        {"crafter": {"action": ACTIONS[a], "seed": seed}, **({"events": names} if names else {})}
        for a, names in zip(result.actions, unlocked, strict=True)
    ]
    with open(jsonl, "w") as f:
        for step in contractor_steps(result.actions, extra):
            f.write(json.dumps(step))
            f.write("\n")
    result.name = name
    return result


def _record_one(args: tuple) -> EpisodeResult:
    return write_crafter_episode(*args)


def record_crafter(
    out_dir: str | Path,
    episodes: int,
    first_seed: int = 0,
    length: int = 500,
    size: int = 128,
    noise: float = 0.05,
    workers: int | None = None,
    progress: bool = True,
    player: str = "scripted",
) -> list[EpisodeResult]:
    """Record ``episodes`` episodes ``crafter-0000`` ... of worlds ``first_seed + i`` into ``out_dir``.

    ``workers`` processes play in parallel (default: the CPU count); the files are the same for any number of them.
    Writes the summary ``crafter_episodes.json`` and returns the results in episode order.
    """
    if episodes <= 0:
        raise ValueError(f"episodes must be positive, got {episodes}")
    if size % 2:
        raise ValueError(f"size must be even for H.264 yuv420p, got {size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = max(1, min(int(workers or os.cpu_count() or 1), episodes))
    jobs = [(out_dir, f"crafter-{i:04d}", first_seed + i, length, size, noise, 20, player) for i in range(episodes)]

    results: list[EpisodeResult | None] = [None] * episodes
    bar = counting_bar(progress, "games")
    with bar:
        task = bar.add_task(f"recording Crafter ({workers} workers)", total=episodes)
        if workers == 1:
            for i, job in enumerate(jobs):
                results[i] = _record_one(job)
                bar.advance(task)
        else:
            # spawn: the caller may hold torch's thread pools, which a fork would copy mid-use
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context) as pool:
                for i, result in enumerate(pool.map(_record_one, jobs)):
                    results[i] = result
                    bar.advance(task)
    done = [r for r in results if r is not None]
    summary = {
        "first_seed": first_seed,
        "episodes": episodes,
        "length": length,
        "size": size,
        "noise": noise,
        "player": player,
        "mean_return": float(np.mean([r.episode_return for r in done])),
        "results": [{k: v for k, v in asdict(r).items() if k not in ("actions", "events")} for r in done],
    }
    (out_dir / SUMMARY).write_text(json.dumps(summary, indent=1))
    return done


class CrafterRecordings:
    """A recording recipe for ``MineDataModule(demo=...)``: called with a folder, records scripted episodes into it.

    The store it is ingested into keeps the recorded frame size (``resolution``: no resampling) and uses ``codec``
    (``raw``: a window is one read, nothing to decode, which on two cores leaves the CPU to training)."""

    def __init__(
        self,
        episodes: int = 24,
        length: int = 300,
        first_seed: int = 0,
        size: int = 128,
        noise: float = 0.05,
        workers: int | None = None,
        progress: bool = True,
        codec: str = "h264",
    ) -> None:
        self.episodes, self.length, self.first_seed = int(episodes), int(length), int(first_seed)
        self.size, self.noise, self.workers, self.progress = int(size), float(noise), workers, bool(progress)
        self.codec = str(codec)

    @property
    def resolution(self) -> int:
        return self.size

    def __call__(self, out_dir: str | Path) -> list[EpisodeResult]:
        return record_crafter(
            out_dir,
            self.episodes,
            first_seed=self.first_seed,
            length=self.length,
            size=self.size,
            noise=self.noise,
            workers=self.workers,
            progress=self.progress,
        )

    def __repr__(self) -> str:
        return (
            f"CrafterRecordings(episodes={self.episodes}, length={self.length}, first_seed={self.first_seed}, "
            f"size={self.size}, noise={self.noise}, codec={self.codec!r})"
        )
