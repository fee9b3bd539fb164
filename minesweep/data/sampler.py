"""Episode-continuous batches: each batch slot follows one episode, window after window.

With a memory policy (e.g. VPT's Transformer-XL), the trainer carries slot ``b``'s state from
batch ``i`` to batch ``i+1`` (truncated back-propagation through time). That only works if
slot ``b`` of batch ``i+1`` really is the next window of the episode slot ``b`` held in batch
``i``. This sampler guarantees it, and these invariants, whatever an epoch's shuffle:

* every window is served exactly once per epoch, none dropped, none twice;
* every epoch has the same number of batches on every rank: ``ceil(windows / (batch_size * ranks))``.
  Lightning fixes the epoch length from the first epoch, and DDP ranks must step together, so the
  length cannot depend on the shuffle;
* the slots of all ranks are filled in the epoch's shuffled episode order, each episode whole into the
  slot with the most room left; an episode that fits whole nowhere is cut at a window boundary into
  the slots' remaining room (its later part starts with a fresh memory, as a policy must after any
  cut). At most ``batch_size * ranks - 1`` windows of padding (``PAD``, fully masked) end the slots;
* the episode order is shuffled with ``(seed, epoch)``;
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


def pack_episodes(lengths: Sequence[int], order: Sequence[int], slots: int) -> list[list[tuple[int, int, int]]]:
    """Pieces ``(episode, first window, end window)`` per slot, every slot holding at most
    ``ceil(sum(lengths) / slots)`` windows: episodes in ``order``, each whole into the slot with the most room
    (ties: lowest slot); those that fit nowhere whole are then cut into the largest rooms left."""
    capacity = -(-sum(lengths) // slots) if slots else 0
    room = [(-capacity, s) for s in range(slots)]  # a max-heap of room left
    pieces: list[list[tuple[int, int, int]]] = [[] for _ in range(slots)]
    cut = []
    for episode in order:
        n = lengths[episode]
        free, s = room[0]
        if n == 0:
            continue
        if -free >= n:
            heapq.heapreplace(room, (free + n, s))
            pieces[s].append((episode, 0, n))
        else:
            cut.append(episode)
    for episode in cut:
        start, n = 0, lengths[episode]
        while start < n:  # total room >= windows left, so the largest room is never 0 here
            free, s = room[0]
            take = min(-free, n - start)
            heapq.heapreplace(room, (free + take, s))
            pieces[s].append((episode, start, start + take))
            start += take
    return pieces


class ResumableEpochs:
    """Mid-epoch resume for a batch sampler whose order is a function of ``(seed, epoch)``.

    ``state_dict(batches_done)`` records the epoch and how many of its batches were trained on;
    after ``load_state_dict`` every iteration of that epoch starts at its next batch, until the epoch changes.
    (Not consumed by the first iteration: a multiprocess DataLoader calls ``iter()`` on its sampler twice.)
    Subclasses set ``seed`` and ``batch_size``, call ``_start_epochs()`` in ``__init__``, start ``__iter__`` at
    ``_skip()`` batches, and may refine ``_resumed_skip``.
    """

    seed: int
    batch_size: int

    def _start_epochs(self) -> None:
        self.epoch = 0  # the data epoch: its order is a function of (seed, epoch)
        self._resume: tuple[int, int] | None = None  # (epoch, batches of it already trained on)
        self._epoch_offset = 0  # data epoch - Lightning's epoch counter (not 0 after some resumes, see load_state_dict)

    def set_epoch(self, epoch: int) -> None:
        """Lightning's epoch counter; the data epoch is that plus the offset a resume may have set."""
        epoch += self._epoch_offset
        if epoch != self.epoch:
            self._resume = None
        self.epoch = epoch
        self._epoch_changed(epoch)

    def _epoch_changed(self, epoch: int) -> None:
        """Hook: the epoch to iterate next is ``epoch``."""

    def _skip(self) -> int:
        """Batches of the current epoch to leave out: those trained on before the checkpoint."""
        if self._resume is not None and self._resume[0] == self.epoch:
            return self._resume[1]
        return 0

    @property
    def world_size(self) -> int:
        """The DDP world size the epoch's order is made for."""
        return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1

    def state_dict(self, batches_done: int = 0, trainer_epoch: int | None = None) -> dict[str, int]:
        """The cut position: data epoch, batches of it trained on, and Lightning's epoch counter at that moment."""
        return {"epoch": self.epoch, "batches_done": batches_done, "seed": self.seed, "batch_size": self.batch_size,
                "world_size": self.world_size,
                "trainer_epoch": self.epoch - self._epoch_offset if trainer_epoch is None else trainer_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"resuming with data seed {self.seed}, but the checkpoint was made with {state['seed']}")
        if state.get("world_size", self.world_size) != self.world_size:
            # Each rank's share of the epoch depends on the world size: the cut position does not carry over.
            raise ValueError(f"resuming on {self.world_size} rank(s) a run whose checkpoint was made on "
                             f"{state['world_size']}: the cut epoch's batches differ; resume with the same number "
                             f"of devices (trainer.devices x trainer.num_nodes)")
        epoch = int(state["epoch"])
        trainer_epoch = int(state.get("trainer_epoch", epoch))
        self.epoch = epoch
        self._epoch_changed(epoch)
        skip = self._resumed_skip(int(state["batches_done"]), int(state.get("batch_size", self.batch_size)))
        if skip >= len(self) and trainer_epoch > epoch:
            # Cut after the epoch's last batch and Lightning already counted it: it goes on with the next epoch.
            epoch, skip = epoch + 1, 0
        # Lightning's counter runs one ahead of the data epoch after a checkpoint written at train end in mid-epoch
        # (it counts the cut epoch as done, then replays nothing of it): the rest of that epoch is Lightning's next.
        self._epoch_offset = epoch - trainer_epoch
        self.epoch, self._resume = epoch, (epoch, skip)
        self._epoch_changed(epoch)

    def _resumed_skip(self, batches_done: int, saved_batch_size: int) -> int:
        """Batches to skip in the cut epoch, given the checkpoint's count and batch size."""
        return batches_done


class EpisodeContinuousBatchSampler(ResumableEpochs, Sampler[list[int]]):
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
        self._start_epochs()

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
    def slot_plan(self, epoch: int | None = None) -> list[list[list[tuple[int, int, int]]]]:
        """``plan[rank][slot]`` = that slot's pieces ``(episode, first window, end window)``, in serving order."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.episode_windows)
        order = list(range(n))
        if self.shuffle:
            order = np.random.default_rng((self.seed, epoch)).permutation(n).tolist()
        pieces = pack_episodes([len(w) for w in self.episode_windows], order, self.batch_size * self.world_size)
        return [pieces[r * self.batch_size:(r + 1) * self.batch_size] for r in range(self.world_size)]

    def __len__(self) -> int:
        """Batches per epoch: the same for every epoch and rank (also while a resumed epoch is served)."""
        windows = sum(len(w) for w in self.episode_windows)
        return -(-windows // (self.batch_size * self.world_size))

    def __iter__(self) -> Iterator[list[int]]:
        num_batches = len(self)
        streams = []
        for slot in self.slot_plan()[self.rank]:
            windows = [w for e, a, b in slot for w in self.episode_windows[e][a:b]]
            streams.append(windows + [PAD] * (num_batches - len(windows)))
        for i in range(self._skip(), num_batches):
            yield [stream[i] for stream in streams]

    # -- resume --------------------------------------------------------------------------------------
    def _resumed_skip(self, batches_done: int, saved_batch_size: int) -> int:
        if saved_batch_size != self.batch_size:
            # The slots' episode plan depends on the batch size: the checkpoint's position means nothing in another.
            raise ValueError(f"resuming episode-continuous batches with data.batch_size={self.batch_size}, but the "
                             f"checkpoint was made with {saved_batch_size}: resume with data.batch_size="
                             f"{saved_batch_size}")
        return batches_done


class RandomWindowSampler(Sampler):
    """Random windows ``(episode, start)`` for training without carried memory.

    ``mode="frames"``: every window start of the dataset is equally likely (long episodes are drawn more often);
    ``mode="episodes"``: every episode is equally likely, then a start within it. ``episode_weights`` scale the
    chance of each episode further (mixing several datasets). ``num_samples`` windows per epoch and rank, drawn
    from a generator seeded by ``(seed, epoch, rank)``: reproducible, different per rank and epoch. The rank and
    world size default to the running process group, as DistributedSampler's do.
    """

    def __init__(self, lengths: Sequence[int], span: int, num_samples: int, mode: str = "frames",
                 episode_weights: Sequence[float] | None = None, seed: int = 0, rank: int | None = None,
                 world_size: int | None = None, episodes: Sequence[int] | None = None) -> None:
        if mode not in ("frames", "episodes"):
            raise ValueError(f"sampling mode must be 'frames' or 'episodes', got {mode!r}")
        self.lengths = np.asarray(lengths, np.int64)
        if len(self.lengths) == 0:
            raise ValueError("no episodes to sample windows from")
        self.span, self.num_samples, self.mode, self.seed = int(span), int(num_samples), mode, int(seed)
        self._rank, self._world_size = rank, world_size
        # What to yield for episode i: its position in the store (the sampler may see a subset, e.g. the train split).
        self.episodes = np.arange(len(self.lengths)) if episodes is None else np.asarray(episodes, np.int64)
        # Window starts per episode: every start whose window fits, or 0 alone for an episode shorter than one.
        self.starts = np.maximum(self.lengths - self.span + 1, 1)
        weights = np.ones(len(self.lengths)) if episode_weights is None else np.asarray(episode_weights, float)
        if weights.shape != self.lengths.shape or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("episode_weights must be one non-negative weight per episode, not all zero")
        p = weights * (self.starts if mode == "frames" else 1.0)
        self.probabilities = p / p.sum()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    @property
    def rank(self) -> int:  # read when iterating: the process group may start after the sampler is made
        distributed = dist.is_available() and dist.is_initialized()
        return self._rank if self._rank is not None else (dist.get_rank() if distributed else 0)

    @property
    def world_size(self) -> int:
        distributed = dist.is_available() and dist.is_initialized()
        return self._world_size if self._world_size is not None else (dist.get_world_size() if distributed else 1)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, self.world_size])
        episodes = rng.choice(len(self.lengths), size=self.num_samples, p=self.probabilities)
        starts = (rng.random(self.num_samples) * self.starts[episodes]).astype(np.int64)
        return iter(zip(self.episodes[episodes].tolist(), starts.tolist()))
