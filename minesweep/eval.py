"""Evaluation as a library: let a trained policy play Crafter, next to a random and the scripted player.

The ``minesweep-eval`` command (:mod:`minesweep.eval_cli`, config ``conf/evaluate.yaml``) calls
:func:`evaluate_checkpoint`; the final and online evaluations of training call :func:`evaluate_policy` and
:func:`summarize`. The policy is built from the policy config stored inside the checkpoint (so training-time
overrides such as ``policy.hidsize`` apply, and no side file is trusted); for older checkpoints from the
``config.yaml`` of the checkpoint's run folder, checked against the same allow-list as any config
(minesweep.allowed_targets), else from ``policy`` in the config. It plays at the frame size stored in the checkpoint
unless ``eval.env.size`` says otherwise. Every player plays the same held-out worlds ``eval.first_seed + i``.

The policy plays its worlds batched (minesweep.eval_batch): one forward per step over all worlds still playing,
each world with its own memory row and its own sampling generator (from the world seed and ``eval.seed``), so a
world's episode does not depend on the batching; ``eval.workers`` processes share the worlds (``auto``: one per
CPU core). The baselines' episodes depend only on the worlds, the env settings, the game version and their own
config: they are cached under ``paths.cache_dir`` (minesweep.eval_cache) and played only once.
Writes to ``eval.output_dir`` (default: ``eval/`` in the run folder):

* ``results.json``: per player the mean return, its standard error, the mean length, the returns, the success
  rate of each achievement (the fraction of episodes that unlocked it) and, for baselines, whether they came from
  the cache;
* ``achievements.png``: the success rates, policy vs random vs scripted, as bars;
* ``episode.mp4``: the policy's first episode (up to ``eval.video.max_steps`` steps).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from minesweep.allowed_targets import allowed_targets, check_targets, only_allowed
from minesweep.envs.crafter import ACHIEVEMENTS, CrafterEnv
from minesweep.envs.crafter_record import EpisodeResult
from minesweep.eval_batch import BatchedPolicy, VideoSpec, as_video_frame, state_is_batch_first
from minesweep.eval_cache import BaselineCache, baseline_key
from minesweep.eval_parallel import PlayerJob, PolicyJob, WorldsJob, available_cpus, play_jobs
from minesweep.policies.base import MinePolicy
from minesweep.policies.build import (  # not minesweep.train: no Lightning
    FRAME_SIZE_KEY,
    POLICY_CONFIG_KEY,
    build_policy,
)
from minesweep.policies.weights import load_policy_weights, read_policy_state_dict
from minesweep.searchpath import CONF_DIR

__all__ = [
    "load_policy",
    "PolicyPlayer",
    "as_video_frame",
    "evaluate_players",
    "summarize",
    "plot_achievements",
    "resolve_workers",
    "rng_untouched",
    "evaluate_policy",
    "evaluate_checkpoint",
    "print_report",
    "compose_config",
]

log = logging.getLogger("minesweep")

EnvFactory = Callable[..., CrafterEnv]  # called with the world seed


class PolicyPlayer:
    """A MinePolicy as a Crafter player for one world at a time: one frame per call, its memory carried from step to
    step, its actions sampled from the world's own generator (``eval_seed`` and the world seed), exactly as in a
    batch of worlds (minesweep.eval_batch.BatchedPolicy, which it is with one world).

    ``video_frames``: pass each frame through the RGB -> yuv420p -> RGB conversion that recordings go through
    (H.264 stores colour at half resolution), so the policy sees colours as it saw them in training.
    """

    name = "policy"

    def __init__(
        self, policy: MinePolicy, deterministic: bool = False, video_frames: bool = False, eval_seed: int = 0
    ) -> None:
        self.batch = BatchedPolicy(policy, deterministic, video_frames, eval_seed)

    policy = property(lambda self: self.batch.policy)
    deterministic = property(lambda self: self.batch.deterministic)
    video_frames = property(lambda self: self.batch.video_frames)
    state = property(lambda self: self.batch.state)

    def reset(self, seed: int) -> None:
        self.batch.remove(range(len(self.batch)))
        self.batch.add(int(seed))

    def act(self, obs: np.ndarray, info: dict) -> int:
        return int(self.batch.act([obs])[0])


def evaluate_players(
    players: Mapping[str, Any],
    env_factory: EnvFactory,
    seeds: Sequence[int],
    on_episode: Callable[[str, int, CrafterEnv], Callable | None] | None = None,
    progress: bool = False,
) -> dict[str, list[EpisodeResult]]:
    """Every player plays every world in ``seeds`` once, one world after another, in this process (players have
    ``reset(seed)`` and ``act(obs, info)``).

    ``on_episode(player_name, seed, env)`` may return an ``on_step(obs, action, info)`` hook for that episode.
    """
    jobs = [(PlayerJob(name, player, env_factory, on_episode), seeds) for name, player in players.items()]
    results = play_jobs(jobs, workers=1, progress=progress)
    return {name: results.get(name, []) for name in players}


def summarize(results: Sequence[EpisodeResult]) -> dict[str, Any]:
    """Mean return, its standard error (sample std / sqrt(n)), mean length and per-achievement success rates."""
    if not results:
        raise ValueError("no episodes to summarize")
    returns = np.array([r.episode_return for r in results], np.float64)
    n = len(returns)
    return {
        "episodes": n,
        "mean_return": float(returns.mean()),
        "stderr_return": float(returns.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        "mean_length": float(np.mean([r.length for r in results])),
        "mean_achievements": float(np.mean([len(r.unlocked()) for r in results])),
        "success_rates": {a: float(np.mean([r.achievements.get(a, 0) > 0 for r in results])) for a in ACHIEVEMENTS},
        "returns": [round(float(x), 4) for x in returns],
        "seeds": [r.seed for r in results],
    }


def plot_achievements(summaries: Mapping[str, Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Grouped bars of each achievement's success rate, one colour per player; the legend gives mean returns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summaries)
    x = np.arange(len(ACHIEVEMENTS))
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(12, 4.2))
    colours = {"policy": "tab:blue", "random": "tab:gray", "scripted": "tab:orange"}
    for k, name in enumerate(names):
        s = summaries[name]
        rates = [100 * s["success_rates"][a] for a in ACHIEVEMENTS]
        label = f"{name}: return {s['mean_return']:.2f} ± {s['stderr_return']:.2f}"
        ax.bar(x + (k - (len(names) - 1) / 2) * width, rates, width, label=label, color=colours.get(name))
    ax.set_xticks(x, [a.replace("_", " ") for a in ACHIEVEMENTS], rotation=50, ha="right", fontsize=8)
    ax.set_ylabel("success rate (%)")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _saved_facts(checkpoint: Path) -> tuple[dict | None, list[int] | None]:
    """The policy config and the training frame size MineLightning stored in ``checkpoint``, each None where it holds
    none (an older checkpoint, a plain state dict). Read with ``weights_only=True``: the checkpoint is data, never
    code."""
    try:
        try:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)  # tensors stay on disk
        except RuntimeError:  # mmap needs the zip format; older files are read whole
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused or not a torch file
        raise ValueError(f"eval.checkpoint: cannot read {checkpoint} as a tensor-only torch file: {error}") from error
    config = saved.get(POLICY_CONFIG_KEY) if isinstance(saved, Mapping) else None
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(
            f"eval.checkpoint: {checkpoint}'s '{POLICY_CONFIG_KEY}' is a {type(config).__name__}, not a dict"
        )
    size = saved.get(FRAME_SIZE_KEY) if isinstance(saved, Mapping) else None
    if size is not None and (
        not isinstance(size, (list, tuple)) or len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size)
    ):
        raise ValueError(f"eval.checkpoint: {checkpoint}'s '{FRAME_SIZE_KEY}' is {size!r}, not [height, width]")
    return (dict(config) if config is not None else None), (list(size) if size is not None else None)


def play_size(env: Mapping[str, Any], checkpoint: Path) -> int:
    """``eval.env.size``, or where it is null the frame size the checkpoint's policy was trained on (Crafter's frames
    are square); for an older checkpoint without it, ``data.demo.size`` of its run folder's config.yaml."""
    if env.get("size") is not None:
        return int(env["size"])
    size = _saved_facts(checkpoint)[1]
    if size is None:
        run_config = checkpoint.resolve().parent.parent / "config.yaml"
        demo_size = OmegaConf.select(OmegaConf.load(run_config), "data.demo.size") if run_config.is_file() else None
        if not isinstance(demo_size, int):
            raise ValueError(
                f"{checkpoint} does not say what frame size its policy was trained on (an older checkpoint): "
                f"set eval.env.size"
            )
        return demo_size
    if size[0] != size[1]:
        raise ValueError(f"{checkpoint}: the policy was trained on {size[0]}x{size[1]} frames; Crafter's are square")
    return size[0]


def _policy_config(cfg: DictConfig | None, checkpoint: Path) -> tuple[Any, str]:
    """The policy config to build ``checkpoint``'s policy from, and where it came from (for refusals):

    1. the config stored inside the checkpoint (every checkpoint minesweep writes has one);
    2. for older checkpoints, ``<run>/config.yaml`` beside ``<run>/checkpoints/``: a file anyone with access to
       the run folder may have edited, so it is untrusted like any config (build_policy checks its targets);
    3. else ``policy`` in ``cfg`` (the composed config), when given.
    """
    saved = _saved_facts(checkpoint)[0]
    if saved is not None:
        log.info("policy config from the checkpoint %s", checkpoint)
        return saved, f"{checkpoint}: minesweep_policy_config"
    run_config = checkpoint.resolve().parent.parent / "config.yaml"
    if run_config.is_file():
        saved_run = OmegaConf.load(run_config)
        if "policy" not in saved_run:
            raise KeyError(f"{run_config}: no 'policy' section to build the checkpoint's policy from")
        log.info("policy config from %s (the checkpoint holds none)", run_config)
        return saved_run.policy, f"{run_config}: policy"
    if cfg is None or cfg.get("policy") is None:
        raise ValueError(
            f"{checkpoint} holds no policy config (an older checkpoint) and has no run config.yaml beside "
            f"its folder: pass the policy's config (minesweep-eval +policy=tiny policy.hidsize=...)"
        )
    return cfg.policy, "policy"


def load_policy(cfg: DictConfig | None, checkpoint: str | Path, use_ema: bool = True) -> MinePolicy:
    """Build the policy for ``checkpoint`` (see :func:`_policy_config`; ``cfg=None``: from the checkpoint alone)
    and load its weights strictly: of a checkpoint trained with an EMA (callbacks/ema), the EMA weights, or the
    trained ones with ``use_ema=False``."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"eval.checkpoint: no checkpoint file at {checkpoint}")
    policy_cfg, source = _policy_config(cfg, checkpoint)
    policy_cfg = OmegaConf.create(
        OmegaConf.to_container(policy_cfg, resolve=True) if OmegaConf.is_config(policy_cfg) else policy_cfg
    )
    policy_cfg.weights = None
    policy = build_policy(policy_cfg, key=source)
    load_policy_weights(policy, read_policy_state_dict(checkpoint, trained=not use_ema), source=checkpoint)
    log.info("loaded policy weights from %s", checkpoint)
    return policy.eval()


def _instantiate(node: Any, key: str) -> Any:
    with only_allowed(node, key):
        return instantiate(node)


def resolve_workers(workers: int | str | None, policy: MinePolicy, worlds: int) -> int:
    """``eval.workers``: a number of processes, or ``auto``/None: one per CPU core this process may use, for a
    policy on the CPU (a GPU policy plays in this process). Never more than the worlds to play."""
    if workers in (None, "auto"):
        workers = available_cpus() if policy.device.type == "cpu" else 1
    elif not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"eval.workers must be a positive integer or 'auto', got {workers!r}")
    return max(1, min(int(workers), worlds))


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def evaluate_policy(
    policy: MinePolicy,
    env: Mapping[str, Any],
    seeds: Sequence[int],
    out: str | Path,
    *,
    baselines: Mapping[str, Mapping[str, Any] | None] | None = None,
    cache_dir: str | Path | None = None,
    deterministic: bool = False,
    video_frames: bool = False,
    eval_seed: int = 0,
    video: Mapping[str, Any] | None = None,
    workers: int | str | None = 1,
    batch_size: int | None = None,
    progress: bool = False,
    title: str = "",
    key: str = "eval",
    header: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Let ``policy`` play the worlds ``seeds`` in the env that the config ``env`` builds (``_partial_``, called with
    ``seed=``), next to the ``baselines`` (configs of players; their episodes from the cache under ``cache_dir``
    when there, played and cached otherwise); write ``out``/results.json, achievements.png and, if
    ``video['max_steps']``, episode.mp4 (the policy's first world). Returns the report: results.json's content
    (``header``'s entries first) plus ``output_dir``. ``key`` names the config section in refusals. The policy
    plays in eval mode; the caller's global RNG state is left as it was (each world samples from its own generator).

    ``batch_size``: worlds the policy plays at once per process (None: all of them; 1: one world after another);
    ``workers``: processes (:func:`resolve_workers`)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError(f"{key}: no worlds to play (episodes must be positive)")
    _instantiate(env, f"{key}.env")  # refused targets are refused here, before anything plays or is written
    env_config = _plain(env)  # what the jobs carry: workers build their own factory from it
    players = {
        name: _instantiate(node, f"{key}.baselines.{name}")
        for name, node in (baselines or {}).items()
        if node is not None
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    if not state_is_batch_first(policy) and batch_size != 1:
        log.info(
            "eval: %s's memory is not a list of batch-first tensors, so its worlds are played one at a time",
            type(policy).__name__,
        )
        batch_size = 1
    video_spec = None
    if video and video.get("max_steps"):
        video_spec = VideoSpec(
            str(out / "episode.mp4"),
            seed=seeds[0],
            max_steps=int(video["max_steps"]),
            size=int(video.get("size", 256)),
            fps=int(video.get("fps", 10)),
        )
    jobs: list[tuple[WorldsJob, list[int]]] = [
        (PolicyJob(policy, env_config, deterministic, video_frames, eval_seed, batch_size, video_spec), seeds)
    ]

    # the baselines: the cached worlds are read back, the others played with the policy's
    cache = BaselineCache(Path(cache_dir) / "eval-baselines") if cache_dir else None
    cached: dict[str, dict[int, EpisodeResult]] = {}
    keys: dict[str, dict[int, str]] = {}
    for name, player in players.items():
        keys[name] = {s: baseline_key(_plain(baselines[name]), env_config, s) for s in seeds}
        hits = {s: cache.load(keys[name][s], s) for s in seeds} if cache else {}
        cached[name] = {s: r for s, r in hits.items() if r is not None}
        missing = [s for s in seeds if s not in cached[name]]
        if missing:
            jobs.append((PlayerJob(name, player, env_config), missing))

    workers = resolve_workers(workers, policy, sum(len(s) for _, s in jobs))
    was_training = policy.training
    policy.eval()
    start = time.perf_counter()
    try:
        with rng_untouched():
            played = play_jobs(jobs, workers=workers, progress=progress, description=f"Crafter ×{workers} proc")
    finally:
        policy.train(was_training)
    seconds = time.perf_counter() - start

    results = {"policy": played["policy"]}
    cache_report = {}
    for name in players:
        for result in played.get(name, []):
            if cache is not None:
                cache.store(keys[name][result.seed], result)
            cached[name][result.seed] = result
        results[name] = [cached[name][s] for s in seeds]
        for result in results[name]:
            result.player = name
        hits = len(seeds) - len(played.get(name, []))
        cache_report[name] = {"from_cache": hits == len(seeds), "cached_worlds": hits}
    summaries = {name: summarize(rs) for name, rs in results.items()}
    for name, info in cache_report.items():
        summaries[name].update(info)
    random_return = summaries.get("random", {}).get("mean_return")
    report = {
        **(header or {}),
        "worlds": {"first_seed": seeds[0], "episodes": len(seeds)},
        "env": env_config,
        "deterministic": bool(deterministic),
        "video_frames": bool(video_frames),
        "eval_seed": int(eval_seed),
        "players": summaries,
        "return_vs_random": (summaries["policy"]["mean_return"] / random_return) if random_return else None,
        "baseline_cache": {"dir": str(cache.root) if cache else None, **cache_report},
        "play": {"seconds": round(seconds, 2), "workers": workers, "batch_size": batch_size},
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    plot_achievements(summaries, out / "achievements.png", title=title or f"Crafter: {len(seeds)} held-out worlds")
    report["output_dir"] = str(out)
    return report


@contextmanager
def rng_untouched() -> Iterator[None]:
    """Leave the global RNGs (torch, numpy, random) as they were: an evaluation inside a training run must not shift
    what the training draws next."""
    numpy_state, python_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng():
        try:
            yield
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation ``cfg.eval`` describes; write results.json, achievements.png, episode.mp4; return results."""
    ev = cfg.eval
    if not ev.get("checkpoint"):
        raise ValueError("eval.checkpoint is not set: minesweep-eval eval.checkpoint=RUN/checkpoints/last.ckpt")
    checkpoint = Path(ev.checkpoint)
    policy = load_policy(cfg, checkpoint, use_ema=bool(ev.get("use_ema", True)))
    out = Path(ev.output_dir) if ev.get("output_dir") else checkpoint.resolve().parent.parent / "eval"
    seeds = [int(ev.first_seed) + i for i in range(int(ev.episodes))]
    cache_dir = cfg.get("paths", {}).get("cache_dir") if ev.get("cache_baselines", True) else None
    check_targets(ev.env, "eval.env", allowed_targets())  # before anything is read on its behalf
    env = {**_plain(ev.env), "size": play_size(ev.env, checkpoint)}
    report = evaluate_policy(
        policy,
        env,
        seeds,
        out,
        baselines=ev.get("baselines") or {},
        cache_dir=cache_dir,
        deterministic=bool(ev.deterministic),
        video_frames=bool(ev.get("video_frames", False)),
        eval_seed=int(ev.get("seed", 0)),
        video=_plain(ev.get("video")) or None,
        workers=ev.get("workers", "auto"),
        batch_size=ev.get("batch_size"),
        progress=bool(ev.get("progress", True)),
        title=f"Crafter: {len(seeds)} held-out worlds, {checkpoint.name}",
        header={"checkpoint": str(checkpoint)},
    )
    return report


def print_report(report: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"Crafter evaluation ({report['worlds']['episodes']} worlds from seed {report['worlds']['first_seed']})"
    )
    players = list(report["players"])
    table.add_column("")
    for name in players:
        table.add_column(name, justify="right")
    table.add_row(
        "return",
        *[f"{report['players'][p]['mean_return']:.2f} ± {report['players'][p]['stderr_return']:.2f}" for p in players],
    )
    table.add_row("length", *[f"{report['players'][p]['mean_length']:.0f}" for p in players])
    for a in ACHIEVEMENTS:
        rates = [report["players"][p]["success_rates"][a] for p in players]
        if any(rates):
            table.add_row(a, *[f"{r:.2f}" for r in rates])
    Console().print(table)
    if report.get("return_vs_random"):
        print(f"policy return / random return: {report['return_vs_random']:.2f}")
    print(f"wrote {report['output_dir']}/results.json, achievements.png, episode.mp4")


def compose_config(overrides: Sequence[str], config: str = "evaluate") -> DictConfig:
    """``conf/<config>.yaml`` with ``overrides``, without a Hydra run (for scripts and tests): ``evaluate`` is what
    ``minesweep-eval`` reads, ``train`` what ``train.py`` does."""
    # train's paths.output_dir refers to Hydra's runtime, which compose() does not set: give it a harmless value
    runtime = ["paths.output_dir=."] if config == "train" else []
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose(config, overrides=[*runtime, *overrides])
