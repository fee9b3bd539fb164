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
from omegaconf import OmegaConf

from minesweep.data.ingest.contractor import ingest
from minesweep.envs.crafter import ACHIEVEMENTS, CrafterEnv, agent_to_action
from minesweep.envs.crafter_player import RandomPlayer
from minesweep.envs.crafter_record import EpisodeResult, play_episode, record_crafter
from minesweep.eval import PolicyPlayer, plot_achievements, summarize
from minesweep.final_eval import FinalEvalCallback
from minesweep.online_eval import OnlineEvalCallback
from minesweep.policies.tiny import TinyPolicy
from minesweep.train import train
from tests.conftest import CONF_DIR, REPO
from tests.helpers import SMALL_RUN
from tests.helpers import run_eval_cli as eval_main


def result(ret: float, unlocked: list[str], length: int = 10) -> EpisodeResult:
    return EpisodeResult(
        seed=0,
        player="x",
        length=length,
        episode_return=ret,
        achievements={a: int(a in unlocked) for a in ACHIEVEMENTS},
    )


def test_summarize_mean_stderr_and_rates():
    s = summarize(
        [result(1.0, ["collect_wood"], 10), result(3.0, ["collect_wood", "place_table"], 20), result(5.0, [], 30)]
    )
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

    callback = OnlineEvalCallback(
        env=partial(CrafterEnv, size=64, length=15), every_n_steps=5, episodes=2, first_seed=3
    )
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
        callback = OnlineEvalCallback(
            env=partial(CrafterEnv, size=64, length=15), episodes=5, first_seed=3, deterministic=True
        )
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
    single = OnlineEvalCallback(
        env=partial(CrafterEnv, size=64, length=15), episodes=5, first_seed=3, deterministic=True
    ).evaluate(TinyPolicy(hidsize=16))
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
    assert isinstance(env, CrafterEnv) and env.size == 64
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        plain = compose("train", overrides=["paths.output_dir=/tmp/x"])
        off = compose("train", overrides=["paths.output_dir=/tmp/x", "callbacks.final_eval=null"])
    assert plain.callbacks.get("online_eval") is None  # off unless selected
    final = instantiate(plain.callbacks.final_eval)  # on by default, off with one override
    assert isinstance(final, FinalEvalCallback) and off.callbacks.final_eval is None
    assert final.env == OmegaConf.to_container(plain.eval.env, resolve=True) and final.episodes == 8
    assert final.baselines == {"random": OmegaConf.to_container(plain.eval.baselines.random)}
    assert final.output_dir == "/tmp/x/eval_final" and final.cache_dir == plain.paths.cache_dir


@pytest.mark.slow
def test_record_ingest_train_eval(tmp_path):
    """The whole loop on a small scale: Crafter recordings -> store -> training with online eval -> minesweep-eval."""
    record_crafter(tmp_path / "raw", episodes=4, length=60, workers=2, progress=False)
    assert ingest(tmp_path / "raw", tmp_path / "store", resolution=(64, 64), print_summary=False).ingested
    run = tmp_path / "run"
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            overrides=[
                *SMALL_RUN,
                f"data.root={tmp_path / 'store'}",
                f"paths.output_dir={run}",
                "logger=csv",
                "trainer.max_steps=12",
                "trainer.val_check_interval=6",
                "callbacks/online_eval=crafter",
                "callbacks.online_eval.episodes=2",  # plays at the store's 64x64 (eval.env.size is null off the demo)
                "eval.env.length=40",
                "optimized_metric=eval/return",
            ],
        )
    metrics = train(cfg)
    assert "eval/return" in metrics and math.isfinite(metrics["eval/return"])
    assert metrics["eval/length"] <= 40
    rows = (run / "csv").glob("version_*/metrics.csv")
    assert any("eval/return" in p.read_text().splitlines()[0] for p in rows)

    checkpoint = run / "checkpoints" / "last.ckpt"
    assert (
        eval_main(
            [
                f"eval.checkpoint={checkpoint}",
                "eval.episodes=2",
                "eval.env.length=40",  # the size: 64, the frames the policy trained on, stored in the checkpoint
                "eval.video.max_steps=20",
                "eval.video.size=64",
                "eval.progress=false",
                f"paths.cache_dir={tmp_path / 'cache'}",
            ]
        )
        == 0
    )
    out = run / "eval"
    report = json.loads((out / "results.json").read_text())
    assert torch.load(checkpoint, weights_only=True)["minesweep_frame_size"] == [64, 64]
    assert report["env"]["size"] == 64
    assert set(report["players"]) == {"policy", "random", "scripted"}
    assert report["players"]["policy"]["episodes"] == 2 and report["worlds"]["first_seed"] == 1_000_000
    assert report["players"]["random"]["seeds"] == report["players"]["policy"]["seeds"]
    assert not report["players"]["random"]["from_cache"] and not report["players"]["scripted"]["from_cache"]
    # again: the baselines come from the cache, with the same figures; the policy plays the same episodes
    assert (
        eval_main(
            [
                f"eval.checkpoint={checkpoint}",
                "eval.episodes=2",
                "eval.env.size=64",
                "eval.env.length=40",
                "eval.video.max_steps=0",
                "eval.progress=false",
                f"paths.cache_dir={tmp_path / 'cache'}",
                f"eval.output_dir={tmp_path / 'again'}",
            ]
        )
        == 0
    )
    again = json.loads((tmp_path / "again" / "results.json").read_text())
    assert again["baseline_cache"]["random"] == {"from_cache": True, "cached_worlds": 2}
    for name in ("policy", "random", "scripted"):
        assert again["players"][name]["returns"] == report["players"][name]["returns"]
    assert (out / "achievements.png").stat().st_size > 1000
    from minesweep.data.ingest.pipeline import decoded_frames as _decoded_frames

    video = np.concatenate(list(_decoded_frames(out / "episode.mp4", (64, 64), None)))
    assert 1 <= len(video) <= 20
    assert eval_main(["eval.checkpoint=/nonexistent.ckpt"]) == 1


@pytest.mark.slow
def test_crafter_bc_benchmark_runs_end_to_end_and_reports_the_targets(tmp_path):
    """benchmarks/crafter_bc.py at a toy scale: record -> ingest -> train -> evaluate, figures checked against the
    targets (a 3-step policy misses them: exit code 1, not a crash)."""
    args = [
        sys.executable,
        "benchmarks/crafter_bc.py",
        "--episodes",
        "2",
        "--length",
        "40",
        "--steps",
        "3",
        "--eval-episodes",
        "2",
        "--workers",
        "1",
        "--out",
        str(tmp_path),
        *SMALL_RUN,
        "data.val_fraction=0.5",
        "trainer.val_check_interval=2",
        "eval.env.length=20",
        "eval.progress=false",
    ]
    result = subprocess.run(
        args,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "WANDB_MODE": "disabled", "MINESWEEP_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode in (0, 1), result.stderr[-3000:]
    for line in (
        "machine:",
        "recordings: 2 episodes",
        "training: 3 steps",
        "return_vs_random",
        "collect_wood",
        "place_table",
    ):
        assert line in result.stdout, result.stdout[-3000:]
    figures = json.loads((tmp_path / "benchmark.json").read_text())
    assert figures["steps"] == 3 and set(figures["figures"]) == {"return_vs_random", "collect_wood", "place_table"}
    assert (tmp_path / "run" / "eval" / "results.json").is_file()
    assert (tmp_path / "run" / "eval" / "achievements.png").is_file()


# -- batched play: a world's episode does not depend on the worlds it shares a batch (or a process) with -------------


def crafter_policy(seed: int = 0) -> TinyPolicy:
    """A random TinyPolicy whose samples are mostly Crafter actions (a plain random one plays almost only noop)."""
    from minesweep.envs.crafter import AGENT_BUTTONS_TO_ACTION

    torch.manual_seed(seed)
    policy = TinyPolicy(hidsize=32).eval()
    crafter_buttons = [int(np.flatnonzero(AGENT_BUTTONS_TO_ACTION == a)[0]) for a in range(1, 17)]
    with torch.no_grad():
        policy.pi_head.buttons.linear_layer.bias[crafter_buttons] += 9.0
    return policy


def same_episode(a: EpisodeResult, b: EpisodeResult) -> bool:
    return (a.seed, a.actions, a.length, a.episode_return, a.achievements) == (
        b.seed,
        b.actions,
        b.length,
        b.episode_return,
        b.achievements,
    )


def test_a_world_plays_the_same_alone_batched_and_per_world():
    from functools import partial

    from minesweep.eval import evaluate_players
    from minesweep.eval_parallel import PolicyJob, play_jobs

    policy, env, seeds = crafter_policy(), partial(CrafterEnv, size=64, length=40), [11, 12, 13]

    def play(worlds, **options):
        return play_jobs([(PolicyJob(policy, env, eval_seed=5, **options), worlds)])["policy"]

    batched = play(seeds)  # one forward per step for the three worlds
    assert [r.seed for r in batched] == seeds
    assert len(set(batched[0].actions)) > 4 and len({tuple(r.actions) for r in batched}) == 3  # real, distinct play
    for result in batched:
        assert same_episode(result, play([result.seed])[0])  # the world alone
    # two at a time, the third joins later
    for alone, refilled in zip(batched, play(seeds, batch_size=2), strict=True):
        assert same_episode(alone, refilled)
    per_world = evaluate_players({"policy": PolicyPlayer(policy, eval_seed=5)}, env, seeds)["policy"]
    for alone, player in zip(batched, per_world, strict=False):
        assert same_episode(alone, player)
    # the sampling follows the eval seed: another one plays otherwise
    other = play_jobs([(PolicyJob(policy, env, eval_seed=6), [11])])["policy"][0]
    assert other.actions != batched[0].actions


def test_policy_states_are_batch_first_and_other_layouts_play_one_world_at_a_time(tmp_path, caplog):
    from functools import partial

    from minesweep.eval import evaluate_policy
    from minesweep.eval_batch import state_is_batch_first
    from minesweep.eval_parallel import PolicyJob, play_jobs
    from tests.test_policies_groot import small_groot
    from tests.test_policies_vpt import small_policy

    assert state_is_batch_first(TinyPolicy(hidsize=16))
    env = partial(CrafterEnv, size=32, length=12)
    for policy in (small_policy().eval(), small_groot().eval()):  # memory: [mask, K, V] per layer, batch first
        assert state_is_batch_first(policy)
        batched = play_jobs([(PolicyJob(policy, env, batch_size=2), [1, 2, 3])])["policy"]  # rows join and leave
        for result in batched:
            assert same_episode(result, play_jobs([(PolicyJob(policy, env), [result.seed])])["policy"][0])

    class TimeFirst(TinyPolicy):  # a memory laid out (layers, batch, hidden), as torch's nn.GRU keeps it
        def initial_state(self, batch_size=None):
            return [torch.zeros(1, 1 if batch_size is None else batch_size, self.hidsize)]

        def forward(self, input, state_in=None, **kwargs):
            latents, state = super().forward(input, None if state_in is None else [state_in[0][0]])
            return latents, [state[0][None]]

    torch.manual_seed(0)
    odd = TimeFirst(hidsize=16).eval()
    assert not state_is_batch_first(odd)
    with caplog.at_level("INFO", logger="minesweep"):
        report = evaluate_policy(
            odd,
            {"_target_": "minesweep.envs.crafter.CrafterEnv", "_partial_": True, "size": 64, "length": 10},
            [3, 4],
            tmp_path,
            workers=1,
        )
    assert "played one at a time" in caplog.text and report["play"]["batch_size"] == 1
    assert report["players"]["policy"]["episodes"] == 2


@pytest.mark.slow
def test_worker_processes_play_the_worlds_as_one_process_does():
    from functools import partial

    from minesweep.envs.crafter_player import ScriptedPlayer
    from minesweep.eval_parallel import PlayerJob, PolicyJob, play_jobs

    policy = crafter_policy()
    env = {"_target_": "minesweep.envs.crafter.CrafterEnv", "_partial_": True, "size": 64, "length": 30}
    jobs = [
        (PolicyJob(policy, env, eval_seed=2), [21, 22, 23]),
        (PlayerJob("scripted", ScriptedPlayer(), env), [21, 22]),
    ]
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    one = play_jobs(jobs, workers=1)
    two = play_jobs(jobs, workers=2)
    assert [r.seed for r in two["policy"]] == [21, 22, 23] and [r.seed for r in two["scripted"]] == [21, 22]
    for name in ("policy", "scripted"):
        for a, b in zip(one[name], two[name], strict=False):
            assert same_episode(a, b)
    for key, value in policy.state_dict().items():  # the caller's policy is untouched (not moved to shared memory)
        assert torch.equal(value, before[key]) and not value.is_shared()
    assert (
        one["policy"][0].actions
        == play_jobs([(PolicyJob(policy, partial(CrafterEnv, size=64, length=30), eval_seed=2), [21])])["policy"][
            0
        ].actions
    )


# -- the baseline cache ------------------------------------------------------------------------------------------------

ENV = {"_target_": "minesweep.envs.crafter.CrafterEnv", "_partial_": True, "size": 64, "length": 15}
RANDOM = {"_target_": "minesweep.envs.crafter_player.RandomPlayer"}
SCRIPTED = {"_target_": "minesweep.envs.crafter_player.ScriptedPlayer", "noise": 0.05}


def test_baseline_key_is_the_worlds_env_game_and_player():
    from minesweep.eval_cache import baseline_key

    game = {"crafter": "1.8.3", "opensimplex": "0.3"}
    key = baseline_key(SCRIPTED, ENV, 7, game)
    assert key == baseline_key(dict(SCRIPTED), OmegaConf.create(ENV), 7, game)  # configs count by content
    assert (
        len(
            {
                key,
                baseline_key(SCRIPTED, {**ENV, "length": 16}, 7, game),
                baseline_key(SCRIPTED, {**ENV, "size": 128}, 7, game),
                baseline_key(SCRIPTED, ENV, 8, game),
                baseline_key({**SCRIPTED, "noise": 0.1}, ENV, 7, game),
                baseline_key(RANDOM, ENV, 7, game),
                baseline_key(SCRIPTED, ENV, 7, {**game, "crafter": "1.8.4"}),
            }
        )
        == 7
    )


def test_baselines_are_cached_and_a_corrupt_cache_file_is_played_again(tmp_path, caplog, monkeypatch):
    from minesweep import eval_cache
    from minesweep.eval import evaluate_policy

    cache = tmp_path / "cache"

    def run(out: str) -> dict:
        return evaluate_policy(
            crafter_policy(), ENV, [5, 6], tmp_path / out, baselines={"random": RANDOM}, cache_dir=cache, workers=1
        )

    first = run("first")
    assert first["baseline_cache"]["random"] == {"from_cache": False, "cached_worlds": 0}
    files = sorted((cache / "eval-baselines").glob("*.json"))
    assert len(files) == 2 and not list((cache / "eval-baselines").glob("*.tmp"))
    second = run("second")
    assert second["players"]["random"]["from_cache"] and second["players"]["random"]["cached_worlds"] == 2
    assert second["players"]["random"]["returns"] == first["players"]["random"]["returns"]
    assert second["players"]["policy"]["returns"] == first["players"]["policy"]["returns"]
    assert json.loads((tmp_path / "second" / "results.json").read_text())["baseline_cache"]["random"]["from_cache"]

    files[0].write_text('{"key": "trunc')  # a torn or damaged file
    record = json.loads(files[1].read_text())
    files[1].write_text(json.dumps({**record, "length": -3}))  # valid JSON, not a valid episode
    with caplog.at_level("WARNING", logger="minesweep"):
        third = run("third")
    assert third["players"]["random"]["cached_worlds"] == 0
    assert str(files[0]) in caplog.text and str(files[1]) in caplog.text and "playing the world again" in caplog.text
    assert third["players"]["random"]["returns"] == first["players"]["random"]["returns"]
    assert json.loads(files[1].read_text()) == record  # rewritten whole

    monkeypatch.setattr(eval_cache, "game_version", lambda: {"crafter": "99.0", "opensimplex": "0.3"})
    assert run("new_game")["players"]["random"]["cached_worlds"] == 0  # another game version: played again


def test_an_unwritable_cache_is_a_warning(tmp_path, caplog):
    from minesweep.eval import evaluate_policy

    (tmp_path / "cache").write_text("a file where the cache folder should be")
    with caplog.at_level("WARNING", logger="minesweep"):
        report = evaluate_policy(
            crafter_policy(),
            ENV,
            [5],
            tmp_path / "out",
            baselines={"random": RANDOM},
            cache_dir=tmp_path / "cache",
            workers=1,
        )
    assert report["players"]["random"]["episodes"] == 1 and "not cached" in caplog.text


# -- the end-of-training evaluation ------------------------------------------------------------------------------------


def test_final_eval_reports_figures_and_leaves_training_rng_alone(tmp_path, caplog):
    import random

    callback = FinalEvalCallback(
        env=ENV,
        episodes=2,
        first_seed=5,
        baselines={"random": RANDOM},
        output_dir=str(tmp_path / "eval_final"),
        cache_dir=str(tmp_path / "cache"),
        workers=1,
    )
    policy = crafter_policy().train()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    with caplog.at_level("INFO", logger="minesweep"):
        metrics = callback.evaluate(policy)
    assert torch.equal(torch.rand(2), expected[0]) and np.array_equal(np.random.rand(2), expected[1])
    assert random.random() == expected[2]
    assert policy.training  # restored
    assert set(metrics) == {
        "final_eval/return",
        "final_eval/return_stderr",
        "final_eval/collect_wood",
        "final_eval/random_return",
        "final_eval/return_vs_random",
    }
    assert "policy/random" in caplog.text and str(tmp_path / "eval_final" / "achievements.png") in caplog.text
    assert (tmp_path / "eval_final" / "achievements.png").is_file()


def test_final_eval_only_says_so_without_the_crafter_demo(tmp_path, caplog):
    from types import SimpleNamespace

    callback = FinalEvalCallback(env=ENV, output_dir=str(tmp_path / "out"))
    trainer = SimpleNamespace(datamodule=SimpleNamespace(demo={"episodes": 2}), global_rank=0)
    with caplog.at_level("INFO", logger="minesweep"):
        callback.on_train_end(trainer, None)
    assert "skipped, the data is not the Crafter demo" in caplog.text and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_training_on_the_crafter_demo_ends_with_a_short_eval(tmp_path, caplog):
    """A tiny real training run on (a tiny) Crafter demo: the final eval logs the ratio to the random player, writes
    its chart in the run folder and puts its figures in train()'s metrics."""
    run = tmp_path / "run"
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            overrides=[
                *[o for o in SMALL_RUN if o != "data.demo=null"],
                f"data.root={tmp_path / 'demo' / 'store'}",
                "data.demo.episodes=2",
                "data.demo.length=40",
                "data.demo.size=64",
                "data.demo.workers=1",
                "+data.demo.progress=false",
                "data.val_fraction=0.5",
                f"paths.output_dir={run}",
                f"paths.cache_dir={tmp_path / 'cache'}",
                "logger=csv",
                "trainer.max_steps=3",
                "trainer.val_check_interval=3",
                "callbacks.final_eval.episodes=2",
                "eval.env.length=30",
                "eval.workers=1",
                "callbacks/ema=default",
            ],
        )
    with caplog.at_level("INFO", logger="minesweep"):
        metrics = train(cfg)
    assert "final eval: the policy plays its EMA weights" in caplog.text
    assert "policy/random" in caplog.text and str(run / "eval_final" / "achievements.png") in caplog.text
    assert (run / "eval_final" / "achievements.png").stat().st_size > 1000
    report = json.loads((run / "eval_final" / "results.json").read_text())
    assert report["global_step"] == 3 and report["players"]["policy"]["episodes"] == 2
    assert metrics["final_eval/return"] == pytest.approx(report["players"]["policy"]["mean_return"])
    assert math.isfinite(metrics["final_eval/random_return"]) and "final_eval/return_vs_random" in metrics


def test_minesweep_eval_is_a_hydra_app(tmp_path, capsys):
    """``--cfg job`` shows the eval's own config (nothing of training), and ``-m`` evaluates each checkpoint."""
    from minesweep.policies.build import FRAME_SIZE_KEY, POLICY_CONFIG_KEY
    from minesweep.policies.tiny import TinyPolicy

    assert eval_main(["--cfg", "job"]) == 0
    shown = capsys.readouterr().out
    assert "checkpoint: null" in shown and "trainer" not in shown and "objective" not in shown

    checkpoints = []
    for i, hidsize in enumerate((16, 24)):
        config = {"_target_": "minesweep.policies.tiny.TinyPolicy", "hidsize": hidsize}
        policy = TinyPolicy(hidsize=hidsize)
        path = tmp_path / f"run{i}" / "checkpoints" / "last.ckpt"
        path.parent.mkdir(parents=True)
        state = {f"mine_policy.{k}": v for k, v in policy.state_dict().items()}
        torch.save({"state_dict": state, POLICY_CONFIG_KEY: config, FRAME_SIZE_KEY: [48, 48]}, path)
        checkpoints.append(path)
    args = [
        "-m",
        f"eval.checkpoint={checkpoints[0]},{checkpoints[1]}",
        "eval.episodes=1",
        "eval.env.length=8",
        "eval.baselines=null",
        "eval.video.max_steps=0",
        "eval.progress=false",
        "eval.workers=1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    assert eval_main(args) == 0
    for path in checkpoints:
        report = json.loads((path.parent.parent / "eval" / "results.json").read_text())
        assert report["env"]["size"] == 48 and report["players"]["policy"]["episodes"] == 1
