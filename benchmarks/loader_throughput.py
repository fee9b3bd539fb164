"""Training-window throughput of one DataLoader worker, and its peak memory, for H.264 and raw stores.

    python benchmarks/loader_throughput.py [--episodes 16 --frames 1200 --win-len 128 --windows 400 \
        --batch-size 4 --runs 3]

Builds synthetic stores at 128x128 (moving shapes over gradients, so H.264 has real work), then reads random
windows (RandomWindowSampler, uniform over window starts) through WindowDataset and the loader MineDataModule uses
(WindowLoader: ONE persistent worker, ``--batch-size`` windows per batch fetched whole, frames handed over in
shared slots allocated once, minesweep/data/loading/batch_slots.py). Each run reads its windows twice and times the
second pass: a training run's loader lives for many epochs, and the first pass also faults the slots' pages in.
Reports frames/s (median of ``--runs``) and the worker's peak RSS, for a store and for one 10x larger (the same
episodes appended ten times under new ids): the RSS must not grow with the dataset. Also prints the rate without
the slots (a plain DataLoader's hand-over: fresh shared memory per batch and per small tensor, as before them) and
the rate of building the same batches in this process (the worker's own work, no hand-over at all).

    python benchmarks/loader_throughput.py --checksum-cost [--episodes 4 --frames 600 --windows 200 --runs 5]

measures instead what verifying the stores' CRC32 sums on every read costs: the same loader with verification on
and off (an internal switch, ``EpisodeStore._verify_reads``, for this benchmark only), runs interleaved on/off so
that a drifting machine affects both alike, medians of ``--runs``; and ``read_frames`` timed window by window with
the checks on and off in turn (on a shared machine the frames/s of two runs differ by more than the checks cost).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minesweep.data.loading.batch_slots import WindowLoader  # noqa: E402
from minesweep.data.loading.datamodule import Batches, WindowDataset  # noqa: E402
from minesweep.data.loading.sampler import RandomWindowSampler  # noqa: E402
from minesweep.data.store import EpisodeStore, StoreWriter, encode_episode  # noqa: E402

RES = 128


def cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def frames_of(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:RES, 0:RES]
    out = np.empty((n, RES, RES, 3), np.uint8)
    centre = rng.uniform(20, 100, 2)
    velocity = rng.normal(0, 1.5, 2)
    for t in range(n):
        centre = (centre + velocity) % (RES - 24)
        out[t, ..., 0] = (x + 2 * t) % 256
        out[t, ..., 1] = (y * 2 + t) % 256
        out[t, ..., 2] = (x + y) % 256
        cy, cx = centre.astype(int)
        out[t, cy : cy + 24, cx : cx + 24] = rng.integers(0, 256, 3)
    return out


def actions_of(n: int) -> dict:
    return {
        "buttons": np.zeros((n, 20), np.uint8),
        "camera": np.zeros((n, 2), np.float32),
        "is_null": np.zeros(n, bool),
        "esc": np.zeros(n, bool),
    }


def build(root: Path, codec: str, episodes: int, frames: int, copies: int) -> EpisodeStore:
    encoded = [
        encode_episode(f"e{i}", frames_of(frames, i), actions_of(frames), (RES, RES), codec) for i in range(episodes)
    ]
    with StoreWriter(root, resolution=(RES, RES), codec=codec) as writer:
        for copy in range(copies):
            for e in encoded:
                writer.append(type(e)(f"{e.id}-{copy}", e.length, e.video, e.actions))
    return EpisodeStore(root)


class WithPeakRss(WindowDataset):
    """Each item also carries the reading process's peak RSS (KiB), so the worker's own figure comes back."""

    def __getitem__(self, key):
        item = super().__getitem__(key)
        item["peak_rss_kib"] = torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
        return item


def measure(
    store: EpisodeStore, win_len: int, windows: int, batch_size: int, seed: int, slots: bool = True
) -> tuple[float, float]:
    """frames/s of one loader worker reading ``windows`` random windows (the second pass over them), and that
    worker's peak RSS (MiB). Loaded as MineDataModule does (``slots``; False: a plain DataLoader's hand-over)."""
    dataset = WithPeakRss(store, win_len=win_len)
    sampler = RandomWindowSampler(store.lengths, win_len, windows, seed=seed, rank=0, world_size=1)
    batches = Batches(sampler, batch_size, drop_last=False)
    if slots:
        loader = WindowLoader(
            dataset,
            windows_per_batch=batch_size,
            sampler=batches,
            batch_size=None,
            num_workers=1,
            prefetch_factor=4,
            persistent_workers=True,
        )
    else:
        loader = DataLoader(dataset, sampler=batches, batch_size=None, num_workers=1, prefetch_factor=4)
    for _ in loader:  # worker start-up, first reads, the slots' pages: not timed
        pass
    start = time.perf_counter()
    frames, peak = 0, 0
    for batch in loader:
        frames += batch["mask"].numel()
        peak = max(peak, int(batch["peak_rss_kib"]))
    seconds = time.perf_counter() - start
    return frames / seconds, peak / 1024


def measure_reads(store: EpisodeStore, win_len: int, windows: int, batch_size: int, seed: int) -> float:
    """frames/s of the same batches built in this process (what a worker computes, without the hand-over)."""
    dataset = WindowDataset(store, win_len=win_len)
    sampler = RandomWindowSampler(store.lengths, win_len, windows, seed=seed, rank=0, world_size=1)
    batches = list(Batches(sampler, batch_size, drop_last=False))
    dataset[batches[0]]
    start = time.perf_counter()
    frames = sum(dataset[keys]["mask"].numel() for keys in batches[1:])
    return frames / (time.perf_counter() - start)


def check_share(store: EpisodeStore, win_len: int, windows: int, seed: int) -> tuple[float, float]:
    """(ms per window in read_frames without checks, ms more with them): the same windows read with verification
    on and off in turn, so that a drifting machine affects both alike. Measured around read_frames rather than
    around the check functions, because raw frames are hashed inside the read loop (while still in cache)."""
    spent = {True: 0.0, False: 0.0}
    rng = np.random.default_rng(seed)
    out = np.empty((win_len, RES, RES, 3), np.uint8)
    try:
        for i in range(windows):
            episode = int(rng.integers(len(store)))
            first = int(rng.integers(0, store.lengths[episode] - win_len + 1))
            for verify in (True, False) if i % 2 == 0 else (False, True):
                store._verify_reads = verify
                start = time.perf_counter()
                store.read_frames(episode, first, win_len, out=out)
                spent[verify] += time.perf_counter() - start
    finally:
        store._verify_reads = True
    return spent[False] * 1e3 / windows, (spent[True] - spent[False]) * 1e3 / windows


def checksum_cost(args: argparse.Namespace, tmp: str) -> None:
    """Loader frames/s with the checksum verification on and off, per codec (one store each, runs interleaved)."""
    for codec in args.codecs:
        store = build(Path(tmp) / f"cost-{codec}", codec, args.episodes, args.frames, 1)
        rates: dict[bool, list[float]] = {True: [], False: []}
        reads: dict[bool, list[float]] = {True: [], False: []}
        for seed in range(args.runs):
            for verify in (True, False) if seed % 2 == 0 else (False, True):
                store._verify_reads = verify  # an instance attribute: pickled into the loader worker
                rates[verify].append(measure(store, args.win_len, args.windows, args.batch_size, seed)[0])
                reads[verify].append(measure_reads(store, args.win_len, args.windows, args.batch_size, seed))
        on, off = statistics.median(rates[True]), statistics.median(rates[False])
        on_reads, off_reads = statistics.median(reads[True]), statistics.median(reads[False])
        print(
            f"{codec:4s} loader (1 worker): checksums on {on:9.0f} frames/s, off {off:9.0f} frames/s: cost "
            f"{100 * (1 - on / off):+.1f}% (runs on: {', '.join(f'{r:.0f}' for r in rates[True])}; off: "
            f"{', '.join(f'{r:.0f}' for r in rates[False])})"
        )
        print(
            f"{codec:4s} in-process batches:  checksums on {on_reads:9.0f} frames/s, off {off_reads:9.0f} "
            f"frames/s: cost {100 * (1 - on_reads / off_reads):+.1f}%"
        )
        shares = [check_share(store, args.win_len, args.windows, seed=seed) for seed in range(args.runs)]
        window_ms = statistics.median(ms for ms, _ in shares)
        check_ms = statistics.median(extra for _, extra in shares)
        loader_ms = 1e3 * args.win_len / off  # the loader's time per window without the checks
        print(
            f"{codec:4s} read_frames: {window_ms:.2f} ms per {args.win_len}-frame window without checks, "
            f"{check_ms:+.3f} ms with them ({100 * check_ms / window_ms:+.1f}%; medians of {args.runs} runs of "
            f"{args.windows} windows, on/off interleaved); the loader takes {loader_ms:.2f} ms per window without "
            f"them: the checks add {100 * check_ms / loader_ms:.1f}% to it"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--frames", type=int, default=1200)
    parser.add_argument("--win-len", type=int, default=128)
    parser.add_argument("--windows", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--codecs",
        nargs="+",
        choices=["h264", "raw"],
        default=["h264", "raw"],
        help="the stores' codecs (--checksum-cost)",
    )
    parser.add_argument(
        "--checksum-cost",
        action="store_true",
        help="measure frames/s with the per-chunk checksum verification on vs off instead",
    )
    args = parser.parse_args()
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.checksum_cost:
            checksum_cost(args, tmp)
            return
        for codec in ("h264", "raw"):
            for copies in (1, 10):
                store = build(Path(tmp) / f"{codec}-{copies}", codec, args.episodes, args.frames, copies)
                size = sum(p.stat().st_size for p in (store.root / "shards").iterdir())
                results = [
                    measure(store, args.win_len, args.windows, args.batch_size, seed) for seed in range(args.runs)
                ]
                rates = [r for r, _ in results]
                rss = max(r for _, r in results)
                reads = statistics.median(
                    measure_reads(store, args.win_len, args.windows, args.batch_size, seed) for seed in range(args.runs)
                )
                plain = statistics.median(
                    measure(store, args.win_len, args.windows, args.batch_size, seed, slots=False)[0]
                    for seed in range(args.runs)
                )
                print(
                    f"{codec:4s} store {len(store):4d} episodes, {int(store.lengths.sum()):7d} frames, "
                    f"{size / 2**20:8.1f} MiB ({size / store.lengths.sum() / 1024:.1f} KB/frame): "
                    f"{statistics.median(rates):9.0f} frames/s per worker (runs: "
                    f"{', '.join(f'{r:.0f}' for r in rates)}); peak worker RSS {rss:.0f} MiB; "
                    f"without slots: {plain:.0f} frames/s; same batches built in-process: {reads:.0f} frames/s"
                )


if __name__ == "__main__":
    main()
