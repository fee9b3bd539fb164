"""``minesweep-eval``: let a trained policy play Crafter, next to a random and the scripted player.

    minesweep-eval eval.checkpoint=outputs/demo/runs/default/checkpoints/last.ckpt [eval.episodes=30 ...]

Arguments are Hydra overrides of ``conf/train.yaml`` (its ``eval`` group, ``conf/eval/crafter.yaml``). The policy is
built from the policy config stored inside the checkpoint (so training-time overrides such as ``policy.hidsize``
apply, and no side file is trusted); for older checkpoints from the ``config.yaml`` of the checkpoint's run folder,
checked against the same allow-list as any config (minesweep.allowed_targets), else from ``policy`` in the composed
config. Every player plays the same held-out worlds
``eval.first_seed + i``; the policy acts on one frame at a time with its memory carried from step to step
(``get_action`` from ``initial_state``). Writes to ``eval.output_dir`` (default: ``eval/`` in the run folder):

* ``results.json``: per player the mean return, its standard error, the mean length, the returns, and the success
  rate of each achievement (the fraction of episodes that unlocked it);
* ``achievements.png``: the success rates, policy vs random vs scripted, as bars;
* ``episode.mp4``: the policy's first episode (up to ``eval.video.max_steps`` steps).
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from minesweep.allowed_targets import RefusedTarget
from minesweep.envs.crafter import ACHIEVEMENTS, CrafterEnv, agent_to_action
from minesweep.envs.crafter_record import EpisodeResult, Player, play_episode
from minesweep.policies.base import MinePolicy

__all__ = ["load_policy", "PolicyPlayer", "evaluate_players", "summarize", "plot_achievements", "evaluate_checkpoint", "main"]

log = logging.getLogger("minesweep")

EnvFactory = Callable[..., CrafterEnv]  # called with the world seed


class PolicyPlayer:
    """A MinePolicy as a Crafter player: one frame per call, its memory carried from step to step.

    The sampled VPT buttons index is mapped back to a Crafter action (``agent_to_action``: an action outside the 17
    plays noop); the camera half of the action has no Crafter meaning and is ignored.

    ``video_frames``: pass each frame through the RGB -> yuv420p -> RGB conversion that recordings go through
    (H.264 stores colour at half resolution), so the policy sees colours as it saw them in training.
    """

    name = "policy"

    def __init__(self, policy: MinePolicy, deterministic: bool = False, video_frames: bool = False) -> None:
        self.policy, self.deterministic, self.video_frames = policy, bool(deterministic), bool(video_frames)
        self.state: Any = None
        self.first = True

    def reset(self, seed: int) -> None:
        torch.manual_seed(seed)  # the sampled actions follow the world seed (callers fork the RNG where it matters)
        self.state = self.policy.initial_state(1)
        self.first = True

    @torch.no_grad()
    def act(self, obs: np.ndarray, info: dict) -> int:
        device = self.policy.device
        if self.video_frames:
            obs = as_video_frame(obs)
        image = torch.from_numpy(np.ascontiguousarray(obs)).to(device)[None, None]  # (1, 1, H, W, 3) uint8
        first = torch.tensor([[self.first]], dtype=torch.bool, device=device)
        action, self.state = self.policy.get_action({"image": image, "first": first}, self.state,
                                                    deterministic=self.deterministic)
        self.first = False
        return int(agent_to_action(int(action["buttons"].reshape(-1)[0])))


def as_video_frame(rgb: np.ndarray) -> np.ndarray:
    """``rgb`` after the colour conversion of an H.264 recording and its decoding: RGB -> yuv420p -> RGB (PyAV)."""
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(format="yuv420p").reformat(format="rgb24").to_ndarray()


def evaluate_players(players: Mapping[str, Any], env_factory: EnvFactory, seeds: Sequence[int],
                     on_episode: Callable[[str, int, CrafterEnv], Callable | None] | None = None,
                     progress: bool = False) -> dict[str, list[EpisodeResult]]:
    """Every player plays every world in ``seeds`` once (players have ``reset(seed)`` and ``act(obs, info)``).

    ``on_episode(player_name, seed, env)`` may return an ``on_step(obs, action, info)`` hook for that episode.
    """
    from minesweep.envs.crafter_record import _progress

    results: dict[str, list[EpisodeResult]] = {name: [] for name in players}
    with _progress(progress) as bar:
        task = bar.add_task("evaluating on Crafter", total=len(players) * len(seeds))
        for name, player in players.items():
            for seed in seeds:
                env = env_factory(seed=int(seed))
                player.reset(int(seed))
                hook = on_episode(name, int(seed), env) if on_episode is not None else None
                result = play_episode(env, player, on_step=hook)
                result.player = name
                results[name].append(result)
                bar.advance(task)
    return results


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


def _saved_policy_config(checkpoint: Path) -> dict | None:
    """The policy config MineLightning stored in ``checkpoint`` (``minesweep_policy_config``), or None (an older
    checkpoint, a plain state dict). Read with ``weights_only=True``: the checkpoint is data, never code."""
    from minesweep.trainer import POLICY_CONFIG_KEY

    try:
        try:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)  # tensors stay on disk
        except RuntimeError:  # mmap needs the zip format; older files are read whole
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling refused or not a torch file
        raise ValueError(f"eval.checkpoint: cannot read {checkpoint} as a tensor-only torch file: {error}") from error
    config = saved.get(POLICY_CONFIG_KEY) if isinstance(saved, Mapping) else None
    if config is not None and not isinstance(config, Mapping):
        raise ValueError(f"eval.checkpoint: {checkpoint}'s '{POLICY_CONFIG_KEY}' is a {type(config).__name__}, not a dict")
    return dict(config) if config is not None else None


def _policy_config(cfg: DictConfig | None, checkpoint: Path) -> tuple[Any, str]:
    """The policy config to build ``checkpoint``'s policy from, and where it came from (for refusals):

    1. the config stored inside the checkpoint (every checkpoint minesweep writes has one);
    2. for older checkpoints, ``<run>/config.yaml`` beside ``<run>/checkpoints/``: a file anyone with access to
       the run folder may have edited, so it is untrusted like any config (build_policy checks its targets);
    3. else ``policy`` in ``cfg`` (the composed config), when given.
    """
    saved = _saved_policy_config(checkpoint)
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
    if cfg is None:
        raise ValueError(f"{checkpoint} holds no policy config (an older checkpoint) and has no run config.yaml beside "
                         f"its folder: pass the policy's config")
    return cfg.policy, "policy"


def load_policy(cfg: DictConfig | None, checkpoint: str | Path) -> MinePolicy:
    """Build the policy for ``checkpoint`` (see :func:`_policy_config`; ``cfg=None``: from the checkpoint alone)
    and load its weights strictly."""
    from minesweep.train import build_policy

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"eval.checkpoint: no checkpoint file at {checkpoint}")
    policy_cfg, source = _policy_config(cfg, checkpoint)
    policy_cfg = OmegaConf.create(OmegaConf.to_container(policy_cfg, resolve=True) if OmegaConf.is_config(policy_cfg)
                                  else policy_cfg)
    policy_cfg.weights = str(checkpoint)
    return build_policy(policy_cfg, key=source).eval()


def _instantiate(node: Any, key: str) -> Any:
    from hydra.utils import instantiate

    from minesweep.allowed_targets import only_allowed

    with only_allowed(node, key):
        return instantiate(node)


def evaluate_checkpoint(cfg: DictConfig) -> dict[str, Any]:
    """Run the evaluation ``cfg.eval`` describes; write results.json, achievements.png, episode.mp4; return results."""
    ev = cfg.eval
    if not ev.get("checkpoint"):
        raise ValueError("eval.checkpoint is not set: minesweep-eval eval.checkpoint=RUN/checkpoints/last.ckpt")
    checkpoint = Path(ev.checkpoint)
    policy = load_policy(cfg, checkpoint)
    out = Path(ev.output_dir) if ev.get("output_dir") else checkpoint.resolve().parent.parent / "eval"
    out.mkdir(parents=True, exist_ok=True)
    env_factory = _instantiate(ev.env, "eval.env")
    seeds = [int(ev.first_seed) + i for i in range(int(ev.episodes))]
    players: dict[str, Any] = {"policy": PolicyPlayer(policy, deterministic=ev.deterministic,
                                                      video_frames=ev.get("video_frames", False))}
    for name, node in (ev.get("baselines") or {}).items():
        if node is not None:
            players[name] = _instantiate(node, f"eval.baselines.{name}")

    video = ev.get("video") or {}
    writer_box: list = []

    def on_episode(name: str, seed: int, env: CrafterEnv) -> Callable | None:
        if name != "policy" or seed != seeds[0] or not video.get("max_steps"):
            return None
        from minesweep.data.store import H264Writer

        size = int(video.get("size", 256))
        writer = H264Writer(out / "episode.mp4", size, size, fps=int(video.get("fps", 10)))
        writer_box.append(writer)

        def on_step(obs: np.ndarray, action: int, info: dict) -> None:
            if writer.count < int(video.max_steps):
                writer.write(env.render(size))
        return on_step

    try:
        with torch.random.fork_rng():
            results = evaluate_players(players, env_factory, seeds, on_episode=on_episode,
                                       progress=bool(ev.get("progress", True)))
    finally:
        for writer in writer_box:
            writer.close()
    summaries = {name: summarize(rs) for name, rs in results.items()}
    random_return = summaries.get("random", {}).get("mean_return")
    report = {
        "checkpoint": str(checkpoint),
        "worlds": {"first_seed": seeds[0], "episodes": len(seeds)},
        "env": OmegaConf.to_container(ev.env, resolve=True),
        "deterministic": bool(ev.deterministic),
        "video_frames": bool(ev.get("video_frames", False)),
        "players": summaries,
        "return_vs_random": (summaries["policy"]["mean_return"] / random_return) if random_return else None,
    }
    (out / "results.json").write_text(json.dumps(report, indent=1))
    plot_achievements(summaries, out / "achievements.png",
                      title=f"Crafter: {len(seeds)} held-out worlds, {checkpoint.name}")
    report["output_dir"] = str(out)
    return report


def print_report(report: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Crafter evaluation ({report['worlds']['episodes']} worlds from seed "
                        f"{report['worlds']['first_seed']})")
    players = list(report["players"])
    table.add_column("")
    for name in players:
        table.add_column(name, justify="right")
    table.add_row("return", *[f"{report['players'][p]['mean_return']:.2f} ± {report['players'][p]['stderr_return']:.2f}"
                              for p in players])
    table.add_row("length", *[f"{report['players'][p]['mean_length']:.0f}" for p in players])
    for a in ACHIEVEMENTS:
        rates = [report["players"][p]["success_rates"][a] for p in players]
        if any(rates):
            table.add_row(a, *[f"{r:.2f}" for r in rates])
    Console().print(table)
    if report.get("return_vs_random"):
        print(f"policy return / random return: {report['return_vs_random']:.2f}")
    print(f"wrote {report['output_dir']}/results.json, achievements.png, episode.mp4")


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """``conf/train.yaml`` with ``overrides`` (no Hydra run folder: the evaluation writes only its own outputs)."""
    from hydra import compose, initialize_config_dir

    from minesweep.train import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        # paths.output_dir refers to Hydra's runtime, which compose() does not set: give it a harmless value
        return compose("train", overrides=["paths.output_dir=.", *overrides])


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = evaluate_checkpoint(compose_config(args))
    except (FileNotFoundError, ValueError, KeyError, RefusedTarget) as err:
        print(f"minesweep-eval: {err}", file=sys.stderr)
        return 1
    print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
