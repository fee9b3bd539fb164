"""Grid sweeps over objective lists: overrides for objectives a job does not train with are dropped.

``python train.py -m 'objective=[bc],[bc,kl]' objective.kl.weight=0.001,0.01,0.1`` is a grid of 6
jobs, three of which train ``[bc]`` and get an ``objective.kl.weight`` override for a key their config
does not have (Hydra would refuse to compose them). The grid sweeper drops such overrides, and jobs
that then have identical overrides run once: that sweep runs 1 + 3 jobs.

The Optuna sweeper avoids the problem at the source: it only suggests weights of selected
objectives (``minesweep.sweeps.search_space``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from hydra.core.override_parser.overrides_parser import OverridesParser

log = logging.getLogger(__name__)


def selected_objectives(overrides: Sequence[str], default: Iterable[str]) -> list[str]:
    """The objectives a job trains with: its ``objective=...`` override, else ``default``."""
    selected = list(default)
    parser = OverridesParser.create()
    for override in parser.parse_overrides(list(overrides)):
        if override.get_key_element().lstrip("+~") != "objective" or override.is_delete():
            continue
        value = override.value()
        names = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        if override.is_add():  # +objective=kl appends to the defaults
            selected += [n for n in names if n not in selected]
        else:
            selected = names
    return selected


def objective_of(key: str) -> str | None:
    """``objective.kl.weight`` / ``+objective.kl.x`` -> ``kl``; None for any other key."""
    parts = key.lstrip("+~").split(".")
    return parts[1] if len(parts) >= 3 and parts[0] == "objective" else None


def drop_unselected(overrides: Sequence[str], default: Iterable[str]) -> tuple[list[str], list[str]]:
    """``(kept, dropped)``: overrides of objectives the job does not train with are dropped."""
    selected = selected_objectives(overrides, default)
    kept, dropped = [], []
    for item in overrides:
        name = objective_of(item.split("=", 1)[0])
        (dropped if name is not None and name not in selected else kept).append(item)
    return kept, dropped


def deduplicate(jobs: Sequence[Sequence[str]], default: Iterable[str]) -> tuple[list[list[str]], list[int]]:
    """``(unique jobs, index into them for every input job)`` after dropping unselected-objective overrides."""
    default = list(default)
    unique: list[list[str]] = []
    where: list[int] = []
    seen: dict[tuple[str, ...], int] = {}
    for number, overrides in enumerate(jobs):
        kept, dropped = drop_unselected(overrides, default)
        key = tuple(sorted(kept))
        if dropped:
            log.info("job #%d: dropped %s (not among its objectives)", number, " ".join(dropped))
        if key not in seen:
            seen[key] = len(unique)
            unique.append(kept)
        elif dropped:
            log.info("job #%d is the same job as another once those are dropped: it runs once", number)
        where.append(seen[key])
    return unique, where
