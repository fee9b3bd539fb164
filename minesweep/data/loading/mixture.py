"""Several stores read as one dataset, for mixing datasets with weights.

Episodes are numbered store after store (``position = offset[store] + position in that store``); every store
must have the same resolution and fps. A dataset's weight is its share of the sampled training windows,
whatever its size (see :meth:`StoreMixture.episode_weights`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from minesweep.data.store import EpisodeRecord, EpisodeStore

__all__ = ["StoreMixture"]


class _MixedEpisodes(Sequence):
    def __init__(self, mixture: StoreMixture) -> None:
        self._mixture = mixture

    def __len__(self) -> int:
        return len(self._mixture)

    def __getitem__(self, position: int) -> EpisodeRecord:  # type: ignore[override]
        store, local = self._mixture.locate(position)
        return self._mixture.stores[store].episodes[local]


class StoreMixture:
    """``EpisodeStore``'s read interface over several stores (by position; ids may repeat across stores)."""

    def __init__(self, roots: Sequence[str | Path | EpisodeStore], weights: Sequence[float] | None = None) -> None:
        if not roots:
            raise ValueError("a store mixture needs at least one store")
        self.stores = [r if isinstance(r, EpisodeStore) else EpisodeStore(r) for r in roots]
        self.weights = np.ones(len(self.stores)) if weights is None else np.asarray(weights, float)
        if self.weights.shape != (len(self.stores),) or (self.weights < 0).any() or self.weights.sum() <= 0:
            raise ValueError(
                f"data weights {list(weights or [])} must be one non-negative number per store "
                f"({len(self.stores)}: {[str(s.root) for s in self.stores]}), not all zero"
            )
        first = self.stores[0]
        for store in self.stores[1:]:
            if (store.resolution, store.fps) != (first.resolution, first.fps):
                raise ValueError(
                    f"stores cannot be mixed: {store.root} is {store.resolution} at {store.fps} fps, "
                    f"{first.root} is {first.resolution} at {first.fps} fps; re-ingest one of them"
                )
        self.resolution, self.fps = first.resolution, first.fps
        self.offsets = np.cumsum([0] + [len(s) for s in self.stores])
        self.episodes = _MixedEpisodes(self)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        return np.concatenate([s.lengths for s in self.stores])

    @property
    def store_of_episode(self) -> np.ndarray:
        """``(N,)``: which store each episode comes from."""
        return np.repeat(np.arange(len(self.stores)), np.diff(self.offsets))

    def locate(self, position: int) -> tuple[int, int]:
        if not 0 <= position < len(self):
            raise IndexError(f"episode {position} out of range: the mixture has {len(self)} episodes")
        store = int(np.searchsorted(self.offsets, position, side="right") - 1)
        return store, int(position - self.offsets[store])

    def episode_weights(self, starts: np.ndarray, mode: str) -> np.ndarray:
        """Per-episode sampling weights such that store ``d`` gets ``weights[d] / sum(weights)`` of the windows.

        ``starts``: window starts per episode (what ``mode="frames"`` sampling is proportional to)."""
        store = self.store_of_episode
        mass = starts.astype(float) if mode == "frames" else np.ones(len(store))
        per_store = np.bincount(store, weights=mass, minlength=len(self.stores))
        return self.weights[store] / np.where(per_store[store] > 0, per_store[store], 1.0)

    def read_frames(self, position: int, start: int, length: int, out: np.ndarray | None = None) -> np.ndarray:
        store, local = self.locate(position)
        return self.stores[store].read_frames(local, start, length, out=out)

    @property
    def has_segmentation(self) -> bool:
        return any(store.has_segmentation for store in self.stores)

    def read_segmentation(self, position: int, start: int, length: int) -> dict[str, np.ndarray] | None:
        store, local = self.locate(position)
        return self.stores[store].read_segmentation(local, start, length)

    @property
    def has_events(self) -> bool:
        return all(store.has_events for store in self.stores)

    @property
    def event_names(self) -> list[str]:
        return sorted({name for store in self.stores for name in store.event_names})

    @property
    def events(self) -> np.ndarray:
        """Every store's events, episodes renumbered to mixture positions and names to :attr:`event_names`."""
        names = {name: i for i, name in enumerate(self.event_names)}
        tables = []
        for offset, store in zip(self.offsets, self.stores, strict=False):
            table = np.array(store.events)
            recode = np.array([names[n] for n in store.event_names] or [0], np.int32)
            table["episode"] += offset
            table["name"] = recode[table["name"]] if len(table) else table["name"]
            tables.append(table)
        return np.concatenate(tables)

    def read_actions(self, position: int) -> dict[str, np.ndarray]:
        store, local = self.locate(position)
        return self.stores[store].read_actions(local)

    def close(self) -> None:
        for store in self.stores:
            store.close()
