"""What a newcomer sees: the README's first command (``python train.py``) on an empty cache, then ``minesweep-eval``.

    python benchmarks/first_run.py [--runs 3] [--out outputs/first_run] [hydra overrides of conf/train.yaml]

Each run uses a fresh cache folder (``MINESWEEP_CACHE``), so it records the demo games, ingests them and trains,
exactly as the first ``python train.py`` on a new machine does; then ``minesweep-eval`` plays the 30 held-out
worlds. Prints the machine, the command, each run's wall times (train.py including the recording, the eval) and
figures (the policy's return against the random player's, collect_wood), and their medians, against the
targets of the first run (train.py within 5 minutes, return >= 3x random, collect_wood >= 0.8).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_throughput import cpu_model  # noqa: E402

TARGETS = {"train_s": 300.0, "return_vs_random": 3.0, "collect_wood": 0.8}


def one_run(out: Path, overrides: list[str], eval_episodes: int = 30) -> dict[str, float]:
    cache, runs = out / "cache", out / "outputs"
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, MINESWEEP_CACHE=str(cache), WANDB_MODE=os.environ.get("WANDB_MODE", "offline"))
    t = time.perf_counter()
    subprocess.run([sys.executable, "train.py", f"paths.output_root={runs}", *overrides], cwd=REPO, env=env, check=True)
    train_s = time.perf_counter() - t
    # runs/default without overrides; with them, the folder Hydra names after them
    (checkpoint,) = (runs / "demo" / "runs").glob("*/checkpoints/last.ckpt")
    t = time.perf_counter()
    subprocess.run(
        # what minesweep-eval runs; the path quoted: a run folder named after overrides holds '=' and ','
        [
            sys.executable,
            "-m",
            "minesweep.eval_cli",
            f"eval.checkpoint='{checkpoint}'",
            f"eval.episodes={eval_episodes}",
        ],
        cwd=REPO,
        env=env,
        check=True,
    )
    eval_s = time.perf_counter() - t
    report = json.loads((checkpoint.parent.parent / "eval" / "results.json").read_text())
    policy, random = report["players"]["policy"], report["players"]["random"]
    return {
        "train_s": train_s,
        "eval_s": eval_s,
        "return": policy["mean_return"],
        "random": random["mean_return"],
        "return_vs_random": report["return_vs_random"],
        "collect_wood": policy["success_rates"]["collect_wood"],
        "place_table": policy["success_rates"]["place_table"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="outputs/first_run")
    parser.add_argument("--eval-episodes", type=int, default=30, help="worlds minesweep-eval plays (its default: 30)")
    args, overrides = parser.parse_known_args()
    import torch

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); python {platform.python_version()}; load average before: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    results = []
    for i in range(args.runs):
        results.append(one_run(Path(args.out).resolve() / f"run{i}", overrides, args.eval_episodes))
        r = results[-1]
        print(
            f"run {i}: train.py {r['train_s']:.0f} s (recording included), eval {r['eval_s']:.0f} s; return "
            f"{r['return']:.2f} vs random {r['random']:.2f} = {r['return_vs_random']:.2f}x, collect_wood "
            f"{r['collect_wood']:.2f}, place_table {r['place_table']:.2f}",
            flush=True,
        )
    ok = True
    print(f"medians of {len(results)} runs:")
    for key in ("train_s", "eval_s", "return_vs_random", "collect_wood", "place_table"):
        value = statistics.median(r[key] for r in results)
        target = TARGETS.get(key)
        if target is None:
            print(f"  {key:17s} {value:7.2f}")
            continue
        passed = all((r[key] <= target) if key == "train_s" else (r[key] >= target) for r in results)
        ok &= passed
        print(
            f"  {key:17s} {value:7.2f}  target {'<=' if key == 'train_s' else '>='} {target:g} in every run: "
            f"{'PASS' if passed else 'MISS'}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
