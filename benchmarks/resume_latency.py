"""How long a run takes from launch to its first trained step, fresh and resumed with ``ckpt_path=last``.

    python benchmarks/resume_latency.py [--runs 3] [--steps 20] [OVERRIDES...]

Each run is ``python train.py OVERRIDES`` in a new process (imports, data setup, loader workers, checkpoint
restore: what a requeued SLURM job pays), in a fresh output folder: a fresh run of ``--steps`` steps, then the same
command with twice the steps and ``ckpt_path=last``. The time is from the launch to the end of the first trained
batch. The demo data is made first (untimed) if the cache lacks it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from train_throughput import cpu_model  # noqa: E402

# Runs train.py's own entry point with one callback that prints when the first batch has been trained.
CHILD = """
import sys, time
import lightning as L
import minesweep.train as t

class FirstStep(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if not getattr(self, "seen", False):
            self.seen = True
            print(f"FIRST_STEP {time.time()!r} {trainer.global_step}", flush=True)

build = t.build
def build_with_marker(cfg):
    trainer, module, data = build(cfg)
    trainer.callbacks.append(FirstStep())
    return trainer, module, data

t.build = build_with_marker
sys.argv = ["train.py", *sys.argv[1:]]
t.main()
"""


def first_step_seconds(overrides: list[str]) -> tuple[float, int]:
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *overrides],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    if proc.returncode != 0:
        raise SystemExit(f"run failed: {' '.join(overrides)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    for line in proc.stdout.splitlines():
        if line.startswith("FIRST_STEP "):
            _, at, step = line.split()
            return float(at) - started, int(step)
    raise SystemExit(f"no step trained: {' '.join(overrides)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args, overrides = parser.parse_known_args()
    base = [
        *overrides,
        "~logger",
        "callbacks.lr_monitor=null",
        "callbacks.progress_bar=null",
        "callbacks.final_eval=null",
    ]
    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads); python {platform.python_version()}"
    )
    print(f"command: python benchmarks/resume_latency.py {' '.join(sys.argv[1:])}")
    with tempfile.TemporaryDirectory() as tmp:
        first_step_seconds([*base, f"paths.output_root={tmp}/warmup", "trainer.max_steps=1"])  # makes the demo data
        fresh, resumed = [], []
        for run in range(args.runs):
            root = f"paths.output_root={tmp}/run{run}"
            seconds, _ = first_step_seconds([*base, root, f"trainer.max_steps={args.steps}"])
            fresh.append(seconds)
            seconds, step = first_step_seconds([*base, root, f"trainer.max_steps={2 * args.steps}", "ckpt_path=last"])
            assert step == args.steps + 1, f"the resumed run's first step was {step}, not {args.steps + 1}"
            resumed.append(seconds)
            print(f"run {run}: fresh {fresh[-1]:.1f} s, resumed {resumed[-1]:.1f} s to the first step")
    print(
        f"median of {args.runs}: launch to first trained step: fresh {statistics.median(fresh):.1f} s, "
        f"resumed (ckpt_path=last) {statistics.median(resumed):.1f} s"
    )


if __name__ == "__main__":
    main()
