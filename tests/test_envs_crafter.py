"""Crafter adapter: the action mapping is a bijection that survives jsonl -> ingest -> VPT action space; the
scripted player beats the random one; recordings are real contractor recordings."""

import json

import numpy as np
import pytest

from minesweep.actions import BUTTONS, CAMERA_NULL_INDEX, contractor_to_env, env_to_agent, read_jsonl
from minesweep.actions.space import BUTTON_INDEX_TO_FACTORED, INVENTORY_INDEX, N_BUTTON_COMBINATIONS
from minesweep.data.cli import main as cli_main
from minesweep.data.ingest.contractor import ingest
from minesweep.data.store import EpisodeStore
from minesweep.envs.crafter import (
    ACHIEVEMENTS,
    ACTION_INDEX,
    ACTIONS,
    N_ACTIONS,
    NOOP,
    CrafterEnv,
    action_to_env_buttons,
    agent_to_action,
    contractor_steps,
    env_buttons_to_action,
)
from minesweep.envs.crafter_player import SEMANTIC, RandomPlayer, ScriptedPlayer
from minesweep.envs.crafter_record import SUMMARY, play_episode, record_crafter, write_crafter_episode

ALL = np.arange(N_ACTIONS)


def pressed(action: str) -> set[str]:
    row = action_to_env_buttons(ACTION_INDEX[action])
    return {BUTTONS[i] for i in np.flatnonzero(row)}


def test_actions_match_the_installed_crafter():
    crafter = pytest.importorskip("crafter")
    assert tuple(crafter.constants.actions) == ACTIONS
    assert tuple(crafter.constants.achievements) == ACHIEVEMENTS


def test_documented_mapping():
    assert pressed("noop") == set()
    assert pressed("move_up") == {"forward"} and pressed("move_down") == {"back"}
    assert pressed("move_left") == {"left"} and pressed("move_right") == {"right"}
    assert pressed("do") == {"attack"} and pressed("sleep") == {"sneak"}
    assert pressed("place_stone") == {"use", "hotbar.1"} and pressed("place_plant") == {"use", "hotbar.4"}
    assert pressed("make_wood_pickaxe") == {"use", "sneak", "hotbar.1"}
    assert pressed("make_iron_sword") == {"use", "sneak", "hotbar.6"}


def test_mapping_is_a_bijection_on_the_17_actions():
    buttons = action_to_env_buttons(ALL)
    assert len({row.tobytes() for row in buttons}) == N_ACTIONS
    np.testing.assert_array_equal(env_buttons_to_action(buttons), ALL)
    agent_buttons, agent_camera = env_to_agent(buttons, np.zeros((N_ACTIONS, 2)))
    assert len(set(agent_buttons.tolist())) == N_ACTIONS  # 17 distinct VPT joint indices
    assert (agent_camera == CAMERA_NULL_INDEX).all()
    np.testing.assert_array_equal(agent_to_action(agent_buttons), ALL)


def test_unmapped_agent_actions_play_noop_and_camera_is_ignored():
    codes = {action_to_env_buttons(a).tobytes() for a in ALL}
    unmapped = [i for i in range(N_BUTTON_COMBINATIONS) if BUTTON_INDEX_TO_FACTORED[i].tobytes() not in codes]
    assert len(unmapped) > 8000
    assert (agent_to_action(np.array(unmapped)) == NOOP).all()
    assert agent_to_action(INVENTORY_INDEX) == NOOP
    jump_forward = np.zeros(20, np.uint8)
    jump_forward[[BUTTONS.index("forward"), BUTTONS.index("jump")]] = 1
    assert env_buttons_to_action(jump_forward) == NOOP
    # the same buttons with a camera move (camera-meta bit on) keep their action
    buttons = action_to_env_buttons(ACTION_INDEX["do"])
    idx_still, _ = env_to_agent(buttons, [0.0, 0.0])
    idx_moving, _ = env_to_agent(buttons, [5.0, -3.0])
    assert idx_still != idx_moving and agent_to_action(idx_moving) == ACTION_INDEX["do"]
    with pytest.raises(ValueError, match="out of range"):
        agent_to_action(N_BUTTON_COMBINATIONS)


def test_jsonl_round_trip_with_contractor_quirks(tmp_path):
    # every action, each twice in a row (hotbar keys repeat), an attack at step 0 (the attack-stuck fix)
    # and hotbar slots revisited after other actions
    actions = (
        [ACTION_INDEX["do"], ACTION_INDEX["do"]]
        + [a for a in ALL for _ in range(2)]
        + [
            ACTION_INDEX["place_table"],
            ACTION_INDEX["move_up"],
            ACTION_INDEX["make_stone_pickaxe"],
            NOOP,
            ACTION_INDEX["place_stone"],
            ACTION_INDEX["make_wood_pickaxe"],
            ACTION_INDEX["place_stone"],
        ]
    )
    path = tmp_path / "ep.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in contractor_steps(actions)))
    env = contractor_to_env(read_jsonl(path), source=str(path))
    np.testing.assert_array_equal(env_buttons_to_action(env.buttons), actions)
    assert (env.camera == 0).all()
    np.testing.assert_array_equal(env.is_null, np.array(actions) == NOOP)
    agent_buttons, agent_camera = env_to_agent(env.buttons, env.camera)
    np.testing.assert_array_equal(agent_to_action(agent_buttons), actions)
    assert (agent_camera == CAMERA_NULL_INDEX).all()


def test_contractor_steps_rejects_bad_actions():
    with pytest.raises(ValueError, match="step 1"):
        contractor_steps([0, 17])


def test_recording_ingests_unchanged_and_keeps_every_action(tmp_path):
    results = record_crafter(tmp_path / "raw", episodes=2, first_seed=5, length=40, workers=1, progress=False)
    summary = json.loads((tmp_path / "raw" / SUMMARY).read_text())
    assert [r["seed"] for r in summary["results"]] == [5, 6]
    report = ingest(tmp_path / "raw", tmp_path / "store", print_summary=False)
    assert report.skipped == [] and report.ingested == ["crafter-0000", "crafter-0001"]
    store = EpisodeStore(tmp_path / "store")
    for result, record in zip(results, store.episodes, strict=False):
        assert record.length == result.length > 0
        actions = store.read_actions(record.id)
        np.testing.assert_array_equal(env_buttons_to_action(actions["buttons"]), result.actions)
        assert (actions["camera"] == 0).all()
        frames = store.read_frames(record.id, 0, 2)
        assert frames.shape == (2, 128, 128, 3)
    # the first frame is the world as the player saw it before acting (two H.264 yuv420p passes: close, not equal;
    # chroma subsampling blurs the colours of crafter's pixel art; the luma stays close)
    obs, _ = CrafterEnv(5, length=40).reset()
    first = store.read_frames("crafter-0000", 0, 1)[0].astype(float)
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(first - obs).mean() < 10 and np.abs(first @ luma - obs @ luma).mean() < 5


def test_recordings_are_deterministic_per_seed(tmp_path):
    a = write_crafter_episode(tmp_path / "a", "x", seed=3, length=60)
    b = write_crafter_episode(tmp_path / "b", "x", seed=3, length=60)
    c = write_crafter_episode(tmp_path / "c", "x", seed=4, length=60)
    assert a.actions == b.actions and a.actions != c.actions
    assert (tmp_path / "a" / "x.jsonl").read_text() == (tmp_path / "b" / "x.jsonl").read_text()


def test_semantic_ids_match_the_env():
    env = CrafterEnv(0, length=10)
    assert env.semantic_ids == {k: v for k, v in SEMANTIC.items() if k != "unknown"}
    obs, info = env.reset()
    assert obs.shape == (128, 128, 3) and obs.dtype == np.uint8
    assert {"semantic", "inventory", "achievements", "player_pos", "facing", "sleeping"} <= set(info)
    with pytest.raises(ValueError, match="Crafter action"):
        env.step(17)


def test_scripted_player_beats_random_on_fixed_seeds():
    seeds = range(100, 106)
    returns = {}
    for player in (ScriptedPlayer(), RandomPlayer()):
        rs = []
        for seed in seeds:
            player.reset(seed)
            rs.append(play_episode(CrafterEnv(seed, length=200), player))
        returns[player.name] = np.mean([r.episode_return for r in rs])
        if player.name == "scripted":
            assert np.mean(["place_table" in r.unlocked() for r in rs]) >= 0.8
    assert returns["scripted"] >= returns["random"] + 4, returns


def test_scripted_player_never_walks_into_lava():
    # a world with lava in sight of the player: the move into it must be replaced
    env = CrafterEnv(0, length=10)
    _, info = env.reset()
    px, py = info["player_pos"]
    info["semantic"][px + 1, py] = SEMANTIC["lava"]
    player = ScriptedPlayer(noise=1.0)  # every step random
    for seed in range(40):
        player.reset(seed)
        player.explore_dir = (1, 0)
        assert player.act(None, info) != ACTION_INDEX["move_right"]


def test_cli_crafter(tmp_path, capsys):
    out = tmp_path / "raw"
    assert cli_main(["crafter", str(out), "--episodes", "2", "--length", "15", "--workers", "2"]) == 0
    assert sorted(p.name for p in out.glob("crafter-*")) == [
        "crafter-0000.jsonl",
        "crafter-0000.mp4",
        "crafter-0001.jsonl",
        "crafter-0001.mp4",
    ]
    assert "wrote 2 recordings" in capsys.readouterr().out
    assert cli_main(["crafter", str(out), "--episodes", "0"]) == 1


def test_default_demo_is_crafter_and_generated_on_first_use(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from minesweep.data.loading.datamodule import MineDataModule
    from minesweep.envs.crafter_record import CrafterRecordings
    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=["paths.output_dir=/tmp/x", f"paths.cache_dir={tmp_path}/cache"])
    dm = instantiate(cfg.data)
    assert isinstance(dm.demo, CrafterRecordings) and str(dm.root).startswith(str(tmp_path))

    root = tmp_path / "demo" / "store"
    recipe = CrafterRecordings(episodes=2, length=30, first_seed=9, workers=1, progress=False)
    dm = MineDataModule(str(root), win_len=16, batch_size=2, num_workers=0, demo=recipe)
    dm.setup()
    assert sorted(e.id for e in dm.store.episodes) == ["crafter-0000", "crafter-0001"]
    assert (tmp_path / "demo" / "demo_raw" / SUMMARY).is_file()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[2:] == (128, 128, 3)
    assert (batch["agent_action"]["camera"] == 60).all()  # Crafter has no camera: always the null camera bin
    with pytest.raises(TypeError, match="data.demo"):
        MineDataModule(str(tmp_path / "other" / "store"), num_workers=0, demo=42).prepare_data()
