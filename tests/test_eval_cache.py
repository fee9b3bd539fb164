"""The shipped baseline episodes (minesweep/eval_baselines.json): exactly what playing gives, used when the user's
cache lacks a key, never trusted blindly."""

from __future__ import annotations

import json

import pytest


def test_the_shipped_episodes_are_what_the_players_play():
    """Worlds from the start, middle and end of the default evaluation, both players, played again here."""
    from minesweep.eval import _instantiate
    from minesweep.eval_cache import SHIPPED, _record, baseline_key, default_baselines, game_version, shipped_episodes
    from minesweep.eval_parallel import PlayerJob, play_jobs

    shipped = shipped_episodes()
    players, env, seeds = default_baselines()
    assert len(shipped) == len(players) * len(seeds) == 60  # every default world of every baseline
    if json.loads(SHIPPED.read_text())["game"] != game_version():  # pyproject pins the game: a stale file
        pytest.fail(f"shipped episodes of another game than {game_version()}: python -m minesweep.eval_cache")
    worlds = [seeds[0], seeds[len(seeds) // 2], seeds[-1]]
    jobs = [(PlayerJob(name, _instantiate(p, name), env), worlds) for name, p in players.items()]
    for name, results in play_jobs(jobs, workers=1).items():
        for result in results:
            key = baseline_key(players[name], env, result.seed)
            assert shipped[key] == _record(key, result), (name, result.seed)


def test_a_key_missing_from_the_cache_comes_from_the_shipped_episodes(tmp_path, caplog):
    from minesweep.eval_cache import BaselineCache, baseline_key, default_baselines, shipped_episodes

    players, env, seeds = default_baselines()
    key = baseline_key(players["scripted"], env, seeds[3])
    shipped = shipped_episodes()
    cache = BaselineCache(tmp_path / "empty")
    episode = cache.load(key, seeds[3])
    assert episode is not None and episode.length == shipped[key]["length"]
    assert episode.episode_return == shipped[key]["episode_return"]
    assert BaselineCache(tmp_path / "empty", shipped={}).load(key, seeds[3]) is None  # none shipped: played

    # the user's own file wins (a different game build, say, rewrote it)
    mine = {**shipped[key], "length": shipped[key]["length"] + 1}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / f"{key}.json").write_text(json.dumps(mine))
    assert BaselineCache(tmp_path / "mine").load(key, seeds[3]).length == mine["length"]

    # a damaged shipped record is played again, with a warning, not trusted
    damaged = {key: {**shipped[key], "seed": seeds[4]}}
    with caplog.at_level("WARNING", logger="minesweep"):
        assert BaselineCache(tmp_path / "empty", shipped=damaged).load(key, seeds[3]) is None
    assert key[:16] in caplog.text and "playing" in caplog.text


def test_an_unreadable_shipped_file_is_a_warning(tmp_path, caplog):
    from minesweep.eval_cache import shipped_episodes

    (tmp_path / "torn.json").write_text('{"episodes": {"ab')
    with caplog.at_level("WARNING", logger="minesweep"):
        assert shipped_episodes(tmp_path / "torn.json") == {}
    assert "torn.json" in caplog.text
    assert shipped_episodes(tmp_path / "absent.json") == {}
