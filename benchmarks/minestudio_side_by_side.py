"""Training frames/s of a VPT-shaped policy here and in MineStudio 1.1.6, same shapes, same machine, alternating runs.

    bash benchmarks/minestudio_venv.sh /tmp/ms        # once: a MineStudio environment beside ours
    python benchmarks/minestudio_side_by_side.py --minestudio-python /tmp/ms/bin/python [--configs small medium]
        [--runs 3]

Each run of a config trains ours (``benchmarks/train_throughput.py``: our trainer on the synthetic 128x128 H.264
demo store, episode-continuous batches, two loader workers, data loading included) and then MineStudio's
(``benchmarks/minestudio_loop.py``: its ``MineLightning`` + ``VPTPolicy`` + ``BehaviorCloneCallback`` on batches
held in memory, each step timed without data loading), each in a fresh process, fp32, gradient clipping at 1.0 on
both sides. Prints every run, the medians and their ratio, with the machine and the command.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

#: (hidsize, impala width, recurrence layers, T, B, attention heads, attention memory): issue 18's two configs.
CONFIGS = {
    "small": (256, 1, 2, 32, 2, 4, 64),
    "medium": (512, 2, 4, 128, 2, 4, 256),
}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def frames_per_second(command: list[str], pattern: str) -> float:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    out = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    found = re.search(pattern, out.stdout)
    if out.returncode != 0 or not found:
        tail = out.stdout[-2000:] + out.stderr[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed (exit {out.returncode}):\n{tail}")
    return float(found.group(1))


def our_overrides(config: tuple[int, ...]) -> list[str]:
    hidsize, width, layers, T, B, heads, memory = config
    return [
        "data=synth_demo",
        "policy=vpt_tiny",
        f"policy.hidsize={hidsize}",
        f"policy.impala_width={width}",
        f"policy.n_recurrence_layers={layers}",
        f"policy.timesteps={T}",
        f"policy.attention_heads={heads}",
        f"policy.attention_memory_size={memory}",
        f"data.batch_size={B}",
        f"data.win_len={T}",
        "data.episode_continuous_batch=true",
    ]


def minestudio_args(config: tuple[int, ...]) -> list[str]:
    hidsize, width, layers, T, B, heads, memory = config
    return [
        *("--hidsize", str(hidsize), "--impala-width", str(width), "--layers", str(layers)),
        *("--timesteps", str(T), "--batch-size", str(B), "--heads", str(heads), "--memory", str(memory)),
    ]


def ours(config: tuple[int, ...], warmup: int, steps: int) -> float:
    command = [sys.executable, "benchmarks/train_throughput.py", "--runs", "1", "--warmup", str(warmup)]
    command += ["--steps", str(steps), *our_overrides(config)]
    return frames_per_second(command, r"median training throughput: ([\d.]+) frames/s")


def minestudio(python: str, config: tuple[int, ...], warmup: int, steps: int) -> float:
    command = [python, "benchmarks/minestudio_loop.py", *minestudio_args(config)]
    command += ["--warmup", str(warmup), "--steps", str(steps)]
    return frames_per_second(command, r"minestudio: ([\d.]+) frames/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minestudio-python", required=True, help="the Python of a MineStudio 1.1.6 environment")
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=["small", "medium"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default: 5 small, 2 medium)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 30 small, 8 medium)")
    args = parser.parse_args()

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); python {platform.python_version()}"
    )
    summary = []
    for name in args.configs:
        config = CONFIGS[name]
        warmup = args.warmup if args.warmup is not None else (5 if name == "small" else 2)
        steps = args.steps if args.steps is not None else (30 if name == "small" else 8)
        print(f"{name}: hidsize, impala width, layers, T, B, heads, memory = {config}; {warmup} + {steps} steps")
        mine, theirs = [], []
        for run in range(args.runs):
            mine.append(ours(config, warmup, steps))
            theirs.append(minestudio(args.minestudio_python, config, warmup, steps))
            print(f"  run {run}: minesweep {mine[-1]:.1f} frames/s, MineStudio {theirs[-1]:.1f} frames/s", flush=True)
        a, b = statistics.median(mine), statistics.median(theirs)
        summary.append(f"{name}: minesweep {a:.1f}, MineStudio {b:.1f} frames/s (medians of {args.runs}): {a / b:.2f}x")
    print("\n".join(summary))


if __name__ == "__main__":
    main()
