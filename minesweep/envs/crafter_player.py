"""Players for Crafter that need no training: a scripted one that climbs the achievement tree, and a random one.

The scripted player sees what the frame shows and no more: the cells of the 9x7 local view (from ``info["semantic"]``),
its inventory and its facing direction, so that a policy imitating it from pixels could in principle do the same.
Each step it takes the first goal that applies, in this order:

1. stay asleep while sleeping; fight a zombie within two cells;
2. drink when thirsty (or never drank) and water is in sight; hunt a cow when hungry (or never ate);
3. craft at an adjacent table (wood pickaxe, wood sword, stone pickaxe, stone sword; iron tools with a furnace too);
4. walk to a table in sight when it has something to craft; place a table when none is in sight and it has the wood;
   place a furnace next to a table once it has the stone; place a stone and a sapling once each;
5. nap once its energy is below the maximum (for ``wake_up``), and sleep when it is low; never with a zombie in sight;
6. collect what the next tool needs: wood, then stone, coal and iron (with the pickaxes that allow it); search grass
   for a sapling now and then;
7. otherwise explore: walk in a straight line, turning at obstacles and now and then at random.

Moves never enter lava. With probability ``noise`` a step is a uniformly random action instead (never one into lava).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from minesweep.envs.crafter import ACTION_INDEX, N_ACTIONS

__all__ = ["ScriptedPlayer", "RandomPlayer", "SEMANTIC"]

#: ids of crafter's semantic map: materials in crafter/data.yaml order after 0 (unknown), then its object classes
SEMANTIC: dict[str, int] = {
    name: i
    for i, name in enumerate(
        [
            "unknown",
            "water",
            "grass",
            "stone",
            "path",
            "sand",
            "tree",
            "lava",
            "coal",
            "iron",
            "diamond",
            "table",
            "furnace",
            "player",
            "cow",
            "zombie",
            "skeleton",
            "arrow",
            "plant",
        ]
    )
}
_WALKABLE = np.zeros(len(SEMANTIC), bool)
_WALKABLE[[SEMANTIC["grass"], SEMANTIC["sand"], SEMANTIC["path"]]] = True
_DIRS = {(-1, 0): "move_left", (1, 0): "move_right", (0, -1): "move_up", (0, 1): "move_down"}
_VIEW = (4, 3)  # half-extent of the visible grid (9 x 7 cells) around the player

# Requirements, as crafter/data.yaml has them (crafter 1.8)
_TABLE_WOOD, _FURNACE_STONE = 1, 1
_MAKE = {  # tool: (wood, stone, coal, iron, needs furnace)
    "wood_pickaxe": (1, 0, 0, 0, False),
    "wood_sword": (1, 0, 0, 0, False),
    "stone_pickaxe": (1, 1, 0, 0, False),
    "stone_sword": (1, 1, 0, 0, False),
    "iron_pickaxe": (1, 0, 1, 1, True),
    "iron_sword": (1, 0, 1, 1, True),
}


def _load_requirements() -> None:
    """Read table/furnace/tool costs from the installed crafter (they changed between releases)."""
    global _TABLE_WOOD, _FURNACE_STONE
    try:
        from crafter import constants
    except ImportError:
        return
    _TABLE_WOOD = int(constants.place["table"]["uses"].get("wood", 1))
    _FURNACE_STONE = int(constants.place["furnace"]["uses"].get("stone", 1))
    for tool, info in constants.make.items():
        uses = info["uses"]
        _MAKE[tool] = (
            uses.get("wood", 0),
            uses.get("stone", 0),
            uses.get("coal", 0),
            uses.get("iron", 0),
            "furnace" in info["nearby"],
        )


_load_requirements()


class RandomPlayer:
    """Uniformly random actions, seeded per episode."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.reset(seed)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, info: dict) -> int:
        return int(self.rng.integers(N_ACTIONS))


class ScriptedPlayer:
    """Pursues Crafter's achievement tree from the local view and inventory (see the module docstring)."""

    name = "scripted"

    def __init__(self, seed: int = 0, noise: float = 0.05, turn_prob: float = 0.08) -> None:
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise}")
        self.noise, self.turn_prob = float(noise), float(turn_prob)
        self.reset(seed)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.explore_dir = list(_DIRS)[int(self.rng.integers(4))]
        self.placed_stone = self.placed_plant = False
        self.sapling_search = 0  # steps left hitting grass for a sapling

    # -- the local view ---------------------------------------------------------------------------------------
    def _view(self, info: dict) -> tuple[np.ndarray, np.ndarray]:
        """The visible cells (9x7, padded with 'unknown' off the map) and the player's position in them."""
        sem, (px, py) = info["semantic"], (int(info["player_pos"][0]), int(info["player_pos"][1]))
        hx, hy = _VIEW
        view = np.zeros((2 * hx + 1, 2 * hy + 1), np.int64)
        x0, y0 = max(px - hx, 0), max(py - hy, 0)
        x1, y1 = min(px + hx + 1, sem.shape[0]), min(py + hy + 1, sem.shape[1])
        view[x0 - (px - hx) : x1 - (px - hx), y0 - (py - hy) : y1 - (py - hy)] = sem[x0:x1, y0:y1]
        return view, np.array([hx, hy])

    @staticmethod
    def _cell(view: np.ndarray, p: np.ndarray) -> int:
        if 0 <= p[0] < view.shape[0] and 0 <= p[1] < view.shape[1]:
            return int(view[p[0], p[1]])
        return SEMANTIC["unknown"]

    def _route(self, view: np.ndarray, me: np.ndarray, targets: set[str]) -> tuple | None:
        """Breadth-first search over walkable cells to the nearest cell next to a target.

        Returns ``(first_move, target_direction_at_arrival, steps)`` or None when none is reachable in view."""
        ids = {SEMANTIC[t] for t in targets}
        target_mask = np.isin(view, list(ids))
        if not target_mask.any():
            return None
        start = (int(me[0]), int(me[1]))
        queue, first = deque([start]), {start: None}
        dist = {start: 0}
        while queue:
            cell = queue.popleft()
            for d in _DIRS:
                nx, ny = cell[0] + d[0], cell[1] + d[1]
                if not (0 <= nx < view.shape[0] and 0 <= ny < view.shape[1]):
                    continue
                if target_mask[nx, ny]:
                    return (first[cell], d, dist[cell])
                if (nx, ny) not in first and _WALKABLE[view[nx, ny]]:
                    first[(nx, ny)] = first[cell] or d
                    dist[(nx, ny)] = dist[cell] + 1
                    queue.append((nx, ny))
        return None

    def _interact(
        self, view: np.ndarray, me: np.ndarray, facing: tuple, targets: set[str], action: str = "do"
    ) -> str | None:
        """Walk to the nearest target in view, face it, then ``action`` on it."""
        route = self._route(view, me, targets)
        if route is None:
            return None
        first_move, face, steps = route
        if steps == 0:
            return action if tuple(facing) == face else _DIRS[face]  # a move into a solid cell only turns
        return _DIRS[first_move]

    # -- decisions ------------------------------------------------------------------------------------------
    def act(self, obs: np.ndarray, info: dict) -> int:
        view, me = self._view(info)
        facing = tuple(info["facing"])
        action = self._decide(view, me, facing, info)
        if self.rng.random() < self.noise:
            action = self.rng.choice(N_ACTIONS)
            action = list(ACTION_INDEX)[action]
        if action in _DIRS.values():
            d = next(k for k, v in _DIRS.items() if v == action)
            if self._cell(view, me + d) == SEMANTIC["lava"]:
                action = "noop"
        return ACTION_INDEX[action]

    def _decide(self, view: np.ndarray, me: np.ndarray, facing: tuple, info: dict) -> str:
        inv, ach = info["inventory"], info["achievements"]
        if info.get("sleeping"):
            return "sleep"
        ahead = self._cell(view, me + facing)

        # 1. threats
        zombies = np.argwhere(view == SEMANTIC["zombie"])
        if len(zombies) and np.abs(zombies - me).sum(1).min() <= 2:  # strike first rather than be chased
            if (a := self._interact(view, me, facing, {"zombie"})) is not None:
                return a

        # 2. needs
        if inv["drink"] <= 5 or not ach["collect_drink"]:
            if (a := self._interact(view, me, facing, {"water"})) is not None:
                return a
        if inv["food"] <= 5 or not ach["eat_cow"]:
            if (a := self._interact(view, me, facing, {"cow"})) is not None:
                return a

        # 3. craft at a table (crafter checks the 3x3 cells around the player)
        around = view[me[0] - 1 : me[0] + 2, me[1] - 1 : me[1] + 2]
        has_table = (around == SEMANTIC["table"]).any()
        has_furnace = (around == SEMANTIC["furnace"]).any()
        wanted = self._wanted_tools(inv)
        if has_table:
            for tool in wanted:
                if not _MAKE[tool][4] or has_furnace:
                    return f"make_{tool}"

        # 4. tables, furnaces, placing
        buildable = [t for t in wanted if not _MAKE[t][4]] + [t for t in wanted if _MAKE[t][4] and has_furnace]
        table_in_view = (view == SEMANTIC["table"]).any()
        placeable = ahead in (SEMANTIC["grass"], SEMANTIC["sand"], SEMANTIC["path"])
        if has_table and not (view == SEMANTIC["furnace"]).any() and inv["stone"] >= _FURNACE_STONE + 2:
            if placeable:
                return "place_furnace"
        if any(_MAKE[t][4] for t in wanted) and table_in_view and (view == SEMANTIC["furnace"]).any():
            if (a := self._interact(view, me, facing, {"furnace"}, action="noop")) is not None and not has_furnace:
                return a
        if buildable and table_in_view and not has_table:
            if (a := self._interact(view, me, facing, {"table"}, action="noop")) is not None:
                return a
        if not table_in_view and inv["wood"] >= _TABLE_WOOD + 1:
            if placeable:
                return "place_table"
            return self._explore(view, me, turn=True)
        if inv["stone"] >= 1 and not ach["place_stone"] and placeable and inv["stone_pickaxe"]:
            return "place_stone"
        if inv["sapling"] >= 1 and ahead == SEMANTIC["grass"]:
            return "place_plant"

        # 5. sleep
        # a nap as soon as energy is below the maximum is short (about 11 steps); zombies hit sleepers hard
        if inv["energy"] < 9 and (not ach["wake_up"] or inv["energy"] <= 2):
            if not (view == SEMANTIC["zombie"]).any():
                return "sleep"

        # 6. collect
        targets: set[str] = set()
        if inv["wood"] < 6:
            targets.add("tree")
        if inv["wood_pickaxe"]:
            if inv["stone"] < 6:
                targets.add("stone")
            if inv["coal"] < 2:
                targets.add("coal")
        if inv["stone_pickaxe"] and inv["iron"] < 2:
            targets.add("iron")
        if inv["iron_pickaxe"]:
            targets.add("diamond")
        if targets and (a := self._interact(view, me, facing, targets)) is not None:
            return a
        if not ach["collect_sapling"] and not inv["sapling"]:
            if self.sapling_search == 0 and self.rng.random() < 0.05:
                self.sapling_search = 12
            if self.sapling_search > 0:
                self.sapling_search -= 1
                if ahead == SEMANTIC["grass"]:
                    return "do"
        return self._explore(view, me)

    def _wanted_tools(self, inv: dict) -> list[str]:
        wanted = []
        for tool, (wood, stone, coal, iron, _) in _MAKE.items():
            if (
                inv[tool] == 0
                and inv["wood"] >= wood
                and inv["stone"] >= stone
                and inv["coal"] >= coal
                and inv["iron"] >= iron
            ):
                wanted.append(tool)
        return wanted

    def _explore(self, view: np.ndarray, me: np.ndarray, turn: bool = False) -> str:
        """Walk straight on; pick a new direction at an obstacle, on ``turn``, and now and then at random."""
        blocked = not _WALKABLE[self._cell(view, me + self.explore_dir)]
        if blocked or turn or self.rng.random() < self.turn_prob:
            free = [d for d in _DIRS if _WALKABLE[self._cell(view, me + d)]]
            if free:
                others = [d for d in free if d != self.explore_dir] or free
                self.explore_dir = others[int(self.rng.integers(len(others)))]
            else:
                return "noop"
        return _DIRS[self.explore_dir]
