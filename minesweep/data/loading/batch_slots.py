"""Batch frames handed from loader workers to the training process through shared-memory slots allocated once.

A DataLoader worker normally puts each batch in fresh shared memory: a new segment per batch, filled page by page
(every page faulted in), mapped again in the training process, then freed. For a raw store, whose frames are one
read from the page cache, that costs several times the read itself (a 25 MB batch: 31 ms in fresh memory, 4.5 ms
into a buffer already mapped). Here the training process allocates, per worker, a few slots of the largest batch's
frames before the workers start. A worker writes a batch's frames into one of its free slots and sends only the
slot's number. The training process hands the slot's memory on as the batch's ``image`` without copying it: the
slot stays busy for as long as any tensor viewing it lives (its memory is owned by a :class:`_Lease`, freed by
reference counting when the last view goes), so nothing a training step holds can change under it. The rest of a
batch (actions, masks, indices: a dozen small arrays) travels by value in the same message: as tensors, each would
get a shared-memory segment of its own and its file descriptor passed separately, which cost more than reading the
frames.

The slots are an optimisation that never changes a batch: a worker that finds none of its slots free (the
training process holds many batches, or an iteration was abandoned with batches in flight) writes that batch into
fresh shared memory, as without slots. A slot filled in an abandoned iteration and never received is reclaimed by
the next iteration (``generation``): each worker runs its tasks one at a time, and a new iteration only starts after
the old one's results have been received and dropped, so nothing can still be reading or writing it. A slot that
was received is only ever freed by its lease.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate, get_worker_info

__all__ = ["BatchSlots", "InSlot", "WindowLoader", "shared_uint8", "stack_by_value", "tensors_of"]

#: Stacked arrays at least this large still travel in shared memory (a GROOT reference video, segmentation masks):
#: by value they would be pickled and copied through a pipe.
BY_VALUE_LIMIT = 1 << 20


def stack_by_value(items: Sequence[Any]) -> Any:
    """A loader worker's ``default_collate`` for :class:`WindowLoader`: the items' tensors stacked into numpy arrays,
    which the DataLoader sends by value (small ones; large ones as ``default_collate`` would); :func:`tensors_of`
    turns them back into tensors in the training process."""
    first = items[0]
    if isinstance(first, Mapping):
        return {key: stack_by_value([item[key] for item in items]) for key in first}
    if first.numel() * first.element_size() * len(items) >= BY_VALUE_LIMIT:
        return default_collate(list(items))
    return np.stack([item.numpy() for item in items])


def tensors_of(tree: Any) -> Any:
    """The training process's side of :func:`stack_by_value`: numpy arrays (in nested dicts) as tensors."""
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(tree)
    if isinstance(tree, dict):
        return {key: tensors_of(value) for key, value in tree.items()}
    return tree


@dataclass(frozen=True)
class InSlot:
    """Where a worker left a batch's frames: slot ``slot`` of worker ``worker``, its first ``windows`` windows."""

    worker: int
    slot: int
    windows: int


def shared_uint8(shape: tuple[int, ...]) -> torch.Tensor:
    """A uint8 tensor in shared memory whose pages are only allocated when first written (no zero-fill pass)."""
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class BatchSlots:
    """``per_worker`` slots of ``frame_shape`` ``(B, T, H, W, C)`` uint8 for each of ``workers`` loader workers.

    Allocated in the training process before the workers start; a worker (forked, or spawned: the tensors are
    pickled as shared memory) uses the row of its worker id. Per slot: ``busy`` (set by the worker that fills it,
    cleared when the training process's last view of it dies), ``received`` (set when the training process took it)
    and ``taken_in``, the ``generation`` (loader iteration) it was filled in."""

    def __init__(self, workers: int, per_worker: int, frame_shape: tuple[int, ...]) -> None:
        if workers <= 0 or per_worker <= 0:
            raise ValueError(f"BatchSlots needs workers > 0 and per_worker > 0, got {workers} and {per_worker}")
        self.frame_shape = tuple(int(n) for n in frame_shape)
        self.frames = shared_uint8((workers, per_worker, *self.frame_shape))
        self.busy = torch.zeros((workers, per_worker), dtype=torch.bool).share_memory_()
        self.received = torch.zeros((workers, per_worker), dtype=torch.bool).share_memory_()
        self.taken_in = torch.zeros((workers, per_worker), dtype=torch.int64).share_memory_()
        self.generation = torch.zeros((), dtype=torch.int64).share_memory_()
        # Batches sent in fresh memory, all workers together (a rare lost update between workers only undercounts).
        self.fallbacks = torch.zeros((), dtype=torch.int64).share_memory_()
        self._next = 0  # a worker's own round-robin start (each process has its own copy)

    def new_generation(self) -> None:
        """The training process starts a loader iteration: slots filled earlier and never received are free again."""
        self.generation += 1

    def acquire(self, windows: int) -> tuple[InSlot, np.ndarray] | None:
        """In a loader worker: a free slot for a batch of ``windows`` windows, and its frames as an array to write,
        or None (no slot free, not a worker, or a batch larger than a slot)."""
        info = get_worker_info()
        if info is None or info.id >= self.frames.shape[0] or windows > self.frame_shape[0]:
            return None
        worker, per_worker = info.id, self.frames.shape[1]
        generation = int(self.generation)
        busy, received, taken_in = self.busy[worker], self.received[worker], self.taken_in[worker]
        for offset in range(per_worker):
            slot = (self._next + offset) % per_worker
            if not busy[slot] or (not received[slot] and int(taken_in[slot]) < generation):
                busy[slot], received[slot], taken_in[slot] = True, False, generation
                self._next = slot + 1
                return InSlot(worker, slot, windows), self.frames[worker, slot, :windows].numpy()
        self.fallbacks += 1
        return None

    def release(self, where: InSlot) -> None:
        """The slot is free again (its lease died, or the worker that acquired it will not send it)."""
        self.busy[where.worker, where.slot] = False

    def take(self, where: InSlot) -> torch.Tensor:
        """In the training process: the batch's frames, in the slot's memory, which stays busy while any view lives."""
        self.received[where.worker, where.slot] = True
        return torch.from_numpy(np.asarray(_Lease(self, where)))


class _Lease:
    """Owns one slot's frames for the training process: a numpy array made from it keeps it alive (and torch's
    ``from_numpy`` keeps that array alive), so the slot is released when the last tensor viewing it is freed."""

    def __init__(self, slots: BatchSlots, where: InSlot) -> None:
        self._slots, self._where = slots, where
        frames = slots.frames[where.worker, where.slot, : where.windows]
        self.__array_interface__ = {
            "shape": tuple(frames.shape),
            "typestr": "|u1",
            "data": (frames.data_ptr(), False),
            "version": 3,
        }

    def __del__(self) -> None:
        self._slots.release(self._where)


class _TakeFromSlots:
    """The loader's iterator, with each batch's ``image`` taken out of its slot (see :class:`WindowLoader`)."""

    def __init__(self, batches: Iterator[Any], slots: BatchSlots) -> None:
        self._batches, self._slots = batches, slots

    def __iter__(self) -> _TakeFromSlots:
        return self

    def __next__(self) -> Any:
        batch = tensors_of(next(self._batches))
        if isinstance(batch, dict) and isinstance(batch.get("image"), InSlot):
            batch["image"] = self._slots.take(batch["image"])
        return batch

    def __getstate__(self) -> dict[str, Any]:
        # A DataLoader iterator cannot be pickled; like Lightning (which drops it when it pickles its loaders),
        # keep nothing of it.
        return {}


def _as_built(batch: Any) -> Any:
    """The batch as the dataset built it (a module-level function: spawned workers unpickle it)."""
    return batch


class WindowLoader(DataLoader):
    """A DataLoader of whole batches from a :class:`~minesweep.data.loading.datamodule.WindowDataset` (a batch
    sampler as ``sampler``, ``batch_size=None``) whose workers hand the frames over in :class:`BatchSlots`.

    ``windows_per_batch``: the batch sampler's batch size (a slot's size). Slots are used with persistent workers
    only (one iterator for the loader's life, reset each epoch); otherwise batches travel as a plain DataLoader's.
    ``slots_per_worker``: default ``prefetch_factor + 3``: the batches a worker may have in flight, and those the
    training process holds (the step's and the one Lightning fetches ahead), and one spare."""

    def __init__(
        self, dataset: Any, *args: Any, windows_per_batch: int, slots_per_worker: int | None = None, **kwargs: Any
    ) -> None:
        slotted = kwargs.get("num_workers", 0) > 0 and kwargs.get("persistent_workers", False)
        if slotted and kwargs.get("collate_fn") is None:
            # Whole batches are fetched (batch_size=None): the DataLoader's default would turn the by-value arrays
            # back into tensors in the worker, each sent through shared memory of its own.
            kwargs["collate_fn"] = _as_built
        super().__init__(dataset, *args, **kwargs)
        self.windows_per_batch = int(windows_per_batch)
        self.slots: BatchSlots | None = None
        if slotted:
            per_worker = slots_per_worker or (self.prefetch_factor or 2) + 3
            h, w = dataset.store.resolution
            shape = (self.windows_per_batch, dataset.win_len, h, w, 3)
            self.slots = BatchSlots(self.num_workers, per_worker, shape)

    def __iter__(self) -> Iterator[Any]:
        if self.slots is None:
            return super().__iter__()
        # Before the workers start (first iteration) they must see the slots; before an epoch's tasks are sent,
        # slots left busy by the last iteration must count as free.
        self.dataset.batch_slots = self.slots
        self.slots.new_generation()
        return _TakeFromSlots(super().__iter__(), self.slots)
