"""VPT-1x and VPT-2x training on a CUDA GPU in bf16, eager and compiled: frames/s, model FLOP utilisation, peak
memory and the data loader's headroom. Run through ``benchmarks/gpu.sh``; it installs nothing.

    benchmarks/gpu.sh [--policies vpt_1x vpt_2x] [--steps 30 --warmup 10] [--batch-size 8 --win-len 128]
                      [--compile both|on|off] [--peak-tflops 989] [--workers 8] [hydra overrides ...]
    benchmarks/gpu.sh --dry-run     # the same path on this CPU, tiny shapes: checks the script, not a figure

For each policy and compile mode: ``warmup + steps`` optimizer steps of BC on the synthetic demo store (128x128,
generated on first use), the last ``steps`` timed (data loading included; validation, checkpoints and logging off).

- **frames/s**: training frames per second.
- **MFU**: model FLOPs per frame (forward + backward, counted by torch's FlopCounterMode on the same policy) times
  frames/s, over the device's dense bf16 peak (``--peak-tflops``; default from the device name: H100/H200 989,
  A100 312, L40S 362, A10 125, L4 121).
- **peak memory**: ``torch.cuda.max_memory_allocated`` over the run.
- **loader headroom**: the same DataLoader (same workers, batch size and windows) iterated alone, frames/s, over the
  training frames/s: below 1 the GPU waits for data.
- **compile time**: for the compiled mode, the wall time of the warm-up steps minus the eager run's (the first
  steps pay for ``torch.compile``).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
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

from benchmarks.train_throughput import TRAINING_ALONE, StepTimer, cpu_model, flops_per_frame  # noqa: E402
from minesweep.train import build  # noqa: E402

#: dense bf16 tensor-core peaks (TFLOP/s), SXM parts where there are several, by a substring of the device name
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


class WarmupTimer(L.Callback):
    """Wall time from the first training batch to the end of the warm-up steps (where compilation happens)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.first, self.warm = warmup, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if self.first is None:
            self.first = time.perf_counter()
        if trainer.global_step == self.warmup and self.warm is None:
            self.warm = time.perf_counter()


def device_peak_tflops(given: float | None) -> float | None:
    if given is not None:
        return given
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def compose_run(policy: str, args: argparse.Namespace, overrides: list[str], tmp: str, compiled: bool):
    accelerator = "cpu" if args.dry_run else "gpu"
    with initialize_config_dir(config_dir=str(REPO / "conf")):
        return compose(
            "train",
            overrides=[
                f"policy={policy}",
                "data=synth_demo",
                f"data.root={args.cache}/gpu-bench-store",
                "data.sampling=frames",
                f"data.batch_size={args.batch_size}",
                f"data.win_len={args.win_len}",
                f"data.num_workers={args.workers}",
                f"paths.output_dir={tmp}",
                f"trainer.accelerator={accelerator}",
                "trainer.precision=bf16-mixed",
                f"trainer.max_steps={args.warmup + args.steps}",
                *TRAINING_ALONE,
                f"compile={str(compiled).lower()}",
                f"log_freq={args.warmup + args.steps}",  # no logging inside the timed steps
                *overrides,
            ],
        )


def loader_frames_per_s(datamodule, batches: int) -> float:
    """frames/s of the training DataLoader alone (its workers started and one batch fetched first)."""
    iterator = iter(datamodule.train_dataloader())
    next(iterator)
    start, frames = time.perf_counter(), 0
    for _, batch in zip(range(batches), iterator, strict=False):
        frames += batch["mask"].numel()
    return frames / (time.perf_counter() - start)


def run(policy: str, compiled: bool, args: argparse.Namespace, overrides: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose_run(policy, args, overrides, tmp, compiled)
        L.seed_everything(cfg.seed)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        trainer, module, datamodule = build(cfg)
        timer, warmup = StepTimer(args.warmup), WarmupTimer(args.warmup)
        trainer.callbacks += [timer, warmup]
        trainer.fit(module, datamodule=datamodule)
        seconds = timer.end - timer.start
        result = {
            "frames_per_s": timer.frames / seconds,
            "warmup_s": warmup.warm - warmup.first,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan"),
            "loader_frames_per_s": loader_frames_per_s(datamodule, max(args.steps, 4)),
            "flops_per_frame": flops_per_frame(cfg),
        }
        del trainer, module, datamodule
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", nargs="+", default=["vpt_1x", "vpt_2x"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3, help="runs per policy and mode (median reported)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--win-len", type=int, default=128)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--compile", choices=["both", "on", "off"], default="both")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak")
    parser.add_argument("--cache", default=os.environ.get("MINESWEEP_CACHE", str(Path.home() / ".cache/minesweep")))
    parser.add_argument("--dry-run", action="store_true", help="on this CPU, tiny shapes: tests the script only")
    args, overrides = parser.parse_known_args()
    if args.dry_run:
        args.policies, args.steps, args.warmup, args.runs = ["vpt_tiny"], 2, 1, 1
        args.batch_size, args.win_len, args.workers = 2, 16, 1
        overrides = ["data.demo.episodes=4", "data.demo.frames=64", *overrides]
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run on a GPU machine, or pass --dry-run to check the script on this CPU")

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU {cpu_model()} (dry run)"
    peak = device_peak_tflops(args.peak_tflops)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {device}; {os.cpu_count()} CPU cores; torch {torch.__version__}; python {platform.python_version()}"
    )
    print(f"peak bf16: {f'{peak:.0f} TFLOP/s' if peak else 'unknown (pass --peak-tflops)'}")
    modes = {"both": [False, True], "on": [True], "off": [False]}[args.compile]
    header = "policy    compile  frames/s  MFU     peak mem  loader frames/s  headroom  warm-up s"
    print(header)
    for policy in args.policies:
        warmups: dict[bool, float] = {}
        for compiled in modes:
            results = [run(policy, compiled, args, overrides) for _ in range(args.runs)]
            rate = statistics.median(r["frames_per_s"] for r in results)
            loader = statistics.median(r["loader_frames_per_s"] for r in results)
            warmups[compiled] = statistics.median(r["warmup_s"] for r in results)
            mfu = rate * results[0]["flops_per_frame"] / (peak * 1e12) if peak else float("nan")
            print(
                f"{policy:9s} {'on' if compiled else 'off':7s}  {rate:8.1f}  {100 * mfu:5.1f}%  "
                f"{results[0]['peak_gib']:6.2f} GiB  {loader:15.1f}  {loader / rate:7.2f}x  {warmups[compiled]:8.1f}"
            )
        if len(warmups) == 2:
            print(f"{policy}: compile time ~{warmups[True] - warmups[False]:.1f} s (compiled warm-up minus eager)")
    print(f"overrides: {' '.join(overrides) or '(none)'}; medians of {args.runs} run(s) of {args.steps} steps")


if __name__ == "__main__":
    main()
