"""Dealing evaluation worlds to processes: each job (the policy, a baseline player) has a list of worlds; with
``workers > 1`` every process gets every ``workers``-th world of each job and plays them, so the CPU cores step
Crafter in parallel. Results do not depend on the number of processes: a world is played the same way wherever it is
played (its own env, its own player RNG, and for the policy its own sampling generator, minesweep.eval_batch).

A progress bar over worlds (rich, with the time remaining) advances as each world ends, in whichever process.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import queue as queue_module
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch
from hydra.utils import instantiate

from minesweep.allowed_targets import only_allowed
from minesweep.envs.crafter_record import EpisodeResult, play_episode
from minesweep.eval_batch import BatchedPolicy, EnvFactory, VideoSpec, play_policy
from minesweep.rich_bar import counting_bar

__all__ = ["EnvSpec", "env_factory", "WorldsJob", "PolicyJob", "PlayerJob", "play_jobs", "available_cpus"]

OnResult = Callable[[EpisodeResult], None]
#: A job's env: a factory called with ``seed=``, or its config (``_target_``, ``_partial_: true``) as plain data,
#: built where the job plays (Hydra's partial factories cannot be pickled to a worker process).
EnvSpec = EnvFactory | Mapping[str, Any]


def env_factory(env: EnvSpec, key: str = "eval.env") -> EnvFactory:
    """``env`` itself if it is a factory, else the factory its config builds (checked against the allow-list)."""
    if callable(env):
        return env
    with only_allowed(env, key):
        return instantiate(env)


class WorldsJob(Protocol):
    """Plays a list of worlds, reporting each episode as it ends. Picklable, for workers that are spawned."""

    name: str

    def play(self, seeds: Sequence[int], on_result: OnResult) -> None: ...


class PolicyJob:
    """The policy, batched across the worlds it is given (``batch_size`` at most at a time; None: all)."""

    def __init__(
        self,
        policy: torch.nn.Module,
        env: EnvSpec,
        deterministic: bool = False,
        video_frames: bool = False,
        eval_seed: int = 0,
        batch_size: int | None = None,
        video: VideoSpec | None = None,
        name: str = "policy",
    ) -> None:
        self.policy, self.env, self.deterministic, self.video_frames = policy, env, deterministic, video_frames
        self.eval_seed, self.batch_size, self.video, self.name = eval_seed, batch_size, video, name

    @property
    def fork_safe(self) -> bool:
        """A forked worker may use a CPU policy as it is (copy-on-write); CUDA does not survive a fork."""
        return all(not t.is_cuda for t in self.policy.state_dict().values())

    def for_workers(self) -> PolicyJob:
        """This job with a copy of the policy: pickling a tensor for another process moves its storage to shared
        memory in place, which must not happen to the caller's policy (a model still in training)."""
        job = copy.copy(self)
        job.policy = copy.deepcopy(self.policy)
        return job

    def play(self, seeds: Sequence[int], on_result: OnResult) -> None:
        batch = BatchedPolicy(self.policy, self.deterministic, self.video_frames, self.eval_seed)
        play_policy(
            batch,
            env_factory(self.env),
            seeds,
            on_result,
            batch_size=self.batch_size,
            video=self.video,
            player=self.name,
        )


class PlayerJob:
    """A player with ``reset(seed)`` and ``act(obs, info)`` (RandomPlayer, ScriptedPlayer), one world after another.

    ``on_episode(name, seed, env)`` may return an ``on_step(obs, action, info)`` hook for that episode (in this
    process only: a hook does not travel to workers).
    """

    def __init__(
        self, name: str, player: Any, env: EnvSpec, on_episode: Callable[[str, int, Any], Callable | None] | None = None
    ) -> None:
        self.name, self.player, self.env, self.on_episode = name, player, env, on_episode

    def play(self, seeds: Sequence[int], on_result: OnResult) -> None:
        make_env = env_factory(self.env)
        for seed in seeds:
            env = make_env(seed=int(seed))
            self.player.reset(int(seed))
            hook = self.on_episode(self.name, int(seed), env) if self.on_episode is not None else None
            result = play_episode(env, self.player, on_step=hook)
            result.player = self.name
            on_result(result)


def available_cpus() -> int:
    """The CPU cores this process may run on (its affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def play_jobs(
    jobs: Sequence[tuple[WorldsJob, Sequence[int]]],
    workers: int = 1,
    progress: bool = False,
    description: str = "evaluating on Crafter",
    start_method: str | None = None,
) -> dict[str, list[EpisodeResult]]:
    """Play each job's worlds; return each job's episodes in the order of its seeds.

    ``workers > 1``: that many processes, each with ``available_cpus() // workers`` torch threads, started with
    ``start_method`` (default: ``fork`` on Linux when every job allows it, as a policy on the CPU does: a forked
    worker starts at once, a spawned one imports torch and the caller's main module first);
    ``workers == 1`` plays in this process."""
    results: dict[str, list[EpisodeResult]] = {job.name: [] for job, _ in jobs}
    jobs = [(job, [int(s) for s in seeds]) for job, seeds in jobs if len(seeds)]
    total = sum(len(seeds) for _, seeds in jobs)
    workers = max(1, min(int(workers), total))
    if workers == 1:
        with counting_bar(progress, "worlds") as bar:
            task = bar.add_task(description, total=total)

            def collect(result: EpisodeResult) -> None:
                results[result.player].append(result)
                bar.advance(task)

            for job, seeds in jobs:
                job.play(seeds, collect)
    else:
        if start_method is None:  # fork only on Linux: macOS's system libraries are not fork-safe
            forkable = sys.platform.startswith("linux") and all(getattr(job, "fork_safe", True) for job, _ in jobs)
            start_method = "fork" if forkable else "spawn"
        if start_method != "fork":
            jobs = [(job.for_workers() if hasattr(job, "for_workers") else job, seeds) for job, seeds in jobs]
        shares = [[(job, seeds[w::workers]) for job, seeds in jobs] for w in range(workers)]
        with _Workers(shares, start_method, max(1, available_cpus() // workers)) as pool:
            # after the fork: no progress-bar thread is copied into the workers
            with counting_bar(progress, "worlds") as bar:
                task = bar.add_task(description, total=total)
                for result in pool.results():
                    results[result.player].append(result)
                    bar.advance(task)
    for job, seeds in jobs:
        order = {seed: i for i, seed in enumerate(seeds)}
        results[job.name].sort(key=lambda r: order[r.seed])
    return results


class _Workers:
    """Worker processes playing their shares, reporting each episode on a queue; stopped on leaving the block."""

    def __init__(self, shares: list[list[tuple[WorldsJob, list[int]]]], start_method: str, threads: int) -> None:
        context = multiprocessing.get_context(start_method)
        self.messages = context.Queue()
        self.processes = [
            context.Process(
                target=_worker, args=(share, self.messages, threads), daemon=True, name=f"minesweep-eval-{w}"
            )
            for w, share in enumerate(shares)
        ]

    def __enter__(self) -> _Workers:
        for process in self.processes:
            process.start()
        return self

    def results(self) -> Iterator[EpisodeResult]:
        finished = 0
        while finished < len(self.processes):
            try:
                kind, payload = self.messages.get(timeout=0.5)
            except queue_module.Empty:
                dead = [p for p in self.processes if p.exitcode not in (None, 0)]
                if dead:  # killed (out of memory, a signal) before it could report
                    raise RuntimeError(f"eval worker {dead[0].name} died with exit code {dead[0].exitcode}") from None
                continue
            if kind == "result":
                yield payload
            elif kind == "done":
                finished += 1
            else:
                raise RuntimeError(f"an eval worker failed:\n{payload}")
        for process in self.processes:
            process.join()

    def __exit__(self, *exc: Any) -> None:
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join()


def _worker(share: list[tuple[WorldsJob, list[int]]], messages: Any, threads: int) -> None:
    torch.set_num_threads(threads)  # the processes share the cores: no thread oversubscription
    try:
        for job, seeds in share:
            job.play(seeds, lambda result: messages.put(("result", result)))
        messages.put(("done", None))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        messages.put(("error", traceback.format_exc()))
