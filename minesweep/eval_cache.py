"""The baseline players' episodes, cached on disk: a random or scripted player's result in a world depends only on
the world (its seed), the env settings (size, episode length, ...), the game version and the player's own config,
never on the policy being evaluated, so each is played once and read back afterwards.

One JSON file per world, ``<cache_dir>/eval-baselines/<key>.json``, where the key hashes exactly those things
plus :data:`CACHE_VERSION` (:func:`baseline_key`). Files are written atomically (a temporary file renamed); a file
that cannot be read back as a valid episode of that key is reported and played again, never trusted.

The package ships the episodes of the default evaluation (``minesweep-eval``'s 30 held-out worlds at 64x64, the
random and the scripted player) for the game versions it was built with (:data:`SHIPPED`), so that a newcomer's
first evaluation plays only the policy. They are keyed the same way: another game version, env or player misses
them and is played. ``python -m minesweep.eval_cache`` plays them again and rewrites the file; a test checks that
playing gives exactly what is shipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from minesweep.atomic_file import write_text_atomic
from minesweep.envs.crafter_record import EpisodeResult

__all__ = ["CACHE_VERSION", "SHIPPED", "game_version", "baseline_key", "shipped_episodes", "BaselineCache"]

log = logging.getLogger("minesweep")

#: Bump when the players (minesweep/envs/crafter_player.py), the env adapter (minesweep/envs/crafter.py) or the
#: episode loop change what a baseline does in a world: every cached episode is then played again.
CACHE_VERSION = 1

#: The default evaluation's baseline episodes, by key (see the module docstring).
SHIPPED = Path(__file__).with_name("eval_baselines.json")


def game_version() -> dict[str, str]:
    """The installed game: crafter, and opensimplex, whose noise generates crafter's worlds."""
    versions = {}
    for package in ("crafter", "opensimplex"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def baseline_key(
    player: Mapping[str, Any], env: Mapping[str, Any], seed: int, game: Mapping[str, str] | None = None
) -> str:
    """SHA-256 (hex) of the player's config (``_target_`` and arguments), the env's config, the world seed, the game
    version (default: the installed one) and :data:`CACHE_VERSION`; configs as plain, resolved containers."""
    identity = {
        "version": CACHE_VERSION,
        "game": dict(game if game is not None else game_version()),
        "player": _plain(player),
        "env": _plain(env),
        "seed": int(seed),
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _plain(config: Mapping[str, Any]) -> Any:
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        return OmegaConf.to_container(config, resolve=True)
    return json.loads(json.dumps(config))  # plain types only: a value json cannot write fails here, loudly


def shipped_episodes(path: str | Path = SHIPPED) -> dict[str, Any]:
    """The shipped records by key (``{}`` when the file is absent or unreadable: a warning, then they are played)."""
    try:
        episodes = json.loads(Path(path).read_text())["episodes"]
        if not isinstance(episodes, dict):
            raise TypeError("'episodes' is not a mapping")
        return episodes
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError) as error:
        log.warning("baseline cache: cannot read the shipped episodes %s (%s): playing the worlds", path, error)
        return {}


class BaselineCache:
    """Cached baseline episodes under ``root`` (``<cache_dir>/eval-baselines``), one file per key; a key not there
    is looked up in ``shipped`` (default: the package's :data:`SHIPPED` episodes; ``{}``: none)."""

    def __init__(self, root: str | Path, shipped: dict[str, Any] | None = None) -> None:
        self.root = Path(root)
        self.shipped = shipped_episodes() if shipped is None else shipped

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def load(self, key: str, seed: int) -> EpisodeResult | None:
        """The cached episode of ``key`` (world ``seed``), or None: not cached, or a file that is not a valid
        episode of that key (a warning says which; it will be played again and the file replaced)."""
        path = self.path(key)
        try:
            text = path.read_text()
        except FileNotFoundError:
            if key in self.shipped:  # checked as strictly as a file: a damaged package plays the world again
                try:
                    return _episode(self.shipped[key], key, seed)
                except (ValueError, TypeError, KeyError) as error:
                    log.warning("baseline cache: shipped episode %s... is not valid (%s): playing", key[:16], error)
            return None
        except OSError as error:
            log.warning("baseline cache: cannot read %s (%s): playing the world again", path, error)
            return None
        try:
            return _episode(json.loads(text), key, seed)
        except (ValueError, TypeError, KeyError) as error:  # JSONDecodeError is a ValueError
            log.warning("baseline cache: %s is not a valid cached episode (%s): playing the world again", path, error)
            return None

    def store(self, key: str, result: EpisodeResult) -> None:
        """Write ``result`` under ``key`` atomically; a cache that cannot be written is a warning, not an error."""
        record = _record(key, result)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(self.path(key), json.dumps(record))  # readers see the old file or the new one
        except OSError as error:
            log.warning("baseline cache: cannot write %s (%s): the episode is not cached", self.path(key), error)


def _record(key: str, result: EpisodeResult) -> dict[str, Any]:
    return {
        "key": key,
        "seed": int(result.seed),
        "length": int(result.length),
        "episode_return": float(result.episode_return),
        "achievements": {str(k): int(v) for k, v in result.achievements.items()},
    }


def _episode(record: Any, key: str, seed: int) -> EpisodeResult:
    """A cached record checked field by field: what the file claims must be an episode of ``key`` in ``seed``."""
    if not isinstance(record, dict):
        raise TypeError(f"expected a JSON object, got {type(record).__name__}")
    if record.get("key") != key:
        raise ValueError(f"it holds key {str(record.get('key'))[:16]}..., not {key[:16]}...")
    if record.get("seed") != int(seed):
        raise ValueError(f"it holds world {record.get('seed')!r}, not {seed}")
    length, episode_return, achievements = record["length"], record["episode_return"], record["achievements"]
    if not isinstance(length, int) or isinstance(length, bool) or length <= 0:
        raise ValueError(f"length {length!r} is not a positive integer")
    if (
        not isinstance(episode_return, (int, float))
        or isinstance(episode_return, bool)
        or not math.isfinite(episode_return)
    ):
        raise ValueError(f"episode_return {episode_return!r} is not a finite number")
    if not isinstance(achievements, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in achievements.items()
    ):
        raise ValueError("achievements is not a mapping of names to counts")
    return EpisodeResult(
        seed=int(seed), player="", length=length, episode_return=float(episode_return), achievements=dict(achievements)
    )


def default_baselines() -> tuple[dict[str, Any], dict[str, Any], list[int]]:
    """The default evaluation's players, env and worlds, as the default training run composes them (its env's frame
    size is the demo's, ``data.demo.size``)."""
    from minesweep.eval import compose_config

    ev = compose_config([], config="train").eval
    env = _plain(ev.env)
    seeds = [int(ev.first_seed) + i for i in range(int(ev.episodes))]
    return {name: _plain(player) for name, player in ev.baselines.items()}, env, seeds


def play_default_baselines(workers: int = 1) -> dict[str, Any]:
    """Play the default evaluation's baselines in every world (nothing read from any cache); records by key."""
    from minesweep.eval import _instantiate
    from minesweep.eval_parallel import PlayerJob, play_jobs

    players, env, seeds = default_baselines()
    jobs = [(PlayerJob(name, _instantiate(p, f"eval.baselines.{name}"), env), seeds) for name, p in players.items()]
    played = play_jobs(jobs, workers=workers)
    keyed = [(baseline_key(players[name], env, r.seed), r) for name, results in played.items() for r in results]
    return {key: _record(key, r) for key, r in keyed}


if __name__ == "__main__":  # python -m minesweep.eval_cache: play the default baselines, rewrite SHIPPED
    episodes = play_default_baselines(workers=os.cpu_count() or 1)
    about = "minesweep.eval_cache.SHIPPED: the default evaluation's baseline episodes (python -m minesweep.eval_cache)"
    SHIPPED.write_text(json.dumps({"about": about, "game": game_version(), "episodes": episodes}, indent=0) + "\n")
    print(f"{len(episodes)} episodes -> {SHIPPED}")
