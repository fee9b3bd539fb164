"""Episode-continuous batches: each batch slot follows one episode, window after window.

With a memory policy (e.g. VPT's Transformer-XL), the trainer carries slot ``b``'s state from
batch ``i`` to batch ``i+1`` (truncated back-propagation through time). That only works if
slot ``b`` of batch ``i+1`` really is the next window of the episode slot ``b`` held in batch
``i``. This sampler guarantees it, and these invariants, whatever an epoch's shuffle:

* every window is served exactly once per epoch, none dropped, none twice; every episode whole,
  in one slot, in order (its memory is carried from its first window to its last);
* every epoch has the same number of batches, on every rank. Lightning fixes the epoch length from
  the first epoch and DDP ranks must step together, so the length must not depend on the shuffle.
  It is the longest slot of a longest-first packing, which depends on the episode lengths only;
* episodes go to ranks whole, balanced by length (longest first to the least-loaded rank), the
  same every epoch;
* on each rank, the episodes of an epoch are taken in a shuffled order (``seed``, ``epoch``), each
  by the slot that becomes free first; a shuffle whose packing would be longer than the fixed length
  is drawn again (a few times), then the longest-first packing is used, its slots' order shuffled;
* slots that run out are padded with ``PAD`` (a fully masked window), never borrowing another
  slot's episode;
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


def longest(bins: Sequence[Sequence[int]], lengths: Sequence[int]) -> int:
    return max((sum(lengths[i] for i in items) for items in bins), default=0)


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
        return {
            "epoch": self.epoch,
            "batches_done": batches_done,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "world_size": self.world_size,
            "trainer_epoch": self.epoch - self._epoch_offset if trainer_epoch is None else trainer_epoch,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"resuming with data seed {self.seed}, but the checkpoint was made with {state['seed']}")
        if state.get("world_size", self.world_size) != self.world_size:
            # Each rank's share of the epoch depends on the world size: the cut position does not carry over.
            raise ValueError(
                f"resuming on {self.world_size} rank(s) a run whose checkpoint was made on "
                f"{state['world_size']}: the cut epoch's batches differ; resume with the same number "
                f"of devices (trainer.devices x trainer.num_nodes)"
            )
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
        self._num_batches: dict[int, int] = {}
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
    #: Shuffles drawn per rank and epoch before falling back to the longest-first packing.
    ATTEMPTS = 16

    def _lengths(self) -> list[int]:
        return [len(w) for w in self.episode_windows]

    def rank_episodes(self) -> list[list[int]]:
        """Each rank's episodes: longest first to the least-loaded rank, independent of the epoch."""
        lengths = self._lengths()
        return assign_longest_first(lengths, list(range(len(lengths))), self.world_size)

    def __len__(self) -> int:
        """Batches per epoch: the longest slot of the longest-first packing of every rank; the same in every
        epoch and on every rank (also while a resumed epoch is served: Lightning counts the restored batches)."""
        if self.world_size not in self._num_batches:  # the world size is known once the process group is up
            lengths = self._lengths()
            self._num_batches[self.world_size] = max(
                (
                    longest(assign_longest_first(lengths, episodes, self.batch_size), lengths)
                    for episodes in self.rank_episodes()
                ),
                default=0,
            )
        return self._num_batches[self.world_size]

    def slot_plan(self, epoch: int | None = None) -> list[list[list[int]]]:
        """``plan[rank][slot]`` = that slot's episodes, in the order it serves them; no slot longer than ``len``."""
        epoch = self.epoch if epoch is None else epoch
        lengths, num_batches = self._lengths(), len(self)
        rng = np.random.default_rng((self.seed, epoch))
        plan = []
        for episodes in self.rank_episodes():
            slots = None
            for _ in range(self.ATTEMPTS if self.shuffle else 1):
                order = rng.permutation(episodes).tolist() if self.shuffle else episodes
                slots = fill_slots(order, lengths, self.batch_size)
                if longest(slots, lengths) <= num_batches:
                    break
            else:  # no shuffle packed short enough: the longest-first packing, its slots in a shuffled order
                slots = [
                    rng.permutation(slot).tolist() if self.shuffle else slot
                    for slot in assign_longest_first(lengths, episodes, self.batch_size)
                ]
                if self.shuffle:
                    slots = [slots[i] for i in rng.permutation(len(slots))]
            plan.append(slots)
        return plan

    def __iter__(self) -> Iterator[list[int]]:
        num_batches = len(self)
        streams = []
        for slot in self.slot_plan()[self.rank]:
            windows = [w for e in slot for w in self.episode_windows[e]]
            streams.append(windows + [PAD] * (num_batches - len(windows)))
        for i in range(self._skip(), num_batches):
            yield [stream[i] for stream in streams]

    # -- resume --------------------------------------------------------------------------------------
    def _resumed_skip(self, batches_done: int, saved_batch_size: int) -> int:
        if saved_batch_size != self.batch_size:
            # The slots' episode plan depends on the batch size: the checkpoint's position means nothing in another.
            raise ValueError(
                f"resuming episode-continuous batches with data.batch_size={self.batch_size}, but the "
                f"checkpoint was made with {saved_batch_size}: resume with data.batch_size="
                f"{saved_batch_size}"
            )
        return batches_done


class RandomWindowSampler(Sampler):
    """Random windows ``(episode, start)`` for training without carried memory.

    ``mode="frames"``: every window start of the dataset is equally likely (long episodes are drawn more often);
    ``mode="episodes"``: every episode is equally likely, then a start within it. ``episode_weights`` scale the
    chance of each episode further (mixing several datasets). ``num_samples`` windows per epoch and rank, drawn
    from a generator seeded by ``(seed, epoch, rank)``: reproducible, different per rank and epoch. The rank and
    world size default to the running process group, as DistributedSampler's do.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        span: int,
        num_samples: int,
        mode: str = "frames",
        episode_weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        episodes: Sequence[int] | None = None,
    ) -> None:
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

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, self.rank, self.world_size])

    def _draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random windows: (episode positions in the store, start frames)."""
        episodes = rng.choice(len(self.lengths), size=n, p=self.probabilities)
        starts = (rng.random(n) * self.starts[episodes]).astype(np.int64)
        return self.episodes[episodes], starts

    def __iter__(self) -> Iterator[tuple[int, int]]:
        episodes, starts = self._draw(self._rng(), self.num_samples)
        return iter(zip(episodes.tolist(), starts.tolist(), strict=False))


#: Where an event sits in its window by default, as a frame index of the window ("end": the last frame).
EVENT_OFFSETS = ("end", "centre", "start")
EVENT_BALANCE = ("occurrences", "names")


class EventWindowSampler(RandomWindowSampler):
    """Windows that hold an event at a chosen position (MineStudio's event dataset, for rare moments such as
    crafting), mixed with the ordinary random windows of :class:`RandomWindowSampler`.

    ``events``: rows ``(episode position, frame, name code)`` of the episodes to sample from (the training split).
    ``offset``: the event's index in the window (``0 .. win_len - 1``; ``"end"`` = ``win_len - 1``, ``"centre"``,
    ``"start"`` = 0): the window starts ``offset * frame_skip`` frames before the event. Near an episode's start or
    end, where that window does not fit, it is shifted just enough to fit, and the event's real index is yielded with
    it. ``share``: the expected fraction of event windows (each sample is one with that probability; the others are
    ordinary windows). ``balance``: ``occurrences`` draws every event equally often (frequent names dominate);
    ``names`` draws a name uniformly, then one of its events. Yields ``(episode, start, event index)`` for event
    windows and ``(episode, start)`` for ordinary ones, from a generator seeded by (seed, epoch, rank, world size):
    a resumed epoch replays exactly.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        span: int,
        num_samples: int,
        events: np.ndarray,
        win_len: int,
        frame_skip: int = 1,
        offset: int | str = "end",
        share: float = 1.0,
        balance: str = "occurrences",
        mode: str = "frames",
        episode_weights: Sequence[float] | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        episodes: Sequence[int] | None = None,
    ) -> None:
        super().__init__(lengths, span, num_samples, mode, episode_weights, seed, rank, world_size, episodes)
        if len(events) == 0:
            raise ValueError("no events to centre windows on")
        if not 0.0 < float(share) <= 1.0:
            raise ValueError(f"data.event_share must be in (0, 1], got {share}")
        if balance not in EVENT_BALANCE:
            raise ValueError(f"data.event_balance must be one of {EVENT_BALANCE}, got {balance!r}")
        self.win_len, self.frame_skip, self.share, self.balance = int(win_len), int(frame_skip), float(share), balance
        named = {"end": self.win_len - 1, "centre": self.win_len // 2, "start": 0}
        if isinstance(offset, str) and offset not in named:
            raise ValueError(f"data.event_offset must be an index in 0..{self.win_len - 1} or one of {EVENT_OFFSETS}")
        self.offset = named[offset] if isinstance(offset, str) else int(offset)
        if not 0 <= self.offset < self.win_len:
            raise ValueError(f"data.event_offset={offset} is outside the window's {self.win_len} frames")
        length_of = dict(zip(self.episodes.tolist(), self.lengths.tolist(), strict=True))
        self.event_episode = np.asarray(events["episode"], np.int64)
        self.event_frame = np.asarray(events["frame"], np.int64)
        self.event_name = np.asarray(events["name"], np.int64)
        unknown = set(self.event_episode.tolist()) - length_of.keys()
        if unknown:
            raise ValueError(f"events of episodes {sorted(unknown)[:5]} that are not among the sampled episodes")
        self.event_length = np.array([length_of[e] for e in self.event_episode.tolist()], np.int64)
        if balance == "names":
            _, inverse, counts = np.unique(self.event_name, return_inverse=True, return_counts=True)
            weights = 1.0 / counts[inverse]
            self.event_probabilities = weights / weights.sum()
        else:
            self.event_probabilities = None

    def window_of(self, episode_length: np.ndarray, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(start frame, event index in the window) for events at ``frame``: the index is ``offset`` where the window
        fits in the episode, else the nearest index that makes it fit (or, in an episode shorter than a window, the
        one that starts it at frame 0 or nearest)."""
        k, span = self.frame_skip, self.win_len * self.frame_skip
        highest = np.minimum(self.win_len - 1, frame // k)  # the window must not start before frame 0
        lowest = np.maximum(0, -(-(frame + span - episode_length) // k))  # nor end after the episode
        index = np.minimum(np.maximum(self.offset, lowest), highest)
        return frame - index * k, index

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        rng = self._rng()
        is_event = rng.random(self.num_samples) < self.share
        n_events = int(is_event.sum())
        chosen = rng.choice(len(self.event_frame), size=n_events, p=self.event_probabilities)
        starts, index = self.window_of(self.event_length[chosen], self.event_frame[chosen])
        plain_episodes, plain_starts = self._draw(rng, self.num_samples - n_events)
        event_keys = iter(zip(self.event_episode[chosen].tolist(), starts.tolist(), index.tolist(), strict=True))
        plain_keys = iter(zip(plain_episodes.tolist(), plain_starts.tolist(), strict=True))
        return iter([next(event_keys) if e else next(plain_keys) for e in is_event.tolist()])
