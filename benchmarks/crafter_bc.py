"""Behaviour cloning on Crafter, end to end: record the scripted player, train the default policy, let it play.

    python benchmarks/crafter_bc.py [--episodes 200 --length 500 --steps 1500 --max-minutes 15 --eval-episodes 30
                                     --workers 2 --out outputs/crafter_bc] [hydra overrides of conf/train.yaml]

1. ``minesweep-data crafter``: ``--episodes`` scripted episodes on worlds 0.. (reused when ``OUT/raw`` already holds
   the same recording); 2. ``minesweep-data ingest`` into ``OUT/store`` (128x128); 3. training with the default
   config (``policy=tiny``, ``objective=[bc]``) for ``--steps`` optimizer steps, stopped earlier if it exceeds
   ``--max-minutes``; 4. ``minesweep-eval`` on ``--eval-episodes`` unseen worlds (1000000..) for the policy, a random
   and the scripted player. Prints the machine, the command, timings and the figures against the targets
   (mean return >= 3x random, collect_wood >= 0.8, place_table >= 0.6); writes ``OUT/run/eval/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_throughput import cpu_model  # noqa: E402
from minesweep.data.ingest import ingest  # noqa: E402
from minesweep.envs.crafter_record import SUMMARY, record_crafter  # noqa: E402
from minesweep.eval import compose_config, evaluate_checkpoint, print_report  # noqa: E402
from minesweep.train import train  # noqa: E402

TARGETS = {"return_vs_random": 3.0, "collect_wood": 0.8, "place_table": 0.6}


def recording_matches(raw: Path, episodes: int, length: int, seed: int) -> bool:
    summary = raw / SUMMARY
    if not summary.is_file():
        return False
    s = json.loads(summary.read_text())
    return (s.get("episodes"), s.get("length"), s.get("first_seed")) == (episodes, length, seed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0, help="first recorded world")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    parser.add_argument("--max-minutes", type=float, default=15.0, help="training time cap")
    parser.add_argument("--eval-episodes", type=int, default=30)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", default="outputs/crafter_bc")
    args, overrides = parser.parse_known_args()

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); python {platform.python_version()}")
    out = Path(args.out).resolve()
    raw, store, run = out / "raw", out / "store", out / "run"
    timings = {}

    t = time.perf_counter()
    if recording_matches(raw, args.episodes, args.length, args.seed):
        print(f"reusing the recordings in {raw}")
    else:
        record_crafter(raw, args.episodes, first_seed=args.seed, length=args.length, workers=args.workers)
    summary = json.loads((raw / SUMMARY).read_text())
    frames = sum(r["length"] for r in summary["results"])
    timings["record"] = time.perf_counter() - t
    print(f"recordings: {args.episodes} episodes, {frames} frames, scripted mean return {summary['mean_return']:.2f}")

    t = time.perf_counter()
    if not (store / "manifest.json").is_file():
        report = ingest(raw, store, print_summary=False)
        if report.skipped:
            raise RuntimeError(f"ingest skipped episodes: {report.skipped}")
    timings["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    train_overrides = [
        f"data.root={store}", "data.demo=null", f"paths.output_dir={run}", "logger=csv",
        f"trainer.max_steps={args.steps}", f"+trainer.max_time={{minutes: {args.max_minutes}}}",
        "callbacks.progress_bar=null", *overrides,
    ]
    cfg = compose_config(train_overrides)
    metrics = train(cfg)
    timings["train"] = time.perf_counter() - t
    steps = int(metrics["global_step"])

    t = time.perf_counter()
    cfg = compose_config([*overrides, f"eval.checkpoint={run / 'checkpoints' / 'last.ckpt'}",
                          f"eval.episodes={args.eval_episodes}", f"eval.output_dir={run / 'eval'}"])
    report = evaluate_checkpoint(cfg)
    timings["eval"] = time.perf_counter() - t
    print_report(report)

    policy, random = report["players"]["policy"], report["players"]["random"]
    ratio = report["return_vs_random"] or float("nan")
    figures = {
        "return_vs_random": ratio,
        "collect_wood": policy["success_rates"]["collect_wood"],
        "place_table": policy["success_rates"]["place_table"],
    }
    print(f"\ntraining: {steps} steps of batch {cfg.data.batch_size} x {cfg.data.win_len} frames "
          f"({steps * cfg.data.batch_size * cfg.data.win_len / frames:.2f} epochs), final val/loss "
          f"{metrics.get('val/loss', float('nan')):.3f}, val/bc/loss_per_frame "
          f"{metrics.get('val/bc/loss_per_frame', float('nan')):.3f}")
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    print(f"policy return {policy['mean_return']:.2f} ± {policy['stderr_return']:.2f}, random "
          f"{random['mean_return']:.2f} ± {random['stderr_return']:.2f}, scripted "
          f"{report['players'].get('scripted', {}).get('mean_return', float('nan')):.2f}")
    ok = True
    for key, target in TARGETS.items():
        passed = figures[key] >= target
        ok &= passed
        print(f"  {key:17s} {figures[key]:6.2f}  target >= {target:.1f}  {'PASS' if passed else 'MISS'}")
    (out / "benchmark.json").write_text(json.dumps({"command": sys.argv, "figures": figures, "timings": timings,
                                                    "steps": steps, "frames": frames}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
