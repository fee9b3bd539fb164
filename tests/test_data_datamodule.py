"""WindowDataset / MineDataModule: batch format, one pass over every frame per epoch, split by episode."""

import logging
from collections import Counter

import numpy as np
import pytest
import torch

from minesweep.actions import CAMERA_NULL_INDEX, env_to_agent
from minesweep.data.ingest.contractor import ingest
from minesweep.data.loading.datamodule import MineDataModule, WindowDataset, split_episodes
from minesweep.data.recordings.synth import write_synthetic_episode
from minesweep.data.store import EpisodeStore

LENGTHS = [40, 50, 64, 75]  # 40 and 50 end in a padded window; 64 does not
WIN = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    for i, n in enumerate(LENGTHS):
        # No segmentation modality: the batch has exactly the base keys (segment_* only when present).
        write_synthetic_episode(raw, f"ep{i}", n, seed=i, width=64, height=64, segmentation=False)
    store = tmp_path_factory.mktemp("data") / "store"
    assert len(ingest(raw, store, resolution=(64, 64), print_summary=False).ingested) == len(LENGTHS)
    return store


def all_batches(loader):
    return [batch for batch in loader]


def test_batch_format(root):
    dm = MineDataModule(str(root), win_len=WIN, batch_size=3, num_workers=0, val_fraction=0.25)
    batch = next(iter(dm.train_dataloader()))
    B = 3
    expected = {
        "image": (torch.uint8, (B, WIN, 64, 64, 3)),
        "mask": (torch.float32, (B, WIN)),
        "is_null": (torch.bool, (B, WIN)),
        "episode": (torch.int64, (B,)),
        "timestep": (torch.int64, (B, WIN)),
        "first": (torch.bool, (B, WIN)),
    }
    for key, (dtype, shape) in expected.items():
        assert batch[key].dtype == dtype and tuple(batch[key].shape) == shape, key
    assert batch["agent_action"]["buttons"].dtype == torch.int64
    assert tuple(batch["agent_action"]["buttons"].shape) == (B, WIN, 1)
    assert batch["agent_action"]["camera"].dtype == torch.int64
    assert tuple(batch["agent_action"]["camera"].shape) == (B, WIN, 1)
    assert batch["env_action"]["buttons"].dtype == torch.uint8
    assert tuple(batch["env_action"]["buttons"].shape) == (B, WIN, 20)
    assert batch["env_action"]["camera"].dtype == torch.float32
    assert tuple(batch["env_action"]["camera"].shape) == (B, WIN, 2)
    assert set(batch) == {
        "image",
        "agent_action",
        "env_action",
        "mask",
        "is_null",
        "episode",
        "window_index",
        "timestep",
        "first",
    }


def test_items_match_the_store(root):
    store = EpisodeStore(root)
    dataset = WindowDataset(store, win_len=WIN)
    for i in range(len(dataset)):
        item = dataset[i]
        record = store.episodes[int(item["episode"])]
        start = int(item["timestep"][0])
        n = int(item["mask"].sum())
        assert n == min(WIN, record.length - start)
        np.testing.assert_array_equal(item["image"][:n].numpy(), store.read_frames(record.id, start, n))
        actions = store.read_actions(record.id)
        np.testing.assert_array_equal(item["env_action"]["buttons"][:n].numpy(), actions["buttons"][start : start + n])
        np.testing.assert_array_equal(item["env_action"]["camera"][:n].numpy(), actions["camera"][start : start + n])
        np.testing.assert_array_equal(item["is_null"][:n].numpy(), actions["is_null"][start : start + n])
        buttons, camera = env_to_agent(actions["buttons"][start : start + n], actions["camera"][start : start + n])
        np.testing.assert_array_equal(item["agent_action"]["buttons"][:n, 0].numpy(), buttons)
        np.testing.assert_array_equal(item["agent_action"]["camera"][:n, 0].numpy(), camera)


def test_padding_is_masked_and_null(root):
    dataset = WindowDataset(root, win_len=WIN)
    padded = [dataset[i] for i in range(len(dataset)) if dataset[i]["mask"].min() == 0]
    assert len(padded) == 3  # the last windows of the 40, 50 and 75 frame episodes
    for item in padded:
        pad = item["mask"] == 0
        assert torch.all(item["mask"][~pad] == 1) and pad[-1] and not pad[0]
        assert torch.all(item["image"][pad] == 0)
        assert torch.all(item["agent_action"]["buttons"][pad] == 0)
        assert torch.all(item["agent_action"]["camera"][pad] == CAMERA_NULL_INDEX)
        assert torch.all(item["env_action"]["buttons"][pad] == 0) and torch.all(item["env_action"]["camera"][pad] == 0)
        assert torch.all(item["is_null"][pad]) and not item["first"][pad].any()


def test_every_frame_once_per_epoch_and_first_flags(root):
    dm = MineDataModule(str(root), win_len=WIN, batch_size=4, num_workers=0, val_fraction=0.25)
    seen = Counter()
    windows = Counter()
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        for batch in all_batches(loader):
            for b in range(len(batch["episode"])):
                episode = int(batch["episode"][b])
                windows[(episode, int(batch["timestep"][b, 0]))] += 1
                valid = batch["mask"][b] == 1
                for t in batch["timestep"][b][valid].tolist():
                    seen[(episode, t)] += 1
                np.testing.assert_array_equal(batch["first"][b].numpy(), (batch["timestep"][b] == 0).numpy())
    assert max(windows.values()) == 1, "a window was served twice"
    assert set(seen) == {(e, t) for e, n in enumerate(LENGTHS) for t in range(n)}
    assert max(seen.values()) == 1
    assert sum(1 for (_, start) in windows if start == 0) == len(LENGTHS)  # one episode start per episode


def test_split_by_episode(root):
    dm = MineDataModule(str(root), win_len=WIN, num_workers=0, val_fraction=0.25, seed=3)
    dm.setup("fit")
    train, val = set(dm.train_set.episode_indices), set(dm.val_set.episode_indices)
    assert train and val and not train & val and train | val == set(range(len(LENGTHS)))
    assert {e for e, _, _ in dm.val_set.windows} == val and {e for e, _, _ in dm.train_set.windows} == train
    assert split_episodes(4, 0.25, 3) == split_episodes(4, 0.25, 3)
    assert len(split_episodes(2, 0.01, 0)[1]) == 1  # at least one val episode
    assert split_episodes(1, 0.5, 0) == ([0], [])
    assert len({tuple(split_episodes(24, 0.125, s)[1]) for s in range(5)}) > 1  # the seed matters


def test_train_shuffles_deterministically_val_does_not(root):
    def order(loader):
        return [
            (int(e), int(t)) for batch in loader for e, t in zip(batch["episode"], batch["timestep"][:, 0], strict=True)
        ]

    dm = MineDataModule(str(root), win_len=WIN, batch_size=2, num_workers=0, seed=1)
    train = dm.train_dataloader()
    epoch1 = order(train)
    assert order(train) == epoch1  # the order is a function of (seed, epoch): an epoch can be rebuilt to resume it
    train.sampler.set_epoch(1)  # as Lightning does before each epoch
    epoch2 = order(train)
    assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2
    assert (
        order(MineDataModule(str(root), win_len=WIN, batch_size=2, num_workers=0, seed=1).train_dataloader()) == epoch1
    )
    val = order(dm.val_dataloader())
    assert val == sorted(val) == order(dm.val_dataloader())


def test_worker_processes(root):
    dm = MineDataModule(str(root), win_len=WIN, batch_size=4, num_workers=2, val_fraction=0.25)
    dm.store.read_frames(dm.store.episodes[0].id, 0, 2)  # an open container in the parent must not leak
    frames = sum(int(batch["mask"].sum()) for batch in dm.train_dataloader())
    frames += sum(int(batch["mask"].sum()) for batch in dm.val_dataloader())
    assert frames == sum(LENGTHS)


def test_missing_store_says_how_to_create_one(tmp_path):
    dm = MineDataModule(str(tmp_path / "nowhere"), num_workers=0)
    with pytest.raises(FileNotFoundError, match="nowhere") as err:
        dm.setup("fit")
    assert "minesweep-data ingest" in str(err.value) and "minesweep-data synth" in str(err.value)


def test_demo_data_generated_on_first_use(tmp_path, caplog):
    root = tmp_path / "demo" / "store"
    demo = {"episodes": 2, "frames": 36, "width": 64, "height": 64, "seed": 0, "resolution": 32}
    dm = MineDataModule(str(root), win_len=16, batch_size=2, num_workers=0, demo=demo)
    with caplog.at_level(logging.INFO, logger="minesweep"):
        dm.prepare_data()
    assert f"minesweep: generating demo data into {root} (first use)" in caplog.text
    assert (tmp_path / "demo" / "demo_raw" / "synth-0000.mp4").is_file()
    assert [e.length for e in dm.store.episodes] == [36, 36] and dm.store.resolution == (32, 32)
    batch = next(iter(dm.train_dataloader()))
    assert tuple(batch["image"].shape) == (2, 16, 32, 32, 3)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="minesweep"):
        MineDataModule(str(root), num_workers=0, demo=demo).prepare_data()  # second use: nothing to do
    assert "generating" not in caplog.text


def test_a_failed_demo_build_leaves_no_store_behind(tmp_path, monkeypatch):
    """Interrupted while ingesting: no folder with a manifest is left at the store's path, so the next run builds
    the demo again instead of training on part of it."""
    from minesweep.data.ingest import contractor
    from minesweep.data.loading import datamodule as module

    root = tmp_path / "demo" / "store"
    demo = {"episodes": 2, "frames": 36, "width": 64, "height": 64, "seed": 0, "resolution": 32}

    def interrupted(src, dst, **kwargs):
        contractor.ingest(src, dst, **{**kwargs, "workers": 1})  # a complete store, then the interruption
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "ingest", interrupted)
    with pytest.raises(KeyboardInterrupt):
        MineDataModule(str(root), num_workers=0, demo=demo).prepare_data()
    assert not root.exists()
    monkeypatch.undo()
    dm = MineDataModule(str(root), win_len=16, batch_size=2, num_workers=0, demo=demo)
    dm.prepare_data()
    assert [e.length for e in dm.store.episodes] == [36, 36]
    assert not root.with_name("store.partial").exists()


@pytest.mark.slow
def test_spawned_workers_read_the_same_batches(root):
    # Readers open their own shard handles per process: spawn (no inherited state) must work like fork.
    from torch.utils.data import DataLoader, SequentialSampler

    from minesweep.data.loading.datamodule import Batches

    dataset = WindowDataset(root, win_len=WIN)
    expected = [dataset[keys] for keys in Batches(SequentialSampler(dataset), 3, drop_last=False)]
    dataset.store.read_frames(0, 0, 2)  # handles open in the parent are not inherited
    loader = DataLoader(
        dataset,
        sampler=Batches(SequentialSampler(dataset), 3, drop_last=False),
        batch_size=None,
        num_workers=2,
        multiprocessing_context="spawn",
    )
    got = list(loader)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=False):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["episode"], b["episode"])


def test_batches_resume_the_cut_epoch_at_its_next_batch():
    from torch.utils.data import DistributedSampler

    from minesweep.data.loading.datamodule import Batches

    def batches(seed: int = 5) -> Batches:
        return Batches(
            DistributedSampler(list(range(23)), num_replicas=1, rank=0, shuffle=True, seed=seed), 4, seed=seed
        )

    straight = batches()
    straight.set_epoch(3)
    epoch3 = list(straight)
    straight.set_epoch(4)
    epoch4 = list(straight)
    assert epoch4 != epoch3  # a new order each epoch
    resumed = batches()
    resumed.load_state_dict({"epoch": 3, "batches_done": 2, "seed": 5, "trainer_epoch": 4})
    resumed.set_epoch(4)  # Lightning's counter is one ahead after a train-end checkpoint
    assert list(resumed) == epoch3[2:]
    assert list(resumed) == epoch3[2:], "not used up by a first, discarded iter() (multiprocess DataLoader)"
    resumed.set_epoch(5)
    assert list(resumed) == epoch4, "the skip applies to the resumed epoch only"
    with pytest.raises(ValueError, match="data seed 6, but the checkpoint was made with 5"):
        batches(seed=6).load_state_dict({"epoch": 3, "batches_done": 2, "seed": 5})


def test_batches_resumed_with_another_batch_size_skip_the_windows_already_trained(caplog):
    from torch.utils.data import DistributedSampler

    from minesweep.data.loading.datamodule import Batches

    def batches(batch_size: int) -> Batches:
        return Batches(DistributedSampler(list(range(24)), num_replicas=1, rank=0, shuffle=True, seed=0), batch_size)

    straight = batches(4)
    straight.set_epoch(2)
    windows = [w for batch in straight for w in batch]
    resumed = batches(6)
    with caplog.at_level(logging.WARNING, logger="minesweep.data.loading.datamodule"):
        resumed.load_state_dict(straight.state_dict(batches_done=3))  # 12 windows trained on
    resumed.set_epoch(2)
    assert [w for batch in resumed for w in batch] == windows[12:]
    assert "data.batch_size=6 (checkpoint: 4)" in caplog.text


# --------------------------------------------------------------------------- data.on_corrupt


@pytest.fixture
def corrupt_root(root, tmp_path):
    """A copy of the store with one byte flipped in GOP 1 (frames [32, 64)) of episode ep2 (64 frames)."""
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(root, copy)
    store = EpisodeStore(copy)
    position = store.position("ep2")
    record = store.episodes[position]
    offset = record.video_offset + int(store._video_bounds(position, record)[1]) + 100
    with open(copy / "shards/shard-00000.bin", "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    return copy, position


def test_on_corrupt_raise_is_the_default(corrupt_root):
    from minesweep.data.store import CorruptDataError

    copy, position = corrupt_root
    dataset = WindowDataset(copy, win_len=WIN)
    with pytest.raises(CorruptDataError, match=r"'ep2'.*frames \[32, 64\)"):
        dataset[[(position, 40)]]


def test_on_corrupt_skip_pads_the_window_counts_and_names_it(corrupt_root, caplog):
    copy, position = corrupt_root
    dataset = WindowDataset(copy, win_len=WIN, on_corrupt="skip")
    keys = [(position, 0), (position, 40), (0, 5)]
    with caplog.at_level(logging.WARNING, logger="minesweep.data.loading.datamodule"):
        batch = dataset[keys]
    assert tuple(batch["image"].shape) == (3, WIN, 64, 64, 3)
    assert batch["episode"].tolist() == [position, -1, 0]
    assert batch["mask"][1].sum() == 0 and batch["mask"][0].sum() == WIN and batch["mask"][2].sum() == WIN
    assert not batch["image"][1].any() and batch["image"][0].any()
    assert dataset.corrupt_windows == 1
    assert "'ep2'" in caplog.text and "frames [32, 64)" in caplog.text
    # the good windows are exactly what a clean read gives
    clean = WindowDataset(copy, win_len=WIN)[[(position, 0), (0, 5)]]
    torch.testing.assert_close(batch["image"][[0, 2]], clean["image"])


def test_on_corrupt_skip_counts_across_loader_workers(corrupt_root):
    copy, position = corrupt_root
    dm = MineDataModule(str(copy), win_len=WIN, batch_size=2, num_workers=1, val_fraction=0.0, on_corrupt="skip")
    masked = sum(int((batch["episode"] == -1).sum()) for batch in dm.train_dataloader())
    # grid windows of ep2: [0, 32) and [32, 64); the second is corrupt, each epoch
    assert masked == 1 and dm.train_set.corrupt_windows == 1
    with pytest.raises(ValueError, match="data.on_corrupt"):
        MineDataModule(str(copy), on_corrupt="ignore")
