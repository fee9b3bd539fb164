"""Training throughput (frames/s) and peak memory of a policy config on the demo data.

    python benchmarks/train_throughput.py policy=tiny [--runs 3 --warmup 5 --steps 30] [--flops] [hydra overrides]

Each run trains ``warmup + steps`` optimizer steps and times the last ``steps`` (data loading
included, validation and checkpointing off). Prints the machine, the command, every run, and
the median. ``--flops`` also counts the policy's FLOPs per frame (forward + backward, torch's
FlopCounterMode), measures this CPU's convolution ceiling (a 3x3 conv layer of the VPT-1x
shape, forward + backward, in the run's dtype) and prints the fraction of it reached, and of a nominal
ceiling (``--nominal-gflops-per-core``, float32, per core; twice that in bf16), the figure VPT's
throughput target was stated against. ``--overhead`` also times the same steps without Lightning: the policy, the
objectives, backward and AdamW on batches already in memory (no loop, logging, clipping, loader hand-off), and
prints the share of a step that the rest takes: the fixed per-step cost.
"""

from __future__ import annotations

import argparse
import gc
import itertools
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

#: Overrides for timing training alone: no logger, validation, checkpoints, progress bar or evaluation.
TRAINING_ALONE = [
    "~logger",
    "trainer.limit_val_batches=0",
    "+trainer.enable_checkpointing=false",
    "+trainer.enable_progress_bar=false",
    "callbacks.checkpoint=null",
    "callbacks.progress_bar=null",
    "callbacks.lr_monitor=null",
    "callbacks.final_eval=null",
]


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


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux: VmHWM), so each run reports its own peak; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_peak_rss_mib() -> float | None:
    """This process's peak RSS since the last ``reset_peak_rss`` (MiB), or None off Linux."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def peak_rss_mib() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def flops_per_frame(cfg) -> float:
    """Forward + backward FLOPs of one training frame of ``cfg.policy`` under the BC objective."""
    from torch.utils.flop_counter import FlopCounterMode

    from minesweep.objectives.bc import BehaviorCloneCallback
    from minesweep.train import build_policy
    from tests.helpers import random_batch

    policy = build_policy(cfg.policy)
    h, w = getattr(policy, "img_shape", (128, 128, 3))[:2]
    B, T = 1, 4
    batch = random_batch(B, T, size=h, seed=0) if h == w else None
    if batch is None:
        raise ValueError(f"--flops needs a square image shape, the policy has {h}x{w}")
    counter = FlopCounterMode(display=False)
    with counter:
        latents, _ = policy(batch, policy.initial_state(B))
        BehaviorCloneCallback()(batch, 0, "train", latents, policy)["loss"].backward()
    return counter.get_total_flops() / (B * T)


def conv_ceiling_gflops(dtype: torch.dtype, repeats: int = 5) -> float:
    """GFLOP/s of a 3x3, 128->128 channel conv on 32 frames of 32x32 (VPT-1x's third stack), fwd + bwd."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False)
    x = torch.randn(32, 128, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
    flop = 3 * 2 * 32 * 128 * 128 * 9 * 32 * 32  # forward, grad input, grad weight

    def once() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            conv(x).sum().backward()

    once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return flop / statistics.median(times) / 1e9


def first_batches(loader, count: int) -> list:
    """The loader's first ``count`` batches, over as many epochs as that takes (the demo's epoch is 57 batches: a
    longer run must not time fewer steps than it divides by)."""
    batches: list = []
    while len(batches) < count:
        before = len(batches)
        batches.extend(itertools.islice(iter(loader), count - len(batches)))
        if len(batches) == before:
            raise ValueError("the training loader yields no batches")
    return batches


def bare_steps(cfg, warmup: int, steps: int) -> tuple[float, float]:
    """Seconds per step of the run's own computation alone: the policy (its memory carried as in training), the
    objectives, backward and the optimizer step, on ``warmup + steps`` batches read into memory first; and the
    seconds per step that gradient clipping (``trainer.gradient_clip_val``) adds to it, timed on its own."""
    _, module, datamodule = build(cfg)
    datamodule.setup("fit")
    module.episode_continuous_batch = datamodule.episode_continuous_batch  # what setup() does under a Trainer
    loader = datamodule.train_dataloader()
    batches = first_batches(loader, warmup + steps)
    del loader  # its worker processes end here, before the timing
    gc.collect()
    policy = module.mine_policy
    optimizer = module.configure_optimizers()["optimizer"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    clip_seconds = 0.0
    for i, batch in enumerate(batches):
        if i == warmup:
            start, clip_seconds = time.perf_counter(), 0.0
        latents, state_out = policy(batch, state_in=module.state_in(batch, "train"))
        module.remember(batch, state_out, "train")
        results = [objective(batch, i, "train", latents, policy) for objective in module.objectives.values()]
        loss = sum(result["loss"] for result in results if "loss" in result)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.trainer.gradient_clip_val:
            t = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, cfg.trainer.gradient_clip_val)
            clip_seconds += time.perf_counter() - t
        optimizer.step()
    timed = len(batches) - warmup
    total = (time.perf_counter() - start) / timed
    clip = clip_seconds / timed
    return total - clip, clip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--flops", action="store_true", help="print FLOP/frame and the fraction of the conv ceiling")
    parser.add_argument("--overhead", action="store_true", help="print the fixed per-step cost around the computation")
    parser.add_argument(
        "--nominal-gflops-per-core",
        type=float,
        default=150.0,
        help="float32 conv GFLOP/s per core of the nominal ceiling (bf16: twice that)",
    )
    args, overrides = parser.parse_known_args()

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); python {platform.python_version()}"
    )
    rates, valid_rates, run_peaks, step_seconds, bare = [], [], [], [], []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=str(REPO / "conf")):
            cfg = compose(
                "train",
                overrides=[
                    f"paths.output_dir={tmp}",
                    f"trainer.max_steps={args.warmup + args.steps}",
                    *TRAINING_ALONE,
                    *overrides,
                ],
            )
            L.seed_everything(cfg.seed + run)
            resettable = reset_peak_rss()
            trainer, module, datamodule = build(cfg)
            timer = StepTimer(args.warmup)
            trainer.callbacks.append(timer)
            trainer.fit(module, datamodule=datamodule)
            seconds = timer.end - timer.start
            step_seconds.append(seconds / args.steps)
            rates.append(timer.frames / seconds)
            valid_rates.append(timer.valid_frames / seconds)
            peak = run_peak_rss_mib() if resettable else None
            if peak is not None:
                run_peaks.append(peak)
            print(
                f"run {run}: {timer.frames} frames in {seconds:.2f}s = {rates[-1]:.1f} frames/s "
                f"({valid_rates[-1]:.1f} valid frames/s)" + (f", peak RSS {peak:.0f} MiB" if peak is not None else "")
            )
            # Free this run's model and optimizer before the next is built, or both would count in its peak.
            del trainer, module, datamodule, timer
            gc.collect()
            if args.overhead:  # interleaved with the trainer's runs, so that both see the same machine
                L.seed_everything(cfg.seed + run)
                bare.append(bare_steps(cfg, args.warmup, args.steps))
                print(
                    f"run {run}, bare: {1000 * sum(bare[-1]):.1f} ms a step, of which clipping {1000 * bare[-1][1]:.2f}"
                )
                gc.collect()
    own, children = peak_rss_mib()
    print(f"overrides: {' '.join(overrides) or '(none)'}")
    print(f"median training throughput: {statistics.median(rates):.1f} frames/s over {args.runs} runs")
    if run_peaks:  # later runs in the same process would otherwise report the earlier runs' leftovers
        own = statistics.median(run_peaks)
    print(
        f"peak RSS: {own:.0f} MiB (this process{', median of the runs' if run_peaks else ''}), "
        f"{children:.0f} MiB (largest data-loader worker)"
    )
    if args.overhead:
        computation = statistics.median(b[0] for b in bare)
        clip = statistics.median(b[1] for b in bare)
        step = statistics.median(step_seconds)
        print(
            f"fixed per-step cost: a step takes {1000 * step:.1f} ms in the trainer (loader included), "
            f"{1000 * computation:.1f} ms bare (policy, objectives, backward, optimizer on batches in memory; "
            f"medians of {args.runs}): {100 * (step - computation) / step:.1f}% of a step is the rest "
            f"(of which gradient clipping, timed alone: {1000 * clip:.2f} ms = {100 * clip / step:.1f}%)"
        )
    if args.flops:
        gflop = flops_per_frame(cfg) / 1e9
        dtype = torch.bfloat16 if "bf16" in str(cfg.trainer.precision) else torch.float32
        ceiling = conv_ceiling_gflops(dtype)
        achieved = gflop * statistics.median(rates)
        print(
            f"FLOPs: {gflop:.2f} GFLOP/frame (forward + backward) -> {achieved:.0f} GFLOP/s; "
            f"measured {dtype} conv ceiling {ceiling:.0f} GFLOP/s: {100 * achieved / ceiling:.0f}% of it "
            f"({ceiling / achieved:.2f}x from the ceiling)"
        )
        nominal = args.nominal_gflops_per_core * os.cpu_count() * (2 if dtype == torch.bfloat16 else 1)
        print(
            f"nominal ceiling {nominal:.0f} GFLOP/s ({args.nominal_gflops_per_core:g} per core in float32, twice "
            f"that in bf16, {os.cpu_count()} cores): {100 * achieved / nominal:.0f}% of it "
            f"({nominal / achieved:.2f}x from it)"
        )


if __name__ == "__main__":
    main()
