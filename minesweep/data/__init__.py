"""Data: contractor recordings -> training store -> window batches.

``MineDataModule`` and ``EpisodeStore`` are imported lazily so that ``import minesweep.data`` stays light
(no torch / lightning / PyAV until they are used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["CorruptDataError", "MineDataModule", "EpisodeStore"]

if TYPE_CHECKING:
    from minesweep.data.loading.datamodule import MineDataModule
    from minesweep.data.store import CorruptDataError, EpisodeStore


def __getattr__(name: str) -> Any:
    if name == "MineDataModule":
        from minesweep.data.loading.datamodule import MineDataModule

        return MineDataModule
    if name in ("EpisodeStore", "CorruptDataError"):
        from minesweep.data import store

        return getattr(store, name)
    raise AttributeError(f"module 'minesweep.data' has no attribute {name!r}")
