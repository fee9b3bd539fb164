"""Ingest throughput from 640x360 contractor recordings (decode, GUI cursor, resize to 128x128, H.264 encode).

    python benchmarks/ingest_throughput.py [--episodes 6 --frames 400 --runs 3 --workers 1 2]

Writes synthetic 640x360 20 fps recordings (.mp4 + .jsonl, a third of the steps with a GUI open so the cursor is
drawn), then ingests them into a fresh store with each worker count; prints frames/s in all and per worker
(medians of ``--runs``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minesweep.data.ingest.contractor import ingest  # noqa: E402
from minesweep.data.recordings.synth import generate_recordings  # noqa: E402


def cpu_model() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def open_gui_sometimes(jsonl: Path) -> None:
    steps = [json.loads(line) for line in jsonl.read_text().splitlines()]
    for t, step in enumerate(steps):
        if t % 3 == 0:
            step["isGuiOpen"] = True
            step["mouse"]["x"], step["mouse"]["y"] = 200.0 + t % 600, 100.0 + t % 400
    jsonl.write_text("".join(json.dumps(step) + "\n" for step in steps))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__}; python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        generate_recordings(raw, episodes=args.episodes, frames=args.frames, seed=0, width=640, height=360)
        for jsonl in raw.glob("*.jsonl"):
            open_gui_sometimes(jsonl)
        total = args.episodes * args.frames
        for workers in args.workers:
            rates = []
            for run in range(args.runs):
                dst = Path(tmp) / f"store-{workers}-{run}"
                start = time.perf_counter()
                report = ingest(raw, dst, resolution=(128, 128), workers=workers, progress=False, print_summary=False)
                seconds = time.perf_counter() - start
                assert len(report.ingested) == args.episodes and not report.skipped, report.skipped
                rates.append(total / seconds)
            median = statistics.median(rates)
            print(
                f"{workers} worker(s): {median:.0f} frames/s in all, {median / workers:.0f} frames/s per worker "
                f"({args.episodes} episodes x {args.frames} frames of 640x360; runs: "
                f"{', '.join(f'{r:.0f}' for r in rates)})"
            )


if __name__ == "__main__":
    main()
