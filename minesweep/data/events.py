"""Events of an episode: ``(frame, name)`` pairs such as ``(113, "place_table")``, and how they are found.

An event at frame ``t`` means that action ``t`` (the answer to frame ``t``) brought it about, so a window that
ends at ``t`` holds both what the player saw and what it did. Where events come from:

* contractor ``.jsonl`` steps (:func:`contractor_events`):

  - ``"events": ["collect_wood", ...]``: names, each an event at that step (what our Crafter recorder writes:
    the achievements unlocked by the step's action);
  - ``"stats": {"minecraft.mine_block:minecraft.oak_log": 3, ...}``: Minecraft's cumulative statistics; a step
    where a counter went up (by any amount) has one event named after it, ``minecraft.`` dropped
    (``mine_block:oak_log``, ``craft_item:crafting_table``, ``pickup:...``). The first step is the baseline: a
    recording that starts with counters already above zero does not turn them into events at frame 0. The
    ``custom`` category (time played, distance walked, jumps: counters that move nearly every step) is not an
    event.

* MineStudio datasets with an ``event`` modality (``minesweep.data.ingest.minestudio``).

Names are matched by shell-style patterns (``make_*``, ``mine_block:*``) in ``data.events``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence

from minesweep.actions.contractor import ContractorFormatError

__all__ = ["Event", "EventError", "check_events", "contractor_events", "match_event_names", "stat_event_name"]

Event = tuple[int, str]
#: Statistics that are not events: Minecraft's general counters, which change nearly every step.
IGNORED_STATS = ("custom:",)


class EventError(ValueError):
    """An episode's events are malformed (bad frame, bad name)."""


def _check_name(name: object, where: str) -> str:
    if not isinstance(name, str) or not name or name != name.strip() or any(c in name for c in "\n\r\t,"):
        raise EventError(
            f"{where}: an event name must be a non-empty string without commas or line breaks, got {name!r}"
        )
    return name


def check_events(events: Iterable[Sequence], length: int, where: str) -> tuple[Event, ...]:
    """``events`` as sorted ``(frame, name)`` pairs, each frame in ``[0, length)``; :class:`EventError` names
    ``where`` (the episode) and the bad pair otherwise."""
    checked = []
    for pair in events:
        if not isinstance(pair, Sequence) or isinstance(pair, str) or len(pair) != 2:
            raise EventError(f"{where}: an event must be a (frame, name) pair, got {pair!r}")
        frame, name = pair
        if isinstance(frame, bool) or not isinstance(frame, int) and not hasattr(frame, "__index__"):
            raise EventError(f"{where}: event {pair!r}: the frame must be an integer")
        frame = int(frame)
        if not 0 <= frame < length:
            raise EventError(f"{where}: event {name!r} at frame {frame}, outside the episode's {length} frames")
        checked.append((frame, _check_name(name, where)))
    return tuple(sorted(checked))


def stat_event_name(counter: str) -> str:
    """``minecraft.mine_block:minecraft.oak_log`` -> ``mine_block:oak_log``."""
    return ":".join(part.removeprefix("minecraft.") for part in counter.split(":"))


def contractor_events(steps: Sequence[Mapping], source: str = "<jsonl>") -> list[Event]:
    """The events of a contractor episode, from its steps' ``events`` lists and ``stats`` counters (module
    docstring). Raises :class:`ContractorFormatError` naming ``source``, the step and the key for a bad value."""
    events: list[Event] = []
    previous: dict[str, float] | None = None
    for i, step in enumerate(steps):
        names = step.get("events")
        if names is not None:
            if not isinstance(names, list):
                raise ContractorFormatError(f"{source}: step {i}: 'events' must be a list of names", step=i)
            for name in names:
                try:
                    events.append((i, _check_name(name, f"{source}: step {i}: 'events'")))
                except EventError as err:
                    raise ContractorFormatError(str(err), step=i) from None
        stats = step.get("stats")
        if stats is None:
            continue
        if not isinstance(stats, Mapping):
            raise ContractorFormatError(f"{source}: step {i}: 'stats' must be an object of counters", step=i)
        current: dict[str, float] = {}
        for key, value in stats.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ContractorFormatError(
                    f"{source}: step {i}: 'stats.{key}' must be a finite number, got {value!r}", step=i
                )
            current[key] = float(value)
        if previous is not None:
            for key, value in current.items():
                name = stat_event_name(key)
                if value > previous.get(key, 0.0) and not name.startswith(IGNORED_STATS):
                    events.append((i, name))
        previous = current
    return sorted(events)


def match_event_names(patterns: Sequence[str], names: Iterable[str], where: str) -> list[str]:
    """The names matching any of ``patterns`` (shell-style), sorted. A pattern that matches none raises, listing
    the names there are (a typo must not silently train on nothing)."""
    names = sorted(set(names))
    matched: set[str] = set()
    for pattern in patterns:
        hits = fnmatch.filter(names, str(pattern))
        if not hits:
            shown = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
            raise ValueError(f"{pattern!r} matches no event in {where} (it has: {shown or 'no events at all'})")
        matched.update(hits)
    return sorted(matched)
