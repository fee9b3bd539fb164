"""Episode-continuous batches: each batch slot follows one episode, window after window.

With a memory policy (e.g. VPT's Transformer-XL), the trainer carries slot ``b``'s state from
batch ``i`` to batch ``i+1`` (truncated back-propagation through time). That only works if
slot ``b`` of batch ``i+1`` really is the next window of the episode slot ``b`` held in batch
``i``. This sampler guarantees it:

* episodes go to ranks whole, balanced by length (longest first to the least-loaded rank);
* on each rank, episodes go to the slot that becomes free first, and each slot emits its
  episodes' windows in order;
* every window is served exactly once per epoch, none dropped, none twice;
* slots (and ranks) that run out are padded with ``PAD`` (a fully masked window) rather than
  borrowing another slot's episode, and every rank yields the same number of batches (DDP must
  not hang);
* the episode order is shuffled with ``seed + epoch``;
* ``state_dict()/load_state_dict()`` let a resumed run continue at the exact next batch.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

#: Index of a padding window (mask 0) in a batch.
PAD = -1


def fill_slots(items: Sequence[int], lengths: Sequence[int], bins: int) -> list[list[int]]:
    """Items in the given order, each to the bin that is lightest so far (ties: lowest bin).

    For slots this is "the slot that becomes free first takes the next episode"."""
    heap = [(0, b) for b in range(bins)]
    assigned: list[list[int]] = [[] for _ in range(bins)]
    for item in items:
        load, b = heapq.heappop(heap)
        assigned[b].append(item)
        heapq.heappush(heap, (load + lengths[item], b))
    return assigned


def assign_longest_first(lengths: Sequence[int], order: Sequence[int], bins: int) -> list[list[int]]:
    """Greedy balancing: items taken longest first (ties in ``order``), each to the lightest bin."""
    position = {item: i for i, item in enumerate(order)}
    return fill_slots(sorted(order, key=lambda item: (-lengths[item], position[item])), lengths, bins)


class EpisodeContinuousBatchSampler(Sampler[list[int]]):
    """Yields lists of ``batch_size`` window indices (``PAD`` for padding) for one rank.

    ``episode_windows[e]`` lists the dataset indices of episode ``e``'s windows in temporal order.
    ``rank``/``world_size`` default to the initialised process group (else 0/1), read when
    iterating so the sampler can be built before DDP starts.
    """

    def __init__(
        self,
        episode_windows: Sequence[Sequence[int]],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.episode_windows = [list(w) for w in episode_windows]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self._rank, self._world_size = rank, world_size
        self.epoch = 0
        self._skip_batches = 0  # set by load_state_dict: batches of `epoch` already trained on

    # -- distributed context ------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        if self._rank is not None:
            return self._rank
        return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0

    @property
    def world_size(self) -> int:
        if self._world_size is not None:
            return self._world_size
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    # -- the plan for one epoch -----------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip_batches = 0
        self.epoch = epoch

    def slot_plan(self, epoch: int | None = None) -> list[list[list[int]]]:
        """``plan[rank][slot]`` = that slot's episodes, in the order it serves them."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.episode_windows)
        order = list(range(n))
        if self.shuffle:
            order = np.random.default_rng((self.seed, epoch)).permutation(n).tolist()
        lengths = [len(w) for w in self.episode_windows]
        per_rank = assign_longest_first(lengths, order, self.world_size)
        position = {episode: i for i, episode in enumerate(order)}  # (order.index would be quadratic)
        plan = []
        for episodes in per_rank:
            # keep the shuffled order within a rank: slots meet episodes in random order
            episodes = sorted(episodes, key=position.__getitem__)
            plan.append(fill_slots(episodes, lengths, self.batch_size))
        return plan

    def _num_batches(self, plan: list[list[list[int]]]) -> int:
        return max(
            (sum(len(self.episode_windows[e]) for e in slot) for rank in plan for slot in rank), default=0
        )

    def __len__(self) -> int:
        return self._num_batches(self.slot_plan()) - self._skip_batches

    def __iter__(self) -> Iterator[list[int]]:
        plan = self.slot_plan()
        num_batches = self._num_batches(plan)
        streams = []
        for slot in plan[self.rank]:
            windows = [w for e in slot for w in self.episode_windows[e]]
            streams.append(windows + [PAD] * (num_batches - len(windows)))
        skip, self._skip_batches = self._skip_batches, 0
        for i in range(skip, num_batches):
            yield [stream[i] for stream in streams]

    # -- resume --------------------------------------------------------------------------------------
    def state_dict(self, batches_done: int = 0) -> dict[str, int]:
        return {"epoch": self.epoch, "batches_done": batches_done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"resuming with data seed {self.seed}, but the checkpoint was made with {state['seed']}")
        self.epoch = int(state["epoch"])
        self._skip_batches = int(state["batches_done"])
