"""Training throughput (frames/s) and peak memory of a policy config on the demo data.

    python benchmarks/train_throughput.py policy=tiny [--runs 3 --warmup 5 --steps 30] [hydra overrides]

Each run trains ``warmup + steps`` optimizer steps and times the last ``steps`` (data loading
included, validation and checkpointing off). Prints the machine, the command, every run, and
the median.
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

import lightning as L
import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from minesweep.train import build  # noqa: E402


class StepTimer(L.Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start: float | None = None
        self.end: float | None = None
        self.frames = 0
        self.valid_frames = 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        if self.start is not None:
            self.frames += batch["mask"].numel()
            self.valid_frames += float(batch["mask"].sum())
            self.end = time.perf_counter()


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_rss_mib() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    args, overrides = parser.parse_known_args()

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); python {platform.python_version()}"
    )
    rates, valid_rates = [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(REPO / "conf")):
            cfg = compose(
                "train",
                overrides=[
                    "~logger",
                    f"paths.output_dir={tmp}",
                    f"trainer.max_steps={args.warmup + args.steps}",
                    "trainer.limit_val_batches=0",
                    "+trainer.enable_checkpointing=false",
                    "+trainer.enable_progress_bar=false",
                    "callbacks=null",
                    *overrides,
                ],
            )
            L.seed_everything(cfg.seed + run)
            trainer, module, datamodule = build(cfg)
            timer = StepTimer(args.warmup)
            trainer.callbacks.append(timer)
            trainer.fit(module, datamodule=datamodule)
            seconds = timer.end - timer.start
            rates.append(timer.frames / seconds)
            valid_rates.append(timer.valid_frames / seconds)
            print(
                f"run {run}: {timer.frames} frames in {seconds:.2f}s = {rates[-1]:.1f} frames/s "
                f"({valid_rates[-1]:.1f} valid frames/s)"
            )
    own, children = peak_rss_mib()
    print(f"overrides: {' '.join(overrides) or '(none)'}")
    print(f"median training throughput: {statistics.median(rates):.1f} frames/s over {args.runs} runs")
    print(f"peak RSS: {own:.0f} MiB (this process), {children:.0f} MiB (largest data-loader worker)")


if __name__ == "__main__":
    main()
