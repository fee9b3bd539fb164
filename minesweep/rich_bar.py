"""A rich progress bar over a count of items (games recorded, worlds played), with the time elapsed and remaining:
for the steps that run outside the Lightning trainer (its bar is minesweep.progress). Free of Lightning, so that
``minesweep-eval`` and ``minesweep-data`` start without importing it."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["counting_bar"]


def counting_bar(enabled: bool, unit: str = "") -> Progress:
    """``description [bar] done/total unit elapsed ETA remaining``; ``enabled=False``: draws nothing."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )
