"""Data: contractor recordings -> training store -> window batches.

``MineDataModule`` and ``EpisodeStore`` are imported lazily so that ``import minesweep.data`` stays light
(no torch / lightning / PyAV until they are used).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["MineDataModule", "EpisodeStore"]

if TYPE_CHECKING:
    from minesweep.data.datamodule import MineDataModule
    from minesweep.data.store import EpisodeStore


def __getattr__(name: str) -> Any:
    if name == "MineDataModule":
        from minesweep.data.datamodule import MineDataModule

        return MineDataModule
    if name == "EpisodeStore":
        from minesweep.data.store import EpisodeStore

        return EpisodeStore
    raise AttributeError(f"module 'minesweep.data' has no attribute {name!r}")
