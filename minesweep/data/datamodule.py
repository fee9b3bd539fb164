"""Windows of a store as training batches: ``WindowDataset`` and the Lightning ``MineDataModule``.

Each episode is cut into consecutive windows of ``win_len`` frames (stride ``win_len``), so one epoch serves every
frame exactly once; the last window of an episode is padded with zeros and mask 0. Episodes, not windows, are
split into train and val, so no validation frame is ever seen in training.

One item (and, stacked by ``default_collate``, one batch with a leading B)::

    image         uint8   (T, H, W, 3)
    agent_action  {"buttons": int64 (T, 1), "camera": int64 (T, 1)}   # env_to_agent; padding -> (0, 60)
    env_action    {"buttons": uint8 (T, 20), "camera": float32 (T, 2)}
    mask          float32 (T,)   1 for real frames, 0 for padding
    is_null       bool    (T,)   null env action (padding counts as null)
    episode       int64   ()     index of the episode in the manifest (-1: padding window)
    window_index  int64   ()     index of the window in its episode: (episode, window_index) is the
                                 continuity key the trainer uses to carry memory between batches
    timestep      int64   (T,)   frame index in the episode (padding continues the count; frame_skip
                                 k keeps every k-th frame)
    first         bool    (T,)   True exactly at timestep 0: the episode-start flag
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from minesweep.actions import CAMERA_NULL_INDEX, NULL_BUTTONS_INDEX, env_to_agent
from minesweep.data.sampler import PAD, EpisodeContinuousBatchSampler
from minesweep.data.store import MANIFEST, EpisodeStore

__all__ = ["WindowDataset", "MineDataModule", "split_episodes"]

log = logging.getLogger(__name__)

_HOW_TO_CREATE = ("create one with `minesweep-data ingest SRC DST` (contractor .mp4 + .jsonl recordings) or "
                  "`minesweep-data synth OUT --episodes N --frames T` followed by ingest, "
                  "or configure `demo` to generate synthetic data on first use")


class WindowDataset(Dataset):
    """Fixed-length windows over some episodes of a store. Videos are opened lazily in the reading process."""

    def __init__(self, store: EpisodeStore | str | Path, episodes: Sequence[int] | None = None,
                 win_len: int = 32, frame_skip: int = 1) -> None:
        if win_len <= 0:
            raise ValueError(f"win_len must be positive, got {win_len}")
        if frame_skip <= 0:
            raise ValueError(f"frame_skip must be positive, got {frame_skip}")
        self.store = store if isinstance(store, EpisodeStore) else EpisodeStore(store)
        self.win_len, self.frame_skip = int(win_len), int(frame_skip)
        self.episode_indices = list(range(len(self.store.episodes)) if episodes is None else episodes)
        # (episode index in the manifest, start frame, window index in the episode) for every window;
        # a window spans win_len * frame_skip frames and keeps every frame_skip-th one.
        span = self.win_len * self.frame_skip
        self.windows: list[tuple[int, int, int]] = [
            (e, start, i)
            for e in self.episode_indices
            for i, start in enumerate(range(0, self.store.episodes[e].length, span))
        ]

    def episode_windows(self) -> list[list[int]]:
        """Dataset indices of each episode's windows, in temporal order (for the continuous sampler)."""
        by_episode: dict[int, list[int]] = {}
        for index, (episode, _, _) in enumerate(self.windows):
            by_episode.setdefault(episode, []).append(index)
        return list(by_episode.values())

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index == PAD:
            return self._padding()
        episode, start, window_index = self.windows[index]
        record = self.store.episodes[episode]
        T, k = self.win_len, self.frame_skip
        frames = np.arange(start, start + T * k, k)
        n = int((frames < record.length).sum())  # real frames in this window; the rest is padding
        h, w = self.store.resolution

        image = np.zeros((T, h, w, 3), np.uint8)
        image[:n] = self.store.read_frames(record.id, start, (n - 1) * k + 1)[::k]
        actions = self.store.read_actions(record.id)
        real = frames[:n]
        env_buttons = np.zeros((T, 20), np.uint8)
        env_camera = np.zeros((T, 2), np.float32)
        is_null = np.ones(T, bool)
        env_buttons[:n] = actions["buttons"][real]
        env_camera[:n] = actions["camera"][real]
        is_null[:n] = actions["is_null"][real]

        agent_buttons = np.full(T, NULL_BUTTONS_INDEX, np.int64)
        agent_camera = np.full(T, CAMERA_NULL_INDEX, np.int64)
        agent_buttons[:n], agent_camera[:n] = env_to_agent(env_buttons[:n], env_camera[:n])

        mask = np.zeros(T, np.float32)
        mask[:n] = 1.0
        return {
            "image": torch.from_numpy(image),
            "agent_action": {"buttons": torch.from_numpy(agent_buttons[:, None]),
                             "camera": torch.from_numpy(agent_camera[:, None])},
            "env_action": {"buttons": torch.from_numpy(env_buttons), "camera": torch.from_numpy(env_camera)},
            "mask": torch.from_numpy(mask),
            "is_null": torch.from_numpy(is_null),
            "episode": torch.tensor(episode, dtype=torch.int64),
            "window_index": torch.tensor(window_index, dtype=torch.int64),
            "timestep": torch.from_numpy(frames.astype(np.int64)),
            "first": torch.from_numpy(frames == 0),
        }

    def _padding(self) -> dict[str, Any]:
        """A fully masked window for a continuous-batch slot that has run out of episodes."""
        T = self.win_len
        h, w = self.store.resolution
        return {
            "image": torch.zeros(T, h, w, 3, dtype=torch.uint8),
            "agent_action": {"buttons": torch.full((T, 1), NULL_BUTTONS_INDEX, dtype=torch.int64),
                             "camera": torch.full((T, 1), CAMERA_NULL_INDEX, dtype=torch.int64)},
            "env_action": {"buttons": torch.zeros(T, 20, dtype=torch.uint8), "camera": torch.zeros(T, 2)},
            "mask": torch.zeros(T),
            "is_null": torch.ones(T, dtype=torch.bool),
            "episode": torch.tensor(PAD, dtype=torch.int64),
            "window_index": torch.tensor(PAD, dtype=torch.int64),
            "timestep": torch.full((T,), PAD, dtype=torch.int64),
            "first": torch.zeros(T, dtype=torch.bool),
        }


def split_episodes(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, val) split of episode indices ``0..n-1``; at least one val episode when n >= 2
    and val_fraction > 0, and at least one train episode."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = 0 if n < 2 or val_fraction == 0 else min(max(1, round(n * val_fraction)), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class MineDataModule(L.LightningDataModule):
    """Train/val window loaders over a store at ``root`` (see the module docstring for the batch format).

    ``demo``: what ``prepare_data()`` records and ingests into ``root`` when ``root`` holds no store (first use).
    Either a recipe called with the recordings folder, such as
    :class:`minesweep.envs.crafter_record.CrafterRecordings` (conf/data/demo.yaml), or a mapping of synthetic
    recording settings, e.g. ``{episodes: 24, frames: 256, width: 320, height: 180, seed: 0}``
    (conf/data/synth_demo.yaml: the synthetic world, which also has camera actions). ``resolution`` (a key of the
    mapping or an attribute of the recipe) is the store's frame size, 128 by default.
    """

    def __init__(self, root: str, win_len: int = 32, batch_size: int = 8, num_workers: int = 2,
                 val_fraction: float = 0.125, episode_continuous_batch: bool = False, seed: int = 0,
                 demo: dict | None = None, frame_skip: int = 1) -> None:
        super().__init__()
        self.root = Path(root)
        self.win_len, self.batch_size, self.num_workers = int(win_len), int(batch_size), int(num_workers)
        self.frame_skip = int(frame_skip)
        # Each batch slot follows one episode window after window; a memory policy's state is then
        # carried across batches by MineLightning (see minesweep/data/sampler.py).
        self.episode_continuous_batch = bool(episode_continuous_batch)
        self._train_sampler: EpisodeContinuousBatchSampler | None = None
        self._resume_state: dict[str, Any] | None = None
        self.val_fraction, self.seed = float(val_fraction), int(seed)
        self.demo = dict(demo) if isinstance(demo, Mapping) else demo
        self._store: EpisodeStore | None = None
        self.train_set: WindowDataset | None = None
        self.val_set: WindowDataset | None = None

    # -- data preparation -----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if (self.root / MANIFEST).is_file() or not self.demo:
            return
        self._generate_demo()

    def _generate_demo(self) -> None:
        from minesweep.data.ingest import ingest
        from minesweep.data.synth import generate_recordings

        demo = self.demo or {}
        log.info("minesweep: generating demo data into %s (first use)", self.root)
        raw = self.root.parent / "demo_raw"  # kept next to the store: the raw recordings can be re-ingested
        if isinstance(demo, Mapping):
            res = demo.get("resolution", 128)
            generate_recordings(raw, episodes=int(demo.get("episodes", 24)), frames=int(demo.get("frames", 256)),
                                seed=int(demo.get("seed", 0)), width=int(demo.get("width", 320)),
                                height=int(demo.get("height", 180)))
        elif callable(demo):
            res = getattr(demo, "resolution", 128)
            demo(raw)
        else:
            raise TypeError(f"data.demo must be a mapping of synthetic-recording settings or a recording recipe "
                            f"with _target_ (e.g. minesweep.envs.crafter_record.CrafterRecordings), got {demo!r}")
        resolution = (int(res), int(res)) if isinstance(res, int) else (int(res[0]), int(res[1]))
        report = ingest(raw, self.root, resolution=resolution, print_summary=False)
        if report.skipped:
            raise RuntimeError(f"demo data generation into {self.root} skipped episodes: {report.skipped}")

    # -- store and splits -----------------------------------------------------------------------------------
    @property
    def store(self) -> EpisodeStore:
        if self._store is None:
            if not (self.root / MANIFEST).is_file():
                raise FileNotFoundError(f"no training store at {self.root} ({self.root / MANIFEST} is missing): "
                                        + _HOW_TO_CREATE)
            self._store = EpisodeStore(self.root)
            if not self._store.episodes:
                raise ValueError(f"the store at {self.root} has no episodes")
        return self._store

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.demo and not (self.root / MANIFEST).is_file():
            self.prepare_data()  # used outside a Trainer: prepare lazily
        train, val = split_episodes(len(self.store.episodes), self.val_fraction, self.seed)
        self.train_set = WindowDataset(self.store, train, self.win_len, self.frame_skip)
        self.val_set = WindowDataset(self.store, val, self.win_len, self.frame_skip)

    # -- loaders --------------------------------------------------------------------------------------------
    def _loader(self, dataset: WindowDataset, shuffle: bool) -> DataLoader:
        if self.episode_continuous_batch:
            sampler = EpisodeContinuousBatchSampler(
                dataset.episode_windows(), self.batch_size, shuffle=shuffle, seed=self.seed
            )
            if shuffle:  # the training sampler: the one a checkpoint resumes
                if self._resume_state is not None:
                    sampler.load_state_dict(self._resume_state)
                    self._resume_state = None
                self._train_sampler = sampler
            # DataLoader keeps batch order with any number of workers, so slots stay continuous.
            return DataLoader(dataset, batch_sampler=sampler, num_workers=self.num_workers,
                              persistent_workers=self.num_workers > 0)
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          drop_last=False)

    def train_dataloader(self) -> DataLoader:
        self.setup("fit")
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return self._loader(self.val_set, shuffle=False)

    # -- resume: the continuous sampler continues at the exact next batch ----------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._train_sampler is None or self.trainer is None:
            return {}
        # Batches *trained on* in this epoch, not the sampler's own position: workers prefetch ahead.
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return {"train_sampler": self._train_sampler.state_dict(batches_done=int(done))}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = state_dict.get("train_sampler")
