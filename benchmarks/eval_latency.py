"""How long ``minesweep-eval`` takes, from the command to its report, with an empty and a warm baseline cache.

    python benchmarks/eval_latency.py [--checkpoint RUN/checkpoints/last.ckpt] [--runs 2] [overrides of minesweep-eval]

Without ``--checkpoint``, a short ``python train.py trainer.max_steps=20`` run on the demo data makes one (the demo
is recorded into the cache on first use). Each run is a fresh ``minesweep-eval`` process (start-up included): first
with an empty baseline cache (``paths.cache_dir`` in a temporary folder: what a newcomer's first eval does; the
default worlds' baselines then come from the episodes shipped with the package, minesweep/eval_baselines.json, and
other worlds', e.g. ``eval.first_seed=2000000``, are played), then ``--runs`` times with it warm. Prints the wall
time, the CPU time of the process and its workers, and the load average before and after each run: other jobs on
the machine lengthen the wall time, not the CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_throughput import cpu_model  # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of a command (CPU: it and the workers it waited for)."""
    cpu, start = children_cpu(), time.perf_counter()
    result = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return wall, children_cpu() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a last.ckpt to evaluate (default: train one for 20 steps)")
    parser.add_argument("--runs", type=int, default=2, help="runs with the cache warm")
    args, overrides = parser.parse_known_args()
    env = {**os.environ, "WANDB_MODE": "disabled"}
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {cpu_model()}; {os.cpu_count()} cores; python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            run = Path(tmp) / "run"
            timed(
                [
                    sys.executable,
                    "train.py",
                    "trainer.max_steps=20",
                    "logger=csv",
                    "callbacks.progress_bar=null",
                    "callbacks.final_eval=null",
                    f"hydra.run.dir={run}",
                ],
                env,
            )
            checkpoint = str(run / "checkpoints" / "last.ckpt")
        out = Path(tmp) / "eval"
        command = [
            sys.executable,
            "-m",
            "minesweep.eval",
            f"eval.checkpoint={checkpoint}",
            "eval.progress=false",
            f"eval.output_dir={out}",
            f"paths.cache_dir={Path(tmp) / 'cache'}",
            *overrides,
        ]
        print(f"eval: {' '.join(command[1:])}")
        for run in range(1 + args.runs):
            before = load()
            wall, cpu = timed(command, env)
            report = json.loads((out / "results.json").read_text())
            cached = all(report["players"][name].get("from_cache") for name in report["players"] if name != "policy")
            length = report["players"]["policy"]["mean_length"]
            print(
                f"{'empty cache' if run == 0 else 'warm cache'} (baselines {'read' if cached else 'played'}): "
                f"{wall:.1f} s wall, {cpu:.1f} s CPU; "
                f"{report['worlds']['episodes']} worlds, {report['play']['workers']} processes, play "
                f"{report['play']['seconds']:.1f} s; policy mean length {length:.0f}; "
                f"load average before {before}, after {load()}"
            )


if __name__ == "__main__":
    main()
