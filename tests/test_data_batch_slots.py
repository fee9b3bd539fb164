"""Loader workers hand batch frames over in shared slots (minesweep/data/loading/batch_slots.py): the batches must be
exactly the ones built in-process, whatever the training process keeps, abandons or drops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import SequentialSampler, default_collate

from minesweep.data.loading.batch_slots import BY_VALUE_LIMIT, WindowLoader, stack_by_value, tensors_of
from minesweep.data.loading.datamodule import Batches, MineDataModule, WindowDataset
from minesweep.data.store import StoreWriter, encode_episode

LENGTHS = [37, 64, 50, 23, 70]
WIN = 16
BATCH = 3


def _actions(n: int, rng: np.random.Generator) -> dict:
    return {
        "buttons": rng.integers(0, 2, (n, 20)).astype(np.uint8),
        "camera": rng.uniform(-10, 10, (n, 2)).astype(np.float32),
        "is_null": rng.random(n) < 0.1,
        "esc": np.zeros(n, bool),
    }


@pytest.fixture(scope="module")
def raw_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("slots") / "store"
    rng = np.random.default_rng(0)
    with StoreWriter(root, resolution=(24, 24), codec="raw") as writer:
        for i, n in enumerate(LENGTHS):
            frames = rng.integers(0, 256, (n, 24, 24, 3), dtype=np.uint8)  # every frame different
            writer.append(encode_episode(f"ep{i}", frames, _actions(n, rng), (24, 24), "raw"))
    return root


def _loader(dataset: WindowDataset, **kwargs) -> WindowLoader:
    settings = {"num_workers": 2, "persistent_workers": True, "prefetch_factor": 2} | kwargs
    sampler = Batches(SequentialSampler(dataset), BATCH, drop_last=False)
    return WindowLoader(dataset, windows_per_batch=BATCH, sampler=sampler, batch_size=None, **settings)


def _assert_same(got, expected, where: str = "batch") -> None:
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), where
        for key in expected:
            _assert_same(got[key], expected[key], f"{where}[{key!r}]")
        return
    assert isinstance(got, torch.Tensor), f"{where}: {type(got)}"
    assert got.dtype == expected.dtype and got.shape == expected.shape, where
    assert torch.equal(got, expected), where


def _expected(loader: WindowLoader, dataset: WindowDataset) -> list[dict]:
    return [dataset[keys] for keys in loader.sampler]


def test_slotted_batches_are_the_in_process_batches(raw_store):
    dataset = WindowDataset(raw_store, win_len=WIN)
    loader = _loader(dataset)
    expected = _expected(loader, dataset)
    assert loader.slots is not None and len(expected) > loader.slots.frames.shape[1]  # more batches than slots
    for epoch in range(3):
        count = 0
        for i, batch in enumerate(loader):  # each batch dropped before the next: slots come back
            _assert_same(batch, expected[i], f"epoch {epoch} batch {i}")
            count += 1
        assert count == len(expected)
    assert int(loader.slots.fallbacks) == 0  # every batch came through a slot
    del batch  # the last one
    assert not loader.slots.busy.any()  # every slot was given back


def test_batches_held_by_the_trainer_never_change(raw_store):
    # All of an epoch kept (more batches than a worker has slots), then another epoch read while they are held:
    # a slot still viewed by a held batch must not be written again (the workers fall back to fresh memory).
    dataset = WindowDataset(raw_store, win_len=WIN)
    loader = _loader(dataset)
    expected = _expected(loader, dataset)
    held = list(loader)
    views = [batch["image"][:, ::2] for batch in held[:2]]  # a view outlives its batch
    second = list(loader)
    for i, (a, b) in enumerate(zip(held, second, strict=True)):
        _assert_same(a, expected[i], f"held batch {i}")
        _assert_same(b, expected[i], f"second epoch batch {i}")
    assert int(loader.slots.fallbacks) > 0
    del held, second, a, b  # the loop kept the last pair
    for i, view in enumerate(views):
        assert torch.equal(view, expected[i]["image"][:, ::2])
    assert loader.slots.busy.sum() == 2  # only the two viewed slots are still taken
    del view, views
    assert not loader.slots.busy.any()


def test_an_abandoned_epoch_gives_its_slots_back(raw_store):
    # Lightning stops mid-epoch (max_steps, limit_val_batches): batches in flight are dropped unread. Their slots
    # must serve the next iterations, and never be reclaimed while a batch that was received still views them.
    dataset = WindowDataset(raw_store, win_len=WIN)
    loader = _loader(dataset)
    expected = _expected(loader, dataset)
    kept = None
    for _ in range(3):
        for i, batch in enumerate(loader):
            _assert_same(batch, expected[i])
            if i == 1:
                kept = batch
                break
    _assert_same(kept, expected[1], "a batch kept across abandoned epochs")
    del kept, batch
    for epoch in range(2):
        before = int(loader.slots.fallbacks)
        for i, batch in enumerate(loader):
            _assert_same(batch, expected[i], f"epoch {epoch} after the abandoned ones, batch {i}")
    assert int(loader.slots.fallbacks) == before  # the last epoch: every slot was free again


def test_the_data_module_hands_batches_over_in_slots(raw_store):
    dm = MineDataModule(str(raw_store), win_len=WIN, batch_size=BATCH, num_workers=2, val_fraction=0.2)
    train = dm.train_dataloader()
    assert isinstance(train, WindowLoader) and train.slots is not None
    frames = 0
    for batch in train:
        frames += int(batch["mask"].sum())
        # the small arrays came by value, not each in a shared-memory segment of its own
        assert not any(batch[key].is_shared() for key in ("mask", "episode", "timestep", "first"))
    frames += sum(int(batch["mask"].sum()) for batch in dm.val_dataloader())
    assert frames == sum(LENGTHS)
    assert int(train.slots.fallbacks) == 0
    # without workers (or without persistent ones) a loader is a plain DataLoader's
    assert MineDataModule(str(raw_store), win_len=WIN, num_workers=0).train_dataloader().slots is None


@pytest.mark.slow
def test_spawned_workers_use_the_same_slots(raw_store):
    dataset = WindowDataset(raw_store, win_len=WIN)
    loader = _loader(dataset, multiprocessing_context="spawn")
    expected = _expected(loader, dataset)
    for _ in range(2):
        for i, batch in enumerate(loader):
            _assert_same(batch, expected[i], f"batch {i}")
    assert int(loader.slots.fallbacks) == 0


def test_small_arrays_travel_by_value_large_ones_in_shared_memory():
    items = [
        {
            "small": {"a": torch.arange(5) + i, "flag": torch.tensor(i % 2 == 0)},
            "large": torch.full((BY_VALUE_LIMIT // 2,), i, dtype=torch.uint8),
        }
        for i in range(3)
    ]
    packed = stack_by_value(items)
    assert isinstance(packed["small"]["a"], np.ndarray) and isinstance(packed["large"], torch.Tensor)
    _assert_same(tensors_of(packed), default_collate(items))
