"""Crafter as a Minecraft stand-in: the game adapter and the action mapping to contractor inputs.

Crafter (``pip install crafter``) is a 2D Minecraft-like survival game with 17 discrete actions
and 22 achievements. To train on its recordings with the Minecraft pipeline unchanged, every
Crafter action is written as the contractor input a Minecraft player would give for it:

==================== ================================= =============================
Crafter action        contractor input                  env buttons
==================== ================================= =============================
noop                  nothing                           (none)
move_left             key A                             left
move_right            key D                             right
move_up               key W                             forward
move_down             key S                             back
do                    left mouse button                 attack
sleep                 left shift                        sneak
place_stone           right mouse + key 1               use, hotbar.1
place_table           right mouse + key 2               use, hotbar.2
place_furnace         right mouse + key 3               use, hotbar.3
place_plant           right mouse + key 4               use, hotbar.4
make_wood_pickaxe     right mouse + shift + key 1       use, sneak, hotbar.1
make_stone_pickaxe    right mouse + shift + key 2       use, sneak, hotbar.2
make_iron_pickaxe     right mouse + shift + key 3       use, sneak, hotbar.3
make_wood_sword       right mouse + shift + key 4       use, sneak, hotbar.4
make_stone_sword      right mouse + shift + key 5       use, sneak, hotbar.5
make_iron_sword       right mouse + shift + key 6       use, sneak, hotbar.6
==================== ================================= =============================

The mouse never moves: the camera is always null (so the camera loss is masked, as for any null
camera). The map is one-to-one: 17 distinct button sets, hence 17 distinct VPT joint button
indices. Back from a predicted agent action, the button set must equal one of the 17 exactly
(the camera is ignored); anything else (jump, sprint, two moves, ...) plays ``noop``.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minesweep.actions.space import BUTTON_INDEX_TO_FACTORED, BUTTONS, N_BUTTONS, _as_numpy

__all__ = [
    "ACTIONS",
    "N_ACTIONS",
    "ACHIEVEMENTS",
    "NOOP",
    "ContractorInput",
    "CONTRACTOR_INPUTS",
    "action_to_env_buttons",
    "env_buttons_to_action",
    "agent_to_action",
    "contractor_steps",
    "CrafterEnv",
]

#: Crafter's actions, in its own index order (crafter/data.yaml).
ACTIONS: tuple[str, ...] = (
    "noop",
    "move_left",
    "move_right",
    "move_up",
    "move_down",
    "do",
    "sleep",
    "place_stone",
    "place_table",
    "place_furnace",
    "place_plant",
    "make_wood_pickaxe",
    "make_stone_pickaxe",
    "make_iron_pickaxe",
    "make_wood_sword",
    "make_stone_sword",
    "make_iron_sword",
)
N_ACTIONS = len(ACTIONS)
NOOP = 0
ACTION_INDEX = {name: i for i, name in enumerate(ACTIONS)}

#: Crafter's 22 achievements (crafter/data.yaml order).
ACHIEVEMENTS: tuple[str, ...] = (
    "collect_coal",
    "collect_diamond",
    "collect_drink",
    "collect_iron",
    "collect_sapling",
    "collect_stone",
    "collect_wood",
    "defeat_skeleton",
    "defeat_zombie",
    "eat_cow",
    "eat_plant",
    "make_iron_pickaxe",
    "make_iron_sword",
    "make_stone_pickaxe",
    "make_stone_sword",
    "make_wood_pickaxe",
    "make_wood_sword",
    "place_furnace",
    "place_plant",
    "place_stone",
    "place_table",
    "wake_up",
)

_ATTACK, _USE = 0, 1  # contractor mouse buttons
_SHIFT = "key.keyboard.left.shift"


@dataclass(frozen=True)
class ContractorInput:
    """What a contractor holds during one step: keyboard keys, mouse buttons, and the hotbar key (1..9)."""

    keys: tuple[str, ...] = ()
    mouse_buttons: tuple[int, ...] = ()
    hotbar: int | None = None


def _place(slot: int) -> ContractorInput:
    return ContractorInput(mouse_buttons=(_USE,), hotbar=slot)


def _make(slot: int) -> ContractorInput:
    return ContractorInput(keys=(_SHIFT,), mouse_buttons=(_USE,), hotbar=slot)


#: The mapping (see the module docstring); hotbar keys are added to ``keys`` when written.
CONTRACTOR_INPUTS: dict[str, ContractorInput] = {
    "noop": ContractorInput(),
    "move_left": ContractorInput(keys=("key.keyboard.a",)),
    "move_right": ContractorInput(keys=("key.keyboard.d",)),
    "move_up": ContractorInput(keys=("key.keyboard.w",)),
    "move_down": ContractorInput(keys=("key.keyboard.s",)),
    "do": ContractorInput(mouse_buttons=(_ATTACK,)),
    "sleep": ContractorInput(keys=(_SHIFT,)),
    "place_stone": _place(1),
    "place_table": _place(2),
    "place_furnace": _place(3),
    "place_plant": _place(4),
    "make_wood_pickaxe": _make(1),
    "make_stone_pickaxe": _make(2),
    "make_iron_pickaxe": _make(3),
    "make_wood_sword": _make(4),
    "make_stone_sword": _make(5),
    "make_iron_sword": _make(6),
}

_COL = {name: i for i, name in enumerate(BUTTONS)}
_KEY_BUTTON = {
    "key.keyboard.a": "left",
    "key.keyboard.d": "right",
    "key.keyboard.w": "forward",
    "key.keyboard.s": "back",
    _SHIFT: "sneak",
}


def _buttons_of(inp: ContractorInput) -> np.ndarray:
    row = np.zeros(N_BUTTONS, np.uint8)
    for key in inp.keys:
        row[_COL[_KEY_BUTTON[key]]] = 1
    if _ATTACK in inp.mouse_buttons:
        row[_COL["attack"]] = 1
    if _USE in inp.mouse_buttons:
        row[_COL["use"]] = 1
    if inp.hotbar is not None:
        row[_COL[f"hotbar.{inp.hotbar}"]] = 1
    return row


#: Env buttons (BUTTONS order) of each Crafter action, uint8 (17, 20).
ACTION_TO_ENV_BUTTONS = np.stack([_buttons_of(CONTRACTOR_INPUTS[name]) for name in ACTIONS])
ACTION_TO_ENV_BUTTONS.flags.writeable = False
if len({row.tobytes() for row in ACTION_TO_ENV_BUTTONS}) != N_ACTIONS:  # the map must stay invertible
    raise AssertionError("two Crafter actions share one contractor input")


def _build_agent_table() -> np.ndarray:
    """Crafter action of each VPT joint buttons index (8641,): exact button-set match, else noop."""
    codes = {row.tobytes(): a for a, row in enumerate(ACTION_TO_ENV_BUTTONS)}
    table = np.full(BUTTON_INDEX_TO_FACTORED.shape[0], NOOP, np.int64)
    for index, row in enumerate(BUTTON_INDEX_TO_FACTORED.astype(np.uint8)):
        table[index] = codes.get(row.tobytes(), NOOP)
    table.flags.writeable = False
    return table


#: Crafter action of each VPT joint buttons index; the camera half of an agent action plays no part.
AGENT_BUTTONS_TO_ACTION = _build_agent_table()


def action_to_env_buttons(action: Any) -> np.ndarray:
    """Crafter action indices ``(...)`` -> env buttons ``(..., 20)`` uint8."""
    a = _as_numpy(action).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() >= N_ACTIONS):
        raise ValueError(f"Crafter actions must be in [0, {N_ACTIONS - 1}], got [{a.min()}, {a.max()}]")
    return ACTION_TO_ENV_BUTTONS[a]


def env_buttons_to_action(buttons: Any) -> np.ndarray:
    """Env buttons ``(..., 20)`` -> Crafter action indices ``(...)``; a button set that is not one of the 17 -> noop."""
    b = (_as_numpy(buttons) != 0).astype(np.uint8)
    if b.ndim == 0 or b.shape[-1] != N_BUTTONS:
        raise ValueError(f"buttons: expected shape (..., {N_BUTTONS}), got {b.shape}")
    match = np.all(b[..., None, :] == ACTION_TO_ENV_BUTTONS, axis=-1)  # (..., 17)
    return np.where(match.any(-1), match.argmax(-1), NOOP).astype(np.int64)


def agent_to_action(buttons_index: Any) -> np.ndarray:
    """VPT agent buttons index ``(...)`` (what the policy samples) -> Crafter action ``(...)``."""
    b = _as_numpy(buttons_index).astype(np.int64)
    if b.size and (b.min() < 0 or b.max() >= AGENT_BUTTONS_TO_ACTION.shape[0]):
        raise ValueError(
            f"buttons_index out of range [0, {AGENT_BUTTONS_TO_ACTION.shape[0] - 1}]: [{b.min()}, {b.max()}]"
        )
    return AGENT_BUTTONS_TO_ACTION[b]


def contractor_steps(actions: Sequence[int], extra: Sequence[dict] | None = None) -> list[dict]:
    """One contractor ``.jsonl`` step per Crafter action, as :mod:`minesweep.actions.contractor` reads it.

    Two contractor quirks are handled so that every step decodes to exactly its action:

    * hotbar keys: the ``hotbar`` field follows the selected slot (0-based), changing only on a step that
      presses that slot's key, so a change never adds a hotbar press to a step that has none;
    * attack-stuck fix: ``newButtons == [0]`` at step 0 would drop the attack until it is released, so an
      attack at step 0 is recorded as held, not new.

    ``extra``: optional per-step fields merged into each step (e.g. ``{"crafter": {...}}``; ingest reads ``events``).
    """
    if extra is not None and len(extra) != len(actions):
        raise ValueError(f"extra has {len(extra)} entries for {len(actions)} actions")
    steps: list[dict] = []
    slot = 0
    prev_keys: list[str] = []
    prev_buttons: list[int] = []
    for t, action in enumerate(actions):
        if not 0 <= int(action) < N_ACTIONS:
            raise ValueError(f"step {t}: Crafter action {action!r} is not in [0, {N_ACTIONS - 1}]")
        inp = CONTRACTOR_INPUTS[ACTIONS[int(action)]]
        keys = list(inp.keys)
        if inp.hotbar is not None:
            keys.append(f"key.keyboard.{inp.hotbar}")
            slot = inp.hotbar - 1
        buttons = list(inp.mouse_buttons)
        new_buttons = [] if t == 0 else [b for b in buttons if b not in prev_buttons]
        step = {
            "mouse": {
                "x": 640.0,
                "y": 360.0,
                "dx": 0.0,
                "dy": 0.0,
                "scaledX": 0.0,
                "scaledY": 0.0,
                "dwheel": 0.0,
                "buttons": buttons,
                "newButtons": new_buttons,
            },
            "keyboard": {"keys": keys, "newKeys": [k for k in keys if k not in prev_keys], "chars": ""},
            "isGuiOpen": False,
            "isGuiInventory": False,
            "hotbar": slot,
            "tick": t,
        }
        if extra is not None:
            step.update(extra[t])
        steps.append(step)
        prev_keys, prev_buttons = keys, buttons
    return steps


class _InsertionOrderedSet(dict):
    """A set of objects that iterates in insertion order (a dict with ``add``/``remove``)."""

    def add(self, item: Any) -> None:
        self[item] = None

    def remove(self, item: Any) -> None:
        del self[item]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())


def _make_deterministic(world: Any) -> None:
    """Crafter keeps each chunk's creatures in a ``set`` of objects, which iterates in memory-address order, and
    picks the creature to despawn by its index in that order: the same seed then plays out differently from run
    to run. Insertion-ordered chunk sets make a world a function of its seed alone."""
    reset = world.reset

    def ordered_reset(seed: int | None = None) -> None:
        reset(seed)
        world._chunks = collections.defaultdict(_InsertionOrderedSet)

    world.reset = ordered_reset


class CrafterEnv:
    """One Crafter world (fixed ``seed``), rendered at ``size`` x ``size``, ending after ``length`` steps or death.

    ``reset() -> (obs, info)`` and ``step(action) -> (obs, reward, done, info)``; ``obs`` is uint8 (size, size, 3).
    ``info`` holds Crafter's own fields (``inventory``, ``achievements``, ``semantic``: the material/object id
    map of the whole world, ``player_pos``) and, for scripted players, ``facing`` (the player's direction) and
    ``sleeping``; ``reset`` gives the same fields (Crafter's own reset gives none). An episode is a function of
    ``seed`` and the actions (see :func:`_make_deterministic`).
    """

    def __init__(self, seed: int, size: int = 128, length: int = 500) -> None:
        try:
            import crafter
        except ImportError as err:  # a dependency, but say what is missing
            raise ImportError(
                "minesweep.envs.crafter needs the `crafter` package: pip install crafter 'opensimplex==0.3'"
            ) from err
        if tuple(crafter.constants.actions) != ACTIONS:
            raise RuntimeError(f"this crafter release has actions {crafter.constants.actions}, expected {ACTIONS}")
        if size <= 0 or length <= 0:
            raise ValueError(f"size and length must be positive, got size={size}, length={length}")
        self.seed, self.size, self.length = int(seed), int(size), int(length)
        self._env = crafter.Env(size=(self.size, self.size), length=self.length, seed=self.seed)
        _make_deterministic(self._env._world)
        self.view = tuple(int(v) for v in self._env._local_view._grid)  # (9, 7) cells around the player

    #: semantic map ids: 0 unknown, materials 1..12, then objects (crafter's SemanticView order)
    @property
    def semantic_ids(self) -> dict[str, int]:
        ids = {name: i for name, i in self._env._world._mat_ids.items() if name is not None}
        ids.update({cls.__name__.lower(): i for cls, i in self._env._sem_view._obj_ids.items()})
        return ids

    def _info(self, info: dict | None) -> dict:
        player = self._env._player
        if info is None:  # after reset
            info = {
                "inventory": player.inventory.copy(),
                "achievements": player.achievements.copy(),
                "semantic": self._env._sem_view(),
                "player_pos": player.pos.copy(),
                "reward": 0.0,
            }
        info["facing"] = tuple(int(v) for v in player.facing)
        info["sleeping"] = bool(player.sleeping)
        return info

    def reset(self) -> tuple[np.ndarray, dict]:
        obs = self._env.reset()
        return obs, self._info(None)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict]:
        if not 0 <= int(action) < N_ACTIONS:
            raise ValueError(f"Crafter action must be in [0, {N_ACTIONS - 1}], got {action!r}")
        obs, reward, done, info = self._env.step(int(action))
        return obs, float(reward), bool(done), self._info(info)

    def render(self, size: int) -> np.ndarray:
        """The current frame at another resolution (e.g. a larger one for videos)."""
        return self._env.render((size, size))
