"""Windows of a store as training batches: ``WindowDataset`` and the Lightning ``MineDataModule``.

Training windows come one of these ways (``sampling``):

* ``grid``: each episode cut into consecutive windows of ``win_len`` frames, shuffled; an epoch serves every frame
  exactly once; the last window of an episode is padded with zeros and mask 0 (also what validation uses);
* ``frames``: random windows, every window start of the data equally likely;
* ``episodes``: random windows, every episode equally likely;
* ``events``: windows that hold one of the store's events (``events``: name patterns) at ``event_offset``, mixed
  with ``frames`` windows (``event_share``: the fraction of event windows); see :class:`EventWindowSampler`;

or, with ``episode_continuous_batch``, each batch slot walks its episodes window after window (sampler.py).
Episodes, not windows, are split into train and val, so no validation frame is ever seen in training.
``root`` may list several stores, mixed with ``weights`` (each store's share of the random windows).
``drop_null_actions`` sets the mask to 0 on null-action steps: they stay in the window (a memory policy keeps
the true timing) but no objective learns from them, as VPT's behaviour cloning skipped them.

One item (and, stacked by ``default_collate``, one batch with a leading B)::

    image         uint8   (T, H, W, 3)
    agent_action  {"buttons": int64 (T, 1), "camera": int64 (T, 1)}   # env_to_agent; padding -> (0, 60)
    env_action    {"buttons": uint8 (T, 20), "camera": float32 (T, 2)}
    mask          float32 (T,)   1 for real frames, 0 for padding (and null actions with drop_null_actions)
    is_null       bool    (T,)   null env action (padding counts as null)
    episode       int64   ()     index of the episode in the manifest (-1: padding window)
    window_index  int64   ()     index of the window in its episode: (episode, window_index) is the
                                 continuity key the trainer uses to carry memory between batches
                                 (-2 for a random window: it continues nothing)
    timestep      int64   (T,)   frame index in the episode (padding continues the count; frame_skip
                                 k keeps every k-th frame)
    first         bool    (T,)   True exactly at timestep 0: the episode-start flag
    event_frame   int64   ()     with ``sampling="events"`` only: the index in the window of the event it was
                                 centred on (-1: an ordinary window)
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    SequentialSampler,
    default_collate,
    get_worker_info,
)

from minesweep.actions import CAMERA_NULL_BIN, CAMERA_NULL_INDEX, NULL_BUTTONS_INDEX, camera_to_bins, env_to_agent
from minesweep.data.events import match_event_names
from minesweep.data.ingest.contractor import ingest
from minesweep.data.loading.batch_slots import BatchSlots, WindowLoader, shared_uint8, stack_by_value
from minesweep.data.loading.mixture import StoreMixture
from minesweep.data.loading.sampler import (
    PAD,
    EpisodeContinuousBatchSampler,
    EventWindowSampler,
    RandomWindowSampler,
    ResumableEpochs,
)
from minesweep.data.recordings.synth import generate_recordings
from minesweep.data.segmentation import empty_segmentation
from minesweep.data.store import LABEL_CONFIDENCE, MANIFEST, CorruptDataError, EpisodeStore
from minesweep.graceful_stop import ignore_stop_signals

__all__ = ["WindowDataset", "MineDataModule", "split_episodes"]

log = logging.getLogger(__name__)

_HOW_TO_CREATE = (
    "create one with `minesweep-data ingest SRC DST` (contractor .mp4 + .jsonl recordings) or "
    "`minesweep-data synth OUT --episodes N --frames T` followed by ingest, "
    "or configure `demo` to generate synthetic data on first use"
)


#: ``window_index`` of a random window (not part of any continuous walk through an episode).
RANDOM_WINDOW = -2
SAMPLING = ("grid", "frames", "episodes", "events")
REFERENCE_WINDOWS = ("same", "other")
ON_CORRUPT = ("raise", "skip")


def _check_confidence(threshold: float | None) -> float | None:
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"data.min_label_confidence must be in [0, 1] (or null), got {threshold!r}")
    return None if threshold is None else float(threshold)


class WindowDataset(Dataset):
    """Windows over some episodes of a store. Videos are opened lazily in the reading process.

    An item is addressed by an ``int`` (the i-th grid window: episode after episode, ``win_len * frame_skip``
    frames apart), by a pair ``(episode, start)`` (a window starting anywhere; see RandomWindowSampler) or by a
    triple ``(episode, start, event index)`` (a window holding an event there; see EventWindowSampler).

    ``segmentation``: add the ``segment_*`` keys (None: when the store has the modality).
    ``reference_window``: ``"other"`` adds a reference video from another window of the same episode (GROOT).
    ``on_corrupt``: a window whose stored bytes fail their checksum (:class:`CorruptDataError`) stops the run
    (``"raise"``), or (``"skip"``) is replaced by a fully masked padding window (mask 0, episode -1), so batch
    shapes stay fixed; each one is logged and counted in ``corrupt_windows`` (all loader workers together).
    ``event_frames``: every item gets ``event_frame`` (the event's index for a triple key, else -1).
    """

    def __init__(
        self,
        store: EpisodeStore | StoreMixture | str | Path,
        episodes: Sequence[int] | None = None,
        win_len: int = 32,
        frame_skip: int = 1,
        drop_null_actions: bool = False,
        segmentation: bool | None = None,
        reference_window: str = "same",
        on_corrupt: str = "raise",
        event_frames: bool = False,
        min_label_confidence: float | None = None,
    ) -> None:
        if win_len <= 0:
            raise ValueError(f"win_len must be positive, got {win_len}")
        if frame_skip <= 0:
            raise ValueError(f"frame_skip must be positive, got {frame_skip}")
        if reference_window not in REFERENCE_WINDOWS:
            raise ValueError(f"reference_window must be one of {REFERENCE_WINDOWS}, got {reference_window!r}")
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self.on_corrupt = on_corrupt
        # Set by a WindowLoader before its workers start: where they put each batch's frames (batch_slots.py).
        self.batch_slots: BatchSlots | None = None
        # In shared memory: loader workers (forked or spawned) count into the same number the trainer reads.
        self._corrupt_count = torch.zeros(1, dtype=torch.int64).share_memory_()
        self.store = store if isinstance(store, (EpisodeStore, StoreMixture)) else EpisodeStore(store)
        self.segmentation = self.store.has_segmentation if segmentation is None else bool(segmentation)
        self.reference_window = reference_window
        self.event_frames = bool(event_frames)
        self.win_len, self.frame_skip = int(win_len), int(frame_skip)
        self.drop_null_actions = bool(drop_null_actions)
        self.min_label_confidence = _check_confidence(min_label_confidence)
        self.lengths = np.asarray(self.store.lengths, np.int64)
        self.episode_indices = list(range(len(self.lengths)) if episodes is None else episodes)
        self.span = self.win_len * self.frame_skip  # frames a window covers (keeping every frame_skip-th one)
        per_episode = -(-self.lengths[self.episode_indices] // self.span)  # ceil: the last window is padded
        self._grid_ends = np.cumsum(per_episode)

    def episode_windows(self) -> list[list[int]]:
        """Dataset indices of each episode's windows, in temporal order (for the continuous sampler)."""
        starts = np.concatenate([[0], self._grid_ends[:-1]])
        return [list(range(a, b)) for a, b in zip(starts.tolist(), self._grid_ends.tolist(), strict=False)]

    def __len__(self) -> int:
        return int(self._grid_ends[-1]) if len(self._grid_ends) else 0

    @property
    def windows(self) -> list[tuple[int, int, int]]:
        """Every grid window as (episode, start, window index): built on request, for inspection and small data."""
        return [self.grid_window(i) for i in range(len(self))]

    def grid_window(self, index: int) -> tuple[int, int, int]:
        """(episode, start frame, window index in the episode) of the ``index``-th grid window."""
        if not 0 <= index < len(self):
            raise IndexError(f"window {index} out of range: the dataset has {len(self)}")
        k = int(np.searchsorted(self._grid_ends, index, side="right"))
        window_index = index - (int(self._grid_ends[k - 1]) if k else 0)
        return self.episode_indices[k], window_index * self.span, window_index

    def __getitem__(self, key: int | tuple[int, int] | list) -> dict[str, Any]:
        """One window (``int`` or ``(episode, start)``), or a whole batch for a list of such keys."""
        if isinstance(key, list):
            return self._batch(key)
        h, w = self.store.resolution
        image = torch.empty((self.win_len, h, w, 3), dtype=torch.uint8)
        return {"image": image, **self._window(key, image.numpy())}

    def _batch(self, keys: Sequence[int | tuple[int, int]]) -> dict[str, Any]:
        """A whole batch, the frames written straight where the training process will read them: in a
        :class:`~minesweep.data.loading.batch_slots.WindowLoader`'s worker, a shared slot allocated once (the other
        arrays by value); in another loader's worker, fresh shared memory; in-process, the batch tensor. One copy
        from the store to the training process instead of three (item, collate, shared memory). The data module's
        loaders fetch batches this way (a batch sampler as ``sampler``)."""
        h, w = self.store.resolution
        shape = (len(keys), self.win_len, h, w, 3)
        slot = self.batch_slots.acquire(len(keys)) if self.batch_slots is not None else None
        if slot is not None:  # a WindowLoader's worker: the frames go to a slot it was given (batch_slots.py)
            image, pixels = slot
        elif get_worker_info() is not None:  # the tensor goes to the main process: put it where it can be shared
            image = shared_uint8(shape)
            pixels = image.numpy()
        else:
            image = torch.empty(shape, dtype=torch.uint8)
            pixels = image.numpy()
        try:
            items = [self._window(key, pixels[b]) for b, key in enumerate(keys)]
        except BaseException:
            if slot is not None:
                self.batch_slots.release(image)
            raise
        by_value = self.batch_slots is not None and get_worker_info() is not None  # a WindowLoader's worker
        rest = stack_by_value(items) if by_value else default_collate(items)
        return {"image": image, **rest}

    @property
    def corrupt_windows(self) -> int:
        """Windows replaced by padding because their data is corrupt (``on_corrupt="skip"``), so far."""
        return int(self._corrupt_count[0])

    def _window(self, key: int | tuple[int, int], image: np.ndarray) -> dict[str, Any]:
        """Everything of one window but the image, which is written into ``image`` ``(T, H, W, 3)``."""
        try:
            return self._read_window(key, image)
        except CorruptDataError as err:
            if self.on_corrupt == "raise":
                raise
            self._corrupt_count += 1  # rare: a lost update between workers would only undercount
            log.warning(
                "data.on_corrupt=skip: window %s replaced by a masked padding window (%d so far): %s",
                key,
                self.corrupt_windows,
                err,
            )
            image[:] = 0
            padding = self._padding()
            del padding["image"]
            return padding

    def _read_window(self, key: int | tuple[int, ...], image: np.ndarray) -> dict[str, Any]:
        event_frame = -1
        if isinstance(key, (tuple, list)):
            episode, start = int(key[0]), int(key[1])
            window_index = RANDOM_WINDOW
            if len(key) == 3:
                event_frame = int(key[2])
        elif key == PAD:
            image[:] = 0
            padding = self._padding()
            del padding["image"]
            return padding
        else:
            episode, start, window_index = self.grid_window(int(key))
        length = int(self.lengths[episode])
        T, k = self.win_len, self.frame_skip
        frames = np.arange(start, start + T * k, k)
        n = int((frames < length).sum())  # real frames in this window; the rest is padding

        if k == 1:
            self.store.read_frames(episode, start, n, out=image[:n])
        else:
            image[:n] = self.store.read_frames(episode, start, (n - 1) * k + 1)[::k]
        image[n:] = 0
        actions = self.store.read_actions(episode)
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
        if self.drop_null_actions:
            mask[is_null] = 0.0
        confidence = actions.get(LABEL_CONFIDENCE)  # an IDM-labelled store's (minesweep.data.ingest.label)
        if self.min_label_confidence is not None and confidence is not None:
            mask[:n][confidence[real] < self.min_label_confidence] = 0.0
        item = {
            "agent_action": {
                "buttons": torch.from_numpy(agent_buttons[:, None]),
                "camera": torch.from_numpy(agent_camera[:, None]),
            },
            "env_action": {
                "buttons": torch.from_numpy(env_buttons),
                "camera": torch.from_numpy(env_camera),
                # each axis's mu-law bin (an IDM's camera targets), from the degrees, inventory or not
                "camera_bins": torch.from_numpy(camera_to_bins(env_camera)),
            },
            "mask": torch.from_numpy(mask),
            "is_null": torch.from_numpy(is_null),
            "episode": torch.tensor(episode, dtype=torch.int64),
            "window_index": torch.tensor(window_index, dtype=torch.int64),
            "timestep": torch.from_numpy(frames.astype(np.int64)),
            "first": torch.from_numpy(frames == 0),
        }
        if self.event_frames:
            item["event_frame"] = torch.tensor(event_frame, dtype=torch.int64)
        if self.segmentation:
            item.update(self._segmentation(episode, start, n))
        if self.reference_window == "other":
            item.update(self._reference(episode, length, start, image, mask))
        return item

    def _segmentation(self, episode: int | None, start: int, n: int) -> dict[str, torch.Tensor]:
        """``segment_*`` entries of a window with ``n`` real frames (invalid where the episode has none)."""
        T, k = self.win_len, self.frame_skip
        seg = empty_segmentation(T, self.store.resolution)
        read = self.store.read_segmentation(episode, start, (n - 1) * k + 1) if n else None
        if read is not None:
            for key in seg:
                seg[key][:n] = read[key][::k]
        return {
            "segment_mask": torch.from_numpy(seg["mask"]),
            "segment_object_id": torch.from_numpy(seg["object_id"].astype(np.int64)),
            "segment_interaction": torch.from_numpy(seg["interaction"].astype(np.int64)),
            "segment_valid": torch.from_numpy(seg["valid"]),
        }

    def _reference(
        self, episode: int, length: int, start: int, image: np.ndarray, mask: np.ndarray
    ) -> dict[str, torch.Tensor]:
        """A reference video from a window of the same episode that does not overlap ``[start, start + span)``,
        drawn uniformly among such start frames; this window itself when the episode has no room for one."""
        span = self.span
        before = max(0, start - span + 1)  # starts 0 .. start - span
        after = max(0, length - span - (start + span) + 1)  # starts start + span .. length - span
        if before + after == 0:
            return {
                "reference_image": torch.from_numpy(image.copy()),
                "reference_mask": torch.from_numpy(mask.copy()),
                "reference_start": torch.tensor(start, dtype=torch.int64),
            }
        # torch's RNG: seeded per loader worker by Lightning (seed_everything(workers=True)).
        u = int(torch.randint(before + after, ()).item())
        ref_start = u if u < before else start + span + (u - before)
        frames = self.store.read_frames(episode, ref_start, span)[:: self.frame_skip]
        return {
            "reference_image": torch.from_numpy(np.ascontiguousarray(frames)),
            "reference_mask": torch.ones(self.win_len),
            "reference_start": torch.tensor(ref_start, dtype=torch.int64),
        }

    def _padding(self) -> dict[str, Any]:
        """A fully masked window for a continuous-batch slot that has run out of episodes."""
        T = self.win_len
        h, w = self.store.resolution
        item = {
            "image": torch.zeros(T, h, w, 3, dtype=torch.uint8),
            "agent_action": {
                "buttons": torch.full((T, 1), NULL_BUTTONS_INDEX, dtype=torch.int64),
                "camera": torch.full((T, 1), CAMERA_NULL_INDEX, dtype=torch.int64),
            },
            "env_action": {
                "buttons": torch.zeros(T, 20, dtype=torch.uint8),
                "camera": torch.zeros(T, 2),
                "camera_bins": torch.full((T, 2), CAMERA_NULL_BIN, dtype=torch.int64),
            },
            "mask": torch.zeros(T),
            "is_null": torch.ones(T, dtype=torch.bool),
            "episode": torch.tensor(PAD, dtype=torch.int64),
            "window_index": torch.tensor(PAD, dtype=torch.int64),
            "timestep": torch.full((T,), PAD, dtype=torch.int64),
            "first": torch.zeros(T, dtype=torch.bool),
        }
        if self.event_frames:
            item["event_frame"] = torch.tensor(-1, dtype=torch.int64)
        if self.segmentation:
            item.update(self._segmentation(None, 0, 0))
        if self.reference_window == "other":
            item.update(
                {
                    "reference_image": item["image"].clone(),
                    "reference_mask": torch.zeros(T),
                    "reference_start": torch.tensor(PAD, dtype=torch.int64),
                }
            )
        return item


class Batches(ResumableEpochs, BatchSampler):
    """``BatchSampler`` that passes ``set_epoch`` on to the sampler it batches (Lightning calls it each epoch) and
    resumes mid-epoch (``ResumableEpochs``). The wrapped sampler's order must be a function of its epoch."""

    def __init__(self, sampler: Any, batch_size: int, drop_last: bool = False, seed: int = 0) -> None:
        super().__init__(sampler, batch_size, drop_last)
        self.seed = seed
        self._start_epochs()

    def _epoch_changed(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[Any]]:
        return itertools.islice(super().__iter__(), self._skip(), None)

    def _resumed_skip(self, batches_done: int, saved_batch_size: int) -> int:
        if saved_batch_size == self.batch_size:
            return batches_done
        # Same order of windows, cut into other batches: skip the windows already trained on (rounded down).
        skip = batches_done * saved_batch_size // self.batch_size
        log.warning(
            "resuming with data.batch_size=%d (checkpoint: %d): the cut epoch continues after its first %d windows",
            self.batch_size,
            saved_batch_size,
            skip * self.batch_size,
        )
        return skip


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
    ``root`` may be a list of stores, mixed by ``weights`` (random-window sampling only). ``sampling``: ``grid``,
    ``frames``, ``episodes`` or ``events`` (module docstring); ``samples_per_epoch``: random windows per epoch and
    rank (default: as many as the grid has, split over the ranks). With ``sampling="events"``: ``events`` (name
    patterns, e.g. ``[place_table, "make_*"]``), ``event_offset``, ``event_share`` and ``event_balance``
    (:class:`EventWindowSampler`); event windows come from the training episodes' events only (store ``weights``
    apply to the ordinary windows).
    """

    def __init__(
        self,
        root: str | Sequence[str],
        win_len: int = 32,
        batch_size: int = 8,
        num_workers: int = 2,
        val_fraction: float = 0.125,
        episode_continuous_batch: bool = False,
        seed: int = 0,
        demo: dict | None = None,
        frame_skip: int = 1,
        sampling: str = "grid",
        weights: Sequence[float] | None = None,
        samples_per_epoch: int | None = None,
        drop_null_actions: bool = False,
        reference_window: str = "same",
        on_corrupt: str = "raise",
        augment: Callable[..., dict[str, Any]] | None = None,
        events: Sequence[str] | None = None,
        event_offset: int | str = "end",
        event_share: float = 1.0,
        event_balance: str = "occurrences",
        min_label_confidence: float | None = None,
    ) -> None:
        super().__init__()
        # Window-consistent augmentation of training batches (minesweep.data.loading.augment), on the training device.
        self.augment = augment
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f"data.on_corrupt must be one of {ON_CORRUPT}, got {on_corrupt!r}")
        self.on_corrupt = on_corrupt  # what a window whose data fails its checksum does (WindowDataset)
        if sampling not in SAMPLING:
            raise ValueError(f"data.sampling must be one of {SAMPLING}, got {sampling!r}")
        if reference_window not in REFERENCE_WINDOWS:
            raise ValueError(f"data.reference_window must be one of {REFERENCE_WINDOWS}, got {reference_window!r}")
        # "other": goal-conditioned policies (GROOT) get a reference video from another window of the episode.
        self.reference_window = reference_window
        roots = [root] if isinstance(root, (str, Path)) else list(root)
        if not roots:
            raise ValueError("data.root lists no store")
        if len(roots) > 1 and demo:
            raise ValueError("data.demo generates one store: give a single data.root with it")
        if weights is not None and (len(roots) < 2 or episode_continuous_batch or sampling == "grid"):
            raise ValueError(
                "data.weights mixes several stores (a list in data.root) by their share of random "
                "windows: it needs data.sampling=frames, episodes or events, without episode_continuous_batch"
            )
        if (sampling == "events") != bool(events):
            raise ValueError(
                "data.sampling=events needs data.events (event names or patterns, e.g. [place_table, 'make_*'])"
                if sampling == "events"
                else f"data.events={list(events or [])} is only used with data.sampling=events (got {sampling!r})"
            )
        if sampling == "events" and episode_continuous_batch:
            raise ValueError(
                "data.sampling=events draws windows around events; it cannot be combined with "
                "episode_continuous_batch (which walks whole episodes in order)"
            )
        self.events = None if events is None else [str(e) for e in events]
        self.event_offset, self.event_share, self.event_balance = event_offset, float(event_share), event_balance
        self.roots = [Path(r) for r in roots]
        self.root = self.roots[0]
        self.sampling, self.weights = sampling, None if weights is None else list(weights)
        self.samples_per_epoch = samples_per_epoch
        self.drop_null_actions = bool(drop_null_actions)
        self.min_label_confidence = _check_confidence(min_label_confidence)
        self.win_len, self.batch_size, self.num_workers = int(win_len), int(batch_size), int(num_workers)
        self.frame_skip = int(frame_skip)
        # Each batch slot follows one episode window after window; a memory policy's state is then
        # carried across batches by MineLightning (see minesweep/data/loading/sampler.py).
        self.episode_continuous_batch = bool(episode_continuous_batch)
        self._train_sampler: EpisodeContinuousBatchSampler | Batches | None = None
        self._resume_state: dict[str, Any] | None = None
        self.val_fraction, self.seed = float(val_fraction), int(seed)
        self.demo = dict(demo) if isinstance(demo, Mapping) else demo
        self._store: EpisodeStore | None = None
        self.train_set: WindowDataset | None = None
        self.val_set: WindowDataset | None = None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches only: ``augment`` with parameters drawn from (seed, global step), so that a resumed run
        augments as the uninterrupted one did. (One draw per optimizer step: with accumulate_grad_batches > 1 the
        micro-batches of a step share it.)"""
        trainer = self.trainer
        if self.augment is None or trainer is None or not trainer.training:
            return batch
        return self.augment(batch, seed=self.seed, step=trainer.global_step)

    # -- data preparation -----------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if (self.root / MANIFEST).is_file() or not self.demo:
            return
        self._generate_demo()

    def _generate_demo(self) -> None:
        demo = self.demo or {}
        log.info("minesweep: generating demo data into %s (first use)", self.root)
        raw = self.root.parent / "demo_raw"  # kept next to the store: the raw recordings can be re-ingested
        codec = "h264"
        if isinstance(demo, Mapping):
            res = demo.get("resolution", 128)
            codec = demo.get("codec", codec)
            generate_recordings(
                raw,
                episodes=int(demo.get("episodes", 24)),
                frames=int(demo.get("frames", 256)),
                seed=int(demo.get("seed", 0)),
                width=int(demo.get("width", 320)),
                height=int(demo.get("height", 180)),
            )
        elif callable(demo):
            res = getattr(demo, "resolution", 128)
            codec = getattr(demo, "codec", codec)
            demo(raw)
        else:
            raise TypeError(
                f"data.demo must be a mapping of synthetic-recording settings or a recording recipe "
                f"with _target_ (e.g. minesweep.envs.crafter_record.CrafterRecordings), got {demo!r}"
            )
        resolution = (int(res), int(res)) if isinstance(res, int) else (int(res[0]), int(res[1]))
        # Built beside the store and moved into place once complete: a failed or interrupted build never leaves a
        # folder with a manifest that later runs would take for the finished demo (a store left by an older
        # version without its manifest is resumed in place).
        target = self.root if self.root.exists() else self.root.with_name(f"{self.root.name}.partial")
        report = ingest(
            raw, target, resolution=resolution, codec=codec, workers=os.cpu_count() or 1, print_summary=False
        )
        if report.skipped:
            raise RuntimeError(f"demo data generation into {target} skipped episodes: {report.skipped}")
        if not report.ingested and not report.already:
            raise RuntimeError(f"demo data generation into {target}: no episode was recorded in {raw}")
        if target != self.root:
            os.replace(target, self.root)

    # -- store and splits -----------------------------------------------------------------------------------
    @property
    def store(self) -> EpisodeStore | StoreMixture:
        if self._store is None:
            for root in self.roots:
                if not (root / MANIFEST).is_file():
                    raise FileNotFoundError(
                        f"no training store at {root} ({root / MANIFEST} is missing): " + _HOW_TO_CREATE
                    )
            stores = [EpisodeStore(root) for root in self.roots]
            for store in stores:
                if not len(store):
                    raise ValueError(f"the store at {store.root} has no episodes")
            self._store = stores[0] if len(stores) == 1 else StoreMixture(stores, self.weights)
        return self._store

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self.demo and not (self.root / MANIFEST).is_file():
            self.prepare_data()  # used outside a Trainer: prepare lazily
        train, val = split_episodes(len(self.store.episodes), self.val_fraction, self.seed)
        # Decided once for the store, so that train and val batches have the same keys.
        segmentation = self.store.has_segmentation
        settings = (
            self.win_len,
            self.frame_skip,
            self.drop_null_actions,
            segmentation,
            self.reference_window,
            self.on_corrupt,
            self.sampling == "events",
            self.min_label_confidence,
        )
        self.train_set = WindowDataset(self.store, train, *settings)
        self.val_set = WindowDataset(self.store, val, *settings)

    # -- loaders --------------------------------------------------------------------------------------------
    def _loader(self, dataset: WindowDataset, shuffle: bool) -> DataLoader:
        if self.episode_continuous_batch:
            batches = EpisodeContinuousBatchSampler(
                dataset.episode_windows(), self.batch_size, shuffle=shuffle, seed=self.seed
            )
        else:
            distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
            if shuffle and self.sampling != "grid":
                windows = self._random_windows(dataset)
            elif shuffle or distributed:
                # Shuffled by (seed, epoch): the order of an epoch can be rebuilt to resume it. Single-process, the
                # rank and world size are given, so no process group is needed.
                windows = DistributedSampler(
                    dataset,
                    shuffle=shuffle,
                    seed=self.seed,
                    drop_last=False,
                    **({} if distributed else {"num_replicas": 1, "rank": 0}),
                )
            else:
                windows = SequentialSampler(dataset)
            batches = Batches(windows, self.batch_size, drop_last=False, seed=self.seed)
        if shuffle:  # the training sampler: the one a checkpoint resumes at its next batch
            if self._resume_state is not None:
                batches.load_state_dict(self._resume_state)
                self._resume_state = None
            self._train_sampler = batches
        # Whole batches are fetched at once (WindowDataset._batch: no collation copy), so the batch sampler goes in
        # as the sampler, with batch_size=None. The DataLoader keeps batch order with any number of workers, so
        # continuous slots stay continuous.
        return WindowLoader(
            dataset,
            windows_per_batch=self.batch_size,
            sampler=batches,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=ignore_stop_signals if self.num_workers > 0 else None,
        )

    def _random_windows(self, dataset: WindowDataset) -> RandomWindowSampler:
        lengths = dataset.lengths[dataset.episode_indices]
        weights = None
        if isinstance(self.store, StoreMixture):
            weights = self.store.episode_weights(np.maximum(dataset.lengths - dataset.span + 1, 1), self.sampling)[
                dataset.episode_indices
            ]
        world_size = self.trainer.world_size if self.trainer is not None else 1
        num_samples = self.samples_per_epoch or -(-len(dataset) // world_size)
        if self.sampling != "events":
            return RandomWindowSampler(
                lengths,
                dataset.span,
                num_samples,
                mode=self.sampling,
                episode_weights=weights,
                seed=self.seed,
                episodes=dataset.episode_indices,
            )
        return EventWindowSampler(
            lengths,
            dataset.span,
            num_samples,
            self._training_events(dataset),
            win_len=self.win_len,
            frame_skip=self.frame_skip,
            offset=self.event_offset,
            share=self.event_share,
            balance=self.event_balance,
            episode_weights=weights,
            seed=self.seed,
            episodes=dataset.episode_indices,
        )

    def _training_events(self, dataset: WindowDataset) -> np.ndarray:
        """The events named by ``data.events`` in the training episodes; an error that says why when none are."""
        store, where = self.store, ", ".join(str(r) for r in self.roots)
        if not store.has_events:
            raise ValueError(
                f"data.sampling=events: the store {where} keeps no events (written before minesweep stored them); "
                f"re-ingest it to sample event windows"
            )
        names = match_event_names(self.events or [], store.event_names, where)
        codes = [store.event_names.index(name) for name in names]
        table = store.events
        chosen = table[np.isin(table["name"], codes) & np.isin(table["episode"], dataset.episode_indices)]
        if not len(chosen):
            raise ValueError(
                f"data.events={self.events} ({', '.join(names)}) occur only in validation episodes of {where}: "
                f"no training window can hold them"
            )
        return chosen

    def _check_trainer(self) -> None:
        """Lightning's default DDP sampler wrapping would give each rank a shuffled subset of our batches (continuous
        slots broken, windows dropped): refuse it by name. (``minesweep.train`` builds its Trainer without it.)"""
        trainer = self.trainer
        connector = getattr(trainer, "_accelerator_connector", None)
        if trainer is not None and trainer.world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            raise RuntimeError(
                f"MineDataModule gives each of the {trainer.world_size} DDP ranks its own batches itself; Lightning's "
                f"default would wrap them in a DistributedSampler and break them. Build the trainer with "
                f"L.Trainer(..., use_distributed_sampler=False) (conf/trainer/default.yaml does)"
            )

    def train_dataloader(self) -> DataLoader:
        self._check_trainer()
        self.setup("fit")
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self._check_trainer()
        self.setup("validate")
        return self._loader(self.val_set, shuffle=False)

    # -- resume: training continues at the exact next batch of the epoch it was cut in -----------------------
    def state_dict(self) -> dict[str, Any]:
        if self._train_sampler is None or self.trainer is None:
            return {}
        # Batches *trained on* in this epoch, not the sampler's own position: workers prefetch ahead. `processed`
        # (not `completed`) also counts a batch whose on_train_batch_end hooks are running when the checkpoint is
        # written (ModelCheckpoint(every_n_train_steps), a preemption save).
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        return {
            "train_sampler": self._train_sampler.state_dict(
                batches_done=int(done), trainer_epoch=int(self.trainer.current_epoch)
            )
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_state = state_dict.get("train_sampler")
