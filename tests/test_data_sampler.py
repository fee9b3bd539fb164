"""Properties of the episode-continuous batch sampler, over many random small cases."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from minesweep.data.loading.sampler import PAD, EpisodeContinuousBatchSampler


def make_windows(lengths):
    """Dataset indices of each episode's windows, contiguous like WindowDataset's."""
    windows, next_index = [], 0
    for n in lengths:
        windows.append(list(range(next_index, next_index + n)))
        next_index += n
    return windows


def run_epoch(windows, batch_size, world_size, epoch=0, seed=0):
    per_rank = []
    for rank in range(world_size):
        sampler = EpisodeContinuousBatchSampler(windows, batch_size, seed=seed, rank=rank, world_size=world_size)
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert all(len(b) == batch_size for b in batches)
        per_rank.append(batches)
    return per_rank


CASES = [
    (
        np.random.default_rng(case).integers(1, 9, size=np.random.default_rng(case + 1000).integers(1, 12)).tolist(),
        int(np.random.default_rng(case).integers(1, 5)),
        int(np.random.default_rng(case + 7).integers(1, 5)),
    )
    for case in range(150)
]


@pytest.mark.parametrize("lengths, batch_size, world_size", CASES)
def test_every_window_once_in_order_equal_batches(lengths, batch_size, world_size):
    windows = make_windows(lengths)
    episode_of = {w: e for e, ws in enumerate(windows) for w in ws}
    counts = set()
    for epoch in range(4):  # another shuffle, another packing each epoch: the same invariants
        per_rank = run_epoch(windows, batch_size, world_size, epoch=epoch)
        counts |= {len(batches) for batches in per_rank}
        served = [w for batches in per_rank for batch in batches for w in batch if w != PAD]
        assert sorted(served) == sorted(w for ws in windows for w in ws), "a window was dropped or served twice"

        episodes_per_rank = []
        for batches in per_rank:
            rank_episodes = set()
            for slot in range(batch_size):
                stream = [batch[slot] for batch in batches]
                real = [w for w in stream if w != PAD]
                # padding only at the end of a slot: no borrowing, no gaps
                assert stream[: len(real)] == real
                # each episode is served whole, consecutively, in temporal order
                position = 0
                while position < len(real):
                    episode = episode_of[real[position]]
                    assert real[position : position + len(windows[episode])] == windows[episode]
                    rank_episodes.add(episode)
                    position += len(windows[episode])
            episodes_per_rank.append(rank_episodes)
        for a in range(world_size):
            for b in range(a + 1, world_size):
                assert not episodes_per_rank[a] & episodes_per_rank[b], "an episode was split across ranks"
    # Lightning reads the length once: every epoch and every rank has the same number of batches
    assert len(counts) == 1, f"batches per epoch differ between epochs or ranks: {counts}"


def test_epoch_length_is_fixed_while_the_packing_changes():
    windows = make_windows([9, 2, 7, 3, 3, 8, 1, 5, 4, 6, 2, 2, 5])
    sampler = EpisodeContinuousBatchSampler(windows, 3, seed=0, rank=0, world_size=1)
    plans, lengths = set(), set()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        lengths.add(len(list(sampler)))
        plans.add(tuple(tuple(slot) for slot in sampler.slot_plan()[0]))
    assert lengths == {len(sampler)} == {-(-57 // 3)}  # 57 windows: this packing is perfect
    assert len(plans) >= 10, "the episodes' slots and order should change from epoch to epoch"


def test_ranks_are_balanced_by_length():
    lengths = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]
    per_rank = run_epoch(make_windows(lengths), batch_size=1, world_size=2)
    loads = [sum(w != PAD for batch in batches for w in batch) for batches in per_rank]
    assert abs(loads[0] - loads[1]) <= 1


def test_shuffle_depends_on_epoch_and_seed_only():
    windows = make_windows([3] * 12)
    assert run_epoch(windows, 3, 1, epoch=0) == run_epoch(windows, 3, 1, epoch=0)
    assert run_epoch(windows, 3, 1, epoch=0) != run_epoch(windows, 3, 1, epoch=1)
    assert run_epoch(windows, 3, 1, seed=0) != run_epoch(windows, 3, 1, seed=5)


def test_resume_continues_at_the_exact_next_batch():
    windows = make_windows([5, 3, 7, 2, 6])
    sampler = EpisodeContinuousBatchSampler(windows, 2, seed=3, rank=0, world_size=1)
    sampler.set_epoch(4)
    full = list(sampler)
    resumed = EpisodeContinuousBatchSampler(windows, 2, seed=3, rank=0, world_size=1)
    resumed.load_state_dict(sampler.state_dict(batches_done=5))
    resumed.set_epoch(4)  # Lightning sets the (same) epoch again before iterating
    assert len(resumed) == len(full), "Lightning counts the restored batches itself: the length stays the epoch's"
    assert list(resumed) == full[5:]
    # a multiprocess DataLoader calls iter() twice (once discarded): the skip is not used up by the first
    assert list(resumed) == full[5:]
    resumed.set_epoch(5)
    sampler.set_epoch(5)
    assert list(resumed) == list(sampler), "the skip applies to the resumed epoch only"


class Echo(Dataset):
    def __getitem__(self, index):
        return torch.tensor(index)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batch_order_is_preserved_with_workers(num_workers):
    windows = make_windows([4, 1, 6, 3, 2, 5])
    sampler = EpisodeContinuousBatchSampler(windows, 3, seed=1, rank=0, world_size=1)
    expected = list(sampler)
    loader = DataLoader(Echo(), batch_sampler=sampler, num_workers=num_workers)
    assert [batch.tolist() for batch in loader] == expected


def test_set_epoch_reshuffles_and_a_train_end_checkpoint_shifts_lightnings_counter():
    windows = make_windows([3, 5, 2, 4, 6, 1])
    sampler = EpisodeContinuousBatchSampler(windows, 2, seed=0, rank=0, world_size=1)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first  # Lightning calls set_epoch every epoch: a new episode order
    resumed = EpisodeContinuousBatchSampler(windows, 2, seed=0, rank=0, world_size=1)
    # written at train end in mid-epoch 0: Lightning already counts epoch 0 as done
    resumed.load_state_dict({"epoch": 0, "batches_done": 2, "seed": 0, "trainer_epoch": 1})
    resumed.set_epoch(1)
    assert list(resumed) == first[2:]
    resumed.set_epoch(2)
    assert list(resumed) == second, "Lightning's epoch 2 is the data's epoch 1"
    # written at the end of epoch 0's last batch, counted by Lightning: its epoch 1 is the data's epoch 1
    resumed = EpisodeContinuousBatchSampler(windows, 2, seed=0, rank=0, world_size=1)
    resumed.load_state_dict({"epoch": 0, "batches_done": len(first), "seed": 0, "trainer_epoch": 1})
    resumed.set_epoch(1)
    assert list(resumed) == second


def test_resume_with_another_batch_size_is_refused_by_name():
    sampler = EpisodeContinuousBatchSampler([[0, 1], [2]], 2, seed=0, rank=0, world_size=1)
    resumed = EpisodeContinuousBatchSampler([[0, 1], [2]], 3, seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="data.batch_size=3, but the checkpoint was made with 2"):
        resumed.load_state_dict(sampler.state_dict(batches_done=1))


def test_resume_on_another_number_of_ranks_is_refused_by_name():
    sampler = EpisodeContinuousBatchSampler([[0, 1], [2]], 2, seed=0, rank=0, world_size=2)
    resumed = EpisodeContinuousBatchSampler([[0, 1], [2]], 2, seed=0, rank=0, world_size=1)
    with pytest.raises(ValueError, match="resuming on 1 rank\\(s\\) a run whose checkpoint was made on 2"):
        resumed.load_state_dict(sampler.state_dict(batches_done=1))
