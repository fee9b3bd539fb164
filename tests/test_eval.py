"""minesweep-eval and the online-eval callback: statistics, the policy's carried memory, record -> train -> eval."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from minesweep.data.ingest import ingest
from minesweep.envs.crafter import ACHIEVEMENTS, CrafterEnv, agent_to_action
from minesweep.envs.crafter_player import RandomPlayer
from minesweep.envs.crafter_record import EpisodeResult, play_episode, record_crafter
from minesweep.eval import PolicyPlayer, main as eval_main, plot_achievements, summarize
from minesweep.online_eval import OnlineEvalCallback
from minesweep.policies.tiny import TinyPolicy
from minesweep.train import train
from tests.conftest import CONF_DIR, REPO
from tests.helpers import SMALL_RUN


def result(ret: float, unlocked: list[str], length: int = 10) -> EpisodeResult:
    return EpisodeResult(seed=0, player="x", length=length, episode_return=ret,
                         achievements={a: int(a in unlocked) for a in ACHIEVEMENTS})


def test_summarize_mean_stderr_and_rates():
    s = summarize([result(1.0, ["collect_wood"], 10), result(3.0, ["collect_wood", "place_table"], 20),
                   result(5.0, [], 30)])
    assert s["mean_return"] == pytest.approx(3.0)
    assert s["stderr_return"] == pytest.approx(2.0 / math.sqrt(3))  # sample std 2
    assert s["mean_length"] == pytest.approx(20.0)
    assert s["success_rates"]["collect_wood"] == pytest.approx(2 / 3)
    assert s["success_rates"]["place_table"] == pytest.approx(1 / 3)
    assert s["success_rates"]["collect_diamond"] == 0.0
    assert set(s["success_rates"]) == set(ACHIEVEMENTS)
    with pytest.raises(ValueError):
        summarize([])


def test_policy_player_carries_memory_step_by_step():
    """Acting one frame at a time from initial_state gives the same actions as one pass over the whole episode."""
    torch.manual_seed(0)
    policy = TinyPolicy(hidsize=32).eval()
    frames = []
    play_episode(CrafterEnv(7, length=25), RandomPlayer(7), on_step=lambda obs, a, info: frames.append(obs.copy()))
    images = torch.from_numpy(np.stack(frames))[None]  # (1, T, H, W, 3)
    first = torch.zeros(1, len(frames), dtype=torch.bool)
    first[0, 0] = True
    with torch.no_grad():
        latents, _ = policy({"image": images, "first": first})
    whole = agent_to_action(latents["pi_logits"]["buttons"][0, :, 0].argmax(-1).numpy())

    player = PolicyPlayer(policy, deterministic=True)
    player.reset(0)
    stepped = [player.act(obs, {}) for obs in frames]
    np.testing.assert_array_equal(stepped, whole)
    # without the carried memory the actions would differ: the GRU state matters
    assert not torch.equal(player.state[0], policy.initial_state(1)[0])


def test_video_frames_lose_colour_detail_like_recordings():
    from minesweep.eval import as_video_frame

    obs, _ = CrafterEnv(5, length=10).reset()
    converted = as_video_frame(obs)
    assert converted.shape == obs.shape and converted.dtype == np.uint8
    error = np.abs(converted.astype(int) - obs.astype(int)).mean()
    assert 1 < error < 10  # chroma at half resolution: visibly different, still the same picture


def test_plot_achievements_writes_png(tmp_path):
    s = summarize([result(1.0, ["collect_wood"]), result(2.0, ["place_table"])])
    path = plot_achievements({"policy": s, "random": s}, tmp_path / "chart.png", title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_online_eval_logs_return_and_leaves_training_rng_alone():
    from functools import partial

    callback = OnlineEvalCallback(env=partial(CrafterEnv, size=64, length=15), every_n_steps=5, episodes=2,
                                  first_seed=3)
    policy = TinyPolicy(hidsize=16)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    metrics = callback.evaluate(policy)
    assert torch.equal(torch.rand(3), expected)
    assert policy.training  # restored
    assert set(metrics) == {"eval/return", "eval/return_stderr", "eval/length", "eval/achievements"}
    assert 0 < metrics["eval/length"] <= 15


def _online_eval_on_rank(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    from functools import partial

    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        torch.manual_seed(0)  # the same weights on every rank, as DDP keeps them
        policy = TinyPolicy(hidsize=16)
        callback = OnlineEvalCallback(env=partial(CrafterEnv, size=64, length=15), episodes=5, first_seed=3,
                                      deterministic=True)
        metrics = callback.evaluate(policy, rank=rank, world_size=world_size)
        torch.save({"metrics": metrics, "played": callback.played_seeds}, f"{out_dir}/rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_online_eval_deals_worlds_across_ddp_ranks_and_gathers_them(tmp_path):
    """Two ranks play disjoint halves of the worlds, and both log the figures of all of them: those of one process
    playing every world."""
    from functools import partial

    torch.multiprocessing.spawn(_online_eval_on_rank, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["played"] == [3, 5, 7] and ranks[1]["played"] == [4, 6]
    torch.manual_seed(0)
    single = OnlineEvalCallback(env=partial(CrafterEnv, size=64, length=15), episodes=5, first_seed=3,
                                deterministic=True).evaluate(TinyPolicy(hidsize=16))
    for rank in ranks:
        assert rank["metrics"] == pytest.approx(single)


def test_eval_and_callback_configs_compose_and_instantiate():
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=["callbacks/online_eval=crafter", "paths.output_dir=/tmp/x"])
    assert cfg.eval.first_seed >= 1_000_000 and cfg.callbacks.online_eval.first_seed != cfg.eval.first_seed
    callback = instantiate(cfg.callbacks.online_eval)
    assert isinstance(callback, OnlineEvalCallback)
    assert callback.every_n_steps == cfg.trainer.val_check_interval
    env = instantiate(cfg.eval.env)(seed=1)
    assert isinstance(env, CrafterEnv) and env.size == 128
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        plain = compose("train", overrides=["paths.output_dir=/tmp/x"])
    assert plain.callbacks.get("online_eval") is None  # off unless selected


@pytest.mark.slow
def test_record_ingest_train_eval(tmp_path):
    """The whole loop on a small scale: Crafter recordings -> store -> training with online eval -> minesweep-eval."""
    record_crafter(tmp_path / "raw", episodes=4, length=60, workers=2, progress=False)
    assert ingest(tmp_path / "raw", tmp_path / "store", resolution=(64, 64), print_summary=False).ingested
    run = tmp_path / "run"
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=[
            *SMALL_RUN, f"data.root={tmp_path / 'store'}", f"paths.output_dir={run}", "logger=csv",
            "trainer.max_steps=12", "trainer.val_check_interval=6", "callbacks/online_eval=crafter",
            "callbacks.online_eval.episodes=2", "eval.env.size=64", "eval.env.length=40",
            "optimized_metric=eval/return",
        ])
    metrics = train(cfg)
    assert "eval/return" in metrics and math.isfinite(metrics["eval/return"])
    assert metrics["eval/length"] <= 40
    rows = (run / "csv").glob("version_*/metrics.csv")
    assert any("eval/return" in p.read_text().splitlines()[0] for p in rows)

    checkpoint = run / "checkpoints" / "last.ckpt"
    assert eval_main([f"eval.checkpoint={checkpoint}", "eval.episodes=2", "eval.env.size=64", "eval.env.length=40",
                      "eval.video.max_steps=20", "eval.video.size=64", "eval.progress=false"]) == 0
    out = run / "eval"
    report = json.loads((out / "results.json").read_text())
    assert set(report["players"]) == {"policy", "random", "scripted"}
    assert report["players"]["policy"]["episodes"] == 2 and report["worlds"]["first_seed"] == 1_000_000
    assert report["players"]["random"]["seeds"] == report["players"]["policy"]["seeds"]
    assert (out / "achievements.png").stat().st_size > 1000
    from minesweep.data.ingest import _decoded_frames

    video = np.concatenate(list(_decoded_frames(out / "episode.mp4", (64, 64), None)))
    assert 1 <= len(video) <= 20
    assert eval_main(["eval.checkpoint=/nonexistent.ckpt"]) == 1


@pytest.mark.slow
def test_crafter_bc_benchmark_runs_end_to_end_and_reports_the_targets(tmp_path):
    """benchmarks/crafter_bc.py at a toy scale: record -> ingest -> train -> evaluate, figures checked against the
    targets (a 3-step policy misses them: exit code 1, not a crash)."""
    args = [sys.executable, "benchmarks/crafter_bc.py", "--episodes", "2", "--length", "40", "--steps", "3",
            "--eval-episodes", "2", "--workers", "1", "--out", str(tmp_path), *SMALL_RUN, "data.val_fraction=0.5",
            "trainer.val_check_interval=2", "eval.env.length=20", "eval.progress=false"]
    result = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "WANDB_MODE": "disabled"})
    assert result.returncode in (0, 1), result.stderr[-3000:]
    for line in ("machine:", "recordings: 2 episodes", "training: 3 steps", "return_vs_random", "collect_wood",
                 "place_table"):
        assert line in result.stdout, result.stdout[-3000:]
    figures = json.loads((tmp_path / "benchmark.json").read_text())
    assert figures["steps"] == 3 and set(figures["figures"]) == {"return_vs_random", "collect_wood", "place_table"}
    assert (tmp_path / "run" / "eval" / "results.json").is_file()
    assert (tmp_path / "run" / "eval" / "achievements.png").is_file()
