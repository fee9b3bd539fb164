"""Behaviour cloning on Crafter, end to end: record the scripted player, train the default policy, let it play.

    python benchmarks/crafter_bc.py [--episodes 200 --length 500 --steps 100000 --max-minutes 15 --eval-episodes 30
                                     --workers 2 --out outputs/crafter_bc] [hydra overrides of conf/train.yaml]

1. ``minesweep-data crafter``: ``--episodes`` scripted episodes on worlds 0.. (reused when ``OUT/raw`` already holds
   the same recording); 2. ``minesweep-data ingest`` into ``OUT/store`` (128x128); 3. training with the default
   config (``policy=tiny``, ``objective=[bc]``) with episode-continuous batches (the GRU memory is carried across
   windows, as it is when the policy plays) for ``--steps`` optimizer steps or ``--max-minutes``, whichever comes
   first (by default the time cap: about 6,500 steps on two free cores); 4. ``minesweep-eval`` on
   ``--eval-episodes`` unseen worlds (1000000..) for the policy, a random
   and the scripted player. Prints the machine, the command, timings and the figures against the targets
   (mean return >= 3x random, collect_wood >= 0.8, place_table >= 0.6); writes ``OUT/run/eval/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_throughput import cpu_model  # noqa: E402
from minesweep.data.ingest.contractor import ingest  # noqa: E402
from minesweep.envs.crafter_record import SUMMARY, record_crafter  # noqa: E402
from minesweep.eval import compose_config, evaluate_checkpoint, print_report  # noqa: E402
from minesweep.train import train  # noqa: E402


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (data-loader workers): a measure of the work done that,
    unlike wall time, does not grow when other jobs share the machine."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


TARGETS = {"return_vs_random": 3.0, "collect_wood": 0.8, "place_table": 0.6}


def max_time(minutes: float) -> str:
    """Lightning's ``max_time`` as ``DD:HH:MM:SS``."""
    seconds = int(round(minutes * 60))
    return f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


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
    parser.add_argument("--steps", type=int, default=100_000, help="optimizer step cap (the time cap usually ends it)")
    parser.add_argument("--max-minutes", type=float, default=15.0, help="training time cap")
    parser.add_argument("--eval-episodes", type=int, default=30)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", default="outputs/crafter_bc")
    parser.add_argument(
        "--reuse-run",
        action="store_true",
        help="evaluate OUT/run/checkpoints/last.ckpt of an earlier run instead of training again",
    )
    args, overrides = parser.parse_known_args()

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); python {platform.python_version()}"
    )
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

    t, cpu = time.perf_counter(), cpu_seconds()
    train_overrides = [
        f"data.root={store}",
        "data.demo=null",
        f"paths.output_dir={run}",
        "logger=csv",
        f"trainer.max_steps={args.steps}",
        f"+trainer.max_time={max_time(args.max_minutes)}",
        "callbacks.progress_bar=null",
        "data.episode_continuous_batch=true",
        "trainer.val_check_interval=1000",
        *overrides,
    ]
    cfg = compose_config(train_overrides, config="train")
    last = run / "checkpoints" / "last.ckpt"
    if args.reuse_run and last.is_file():
        # wall time from the run's files: config.yaml is written at the start, last.ckpt at the end
        metrics = {"global_step": float(torch.load(last, map_location="cpu", weights_only=True)["global_step"])}
        timings["train"] = last.stat().st_mtime - (run / "config.yaml").stat().st_mtime
        print(f"reusing the training run in {run} (step {int(metrics['global_step'])}); CPU time not measured")
    else:
        metrics = train(cfg)
        timings["train"] = time.perf_counter() - t
        timings["train_cpu"] = cpu_seconds() - cpu
    steps = int(metrics["global_step"])

    t = time.perf_counter()
    eval_cfg = compose_config(
        [
            *(o for o in overrides if o.lstrip("+~").startswith(("eval.", "paths."))),  # minesweep-eval's config
            f"eval.checkpoint={run / 'checkpoints' / 'last.ckpt'}",
            f"eval.episodes={args.eval_episodes}",
            f"eval.output_dir={run / 'eval'}",
        ]
    )  # plays at the frame size recorded and ingested above (stored in the checkpoint)
    report = evaluate_checkpoint(eval_cfg)
    timings["eval"] = time.perf_counter() - t
    print_report(report)

    policy, random = report["players"]["policy"], report["players"]["random"]
    ratio = report["return_vs_random"] or float("nan")
    figures = {
        "return_vs_random": ratio,
        "collect_wood": policy["success_rates"]["collect_wood"],
        "place_table": policy["success_rates"]["place_table"],
    }
    print(
        f"\ntraining: {steps} steps of batch {cfg.data.batch_size} x {cfg.data.win_len} frames "
        f"({steps * cfg.data.batch_size * cfg.data.win_len / frames:.2f} epochs), final val/loss "
        f"{metrics.get('val/loss', float('nan')):.3f}, val/bc/loss_per_frame "
        f"{metrics.get('val/bc/loss_per_frame', float('nan')):.3f}"
    )
    print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
    if "train_cpu" in timings:
        print(
            f"training used {timings['train_cpu'] / 60:.1f} CPU-minutes ({timings['train_cpu'] / 60 / 2:.1f} min "
            f"on 2 cores without other jobs, at best)"
        )
    print(
        f"policy return {policy['mean_return']:.2f} ± {policy['stderr_return']:.2f}, random "
        f"{random['mean_return']:.2f} ± {random['stderr_return']:.2f}, scripted "
        f"{report['players'].get('scripted', {}).get('mean_return', float('nan')):.2f}"
    )
    ok = True
    for key, target in TARGETS.items():
        passed = figures[key] >= target
        ok &= passed
        print(f"  {key:17s} {figures[key]:6.2f}  target >= {target:.1f}  {'PASS' if passed else 'MISS'}")
    (out / "benchmark.json").write_text(
        json.dumps(
            {"command": sys.argv, "figures": figures, "timings": timings, "steps": steps, "frames": frames}, indent=1
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
