"""Random-window sampling, dataset mixing with weights, and null-action masking."""

import numpy as np
import pytest
import torch

from minesweep.data.loading.datamodule import MineDataModule, WindowDataset
from minesweep.data.loading.mixture import StoreMixture
from minesweep.data.loading.sampler import RandomWindowSampler
from minesweep.data.store import EpisodeStore, StoreWriter

H = W = 16


def write_store(root, lengths, null_every=0, value=0):
    with StoreWriter(root, resolution=(H, W), codec="raw") as writer:
        for i, n in enumerate(lengths):
            frames = np.full((n, H, W, 3), value, np.uint8)
            frames[:, 0, 0, 0] = np.arange(n) % 256  # the frame index, to check windows
            is_null = np.zeros(n, bool)
            if null_every:
                is_null[::null_every] = True
            writer.add_episode(
                f"e{i}",
                frames,
                {
                    "buttons": np.zeros((n, 20), np.uint8),
                    "camera": np.zeros((n, 2), np.float32),
                    "is_null": is_null,
                    "esc": np.zeros(n, bool),
                },
            )
    return root


def test_random_windows_are_reproducible_per_seed_epoch_and_rank():
    def draw(**kw):
        sampler = RandomWindowSampler([100, 40, 10], span=8, num_samples=50, **kw)
        return list(sampler)

    assert draw(seed=1, rank=0, world_size=2) == draw(seed=1, rank=0, world_size=2)
    assert draw(seed=1, rank=0, world_size=2) != draw(seed=1, rank=1, world_size=2)
    assert draw(seed=1, rank=0, world_size=1) != draw(seed=2, rank=0, world_size=1)
    sampler = RandomWindowSampler([100, 40, 10], span=8, num_samples=50, rank=0, world_size=1)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    for episode, start in first:  # a window fits in its episode whenever the episode is long enough
        assert 0 <= start <= max(0, [100, 40, 10][episode] - 8)


@pytest.mark.parametrize("mode, expected", [("frames", [93 / 128, 33 / 128, 2 / 128]), ("episodes", [1 / 3] * 3)])
def test_sampling_modes_pick_episodes_in_proportion(mode, expected):
    sampler = RandomWindowSampler([100, 40, 9], span=8, num_samples=60_000, mode=mode, rank=0, world_size=1)
    counts = np.bincount([e for e, _ in sampler], minlength=3) / 60_000
    np.testing.assert_allclose(counts, expected, atol=0.01)
    starts = np.array([s for e, s in sampler if e == 0])
    assert starts.min() == 0 and starts.max() == 92  # every start of the long episode is reachable
    assert abs(np.mean(starts) - 46) < 1.0  # and uniform


def test_tuple_keys_read_windows_anywhere_and_drop_null_actions_masks(tmp_path):
    store = EpisodeStore(write_store(tmp_path / "s", [50], null_every=5))
    dataset = WindowDataset(store, win_len=8, drop_null_actions=True)
    item = dataset[(0, 13)]
    assert item["timestep"].tolist() == list(range(13, 21))
    assert item["image"][:, 0, 0, 0].tolist() == list(range(13, 21))
    assert item["window_index"].item() == -2  # random windows continue nothing
    assert item["mask"].tolist() == [1, 1, 0, 1, 1, 1, 1, 0]  # steps 15 and 20 are null: masked, not cut
    assert item["is_null"].tolist() == [False, False, True, False, False, False, False, True]
    keep = WindowDataset(store, win_len=8)[(0, 13)]
    assert keep["mask"].tolist() == [1.0] * 8


def test_mixture_reads_every_store_and_weights_set_their_share(tmp_path):
    a = write_store(tmp_path / "a", [200, 200, 200, 200], value=10)
    b = write_store(tmp_path / "b", [30, 30], value=200)
    mixture = StoreMixture([a, b], weights=[0.25, 0.75])
    assert len(mixture) == 6 and mixture.lengths.tolist() == [200] * 4 + [30] * 2
    assert mixture.read_frames(5, 2, 3)[0, 1, 1, 0] == 200 and mixture.read_frames(0, 0, 1)[0, 1, 1, 0] == 10
    assert mixture.episodes[4].id == "e0"
    dm = MineDataModule(
        [str(a), str(b)],
        win_len=8,
        batch_size=50,
        num_workers=0,
        val_fraction=0.0,
        sampling="frames",
        weights=[0.25, 0.75],
        samples_per_epoch=4000,
    )
    loader = dm.train_dataloader()
    episodes = torch.cat([batch["episode"] for batch in loader])
    share_b = (episodes >= 4).float().mean().item()
    assert len(episodes) == 4000 and abs(share_b - 0.75) < 0.03, share_b


def test_mixing_refuses_what_cannot_work(tmp_path):
    a = write_store(tmp_path / "a", [20])
    with StoreWriter(tmp_path / "big", resolution=(H * 2, W), codec="raw") as writer:
        writer.add_episode(
            "x",
            np.zeros((5, H * 2, W, 3), np.uint8),
            {
                "buttons": np.zeros((5, 20), np.uint8),
                "camera": np.zeros((5, 2), np.float32),
                "is_null": np.zeros(5, bool),
                "esc": np.zeros(5, bool),
            },
        )
    with pytest.raises(ValueError, match="cannot be mixed.*re-ingest"):
        StoreMixture([a, tmp_path / "big"])
    with pytest.raises(ValueError, match="one non-negative number per store"):
        StoreMixture([a, a], weights=[1.0])
    with pytest.raises(ValueError, match="needs data.sampling=frames, episodes or events"):
        MineDataModule([str(a), str(a)], weights=[1, 1], sampling="grid")
    with pytest.raises(ValueError, match="data.sampling must be one of"):
        MineDataModule(str(a), sampling="uniform")
