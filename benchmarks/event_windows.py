"""Does oversampling rare moments help? BC on the Crafter demo with and without event-centred windows.

    python benchmarks/event_windows.py [--seeds 0 1 2] [--arms frames events] [--share 0.25] [--balance names]
                                       [--events place_table make_wood_pickaxe] [--out outputs/event_windows]
                                       [hydra overrides of conf/train.yaml, applied to every arm]

Every arm trains the default experiment (``python train.py``: the Crafter demo, ``policy=tiny``, the same steps,
batch and window) on random windows, so that the arms differ only in which windows are drawn:

* ``frames``: ``data.sampling=frames`` (every window start equally likely);
* ``events``: ``data.sampling=events`` with ``data.events=EVENTS``, ``data.event_share=SHARE`` and
  ``data.event_balance=BALANCE``: that share of the windows ends at one of the events (the crafting step is the
  window's last frame), the rest as ``frames``;
* ``default``: the demo's own setting (episode-continuous batches, the memory carried across windows), for
  reference.

Each run is then played by ``minesweep-eval`` on its held-out worlds (the eval's defaults). Prints the machine, the
command, each run's return and achievement rates, and per arm the mean and standard error over the seeds; writes
``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.train_throughput import cpu_model  # noqa: E402
from minesweep.eval import compose_config, evaluate_checkpoint  # noqa: E402
from minesweep.train import train  # noqa: E402

SHOWN = ("collect_wood", "place_table", "make_wood_pickaxe", "make_wood_sword")


def arm_overrides(arm: str, events: list[str], share: float, balance: str) -> list[str]:
    if arm == "default":
        return []
    random_windows = ["data.episode_continuous_batch=false"]
    if arm == "frames":
        return [*random_windows, "data.sampling=frames"]
    if arm == "events":
        names = ",".join(f"'{e}'" for e in events)
        return [
            *random_windows,
            "data.sampling=events",
            f"data.events=[{names}]",
            f"data.event_share={share}",
            f"data.event_balance={balance}",
        ]
    raise ValueError(f"unknown arm {arm!r}: frames, events or default")


def mean_stderr(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) / len(values) ** 0.5:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=["frames", "events"])
    parser.add_argument("--events", nargs="+", default=["place_table", "make_wood_pickaxe"])
    parser.add_argument("--share", type=float, default=0.25, help="fraction of event windows in the events arm")
    parser.add_argument("--balance", default="names", help="data.event_balance: names or occurrences")
    parser.add_argument("--out", default="outputs/event_windows")
    args, overrides = parser.parse_known_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); python {platform.python_version()}"
    )
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            run = out / f"{arm}-seed{seed}"
            cfg = compose_config(
                [
                    f"seed={seed}",
                    f"paths.output_dir={run}",
                    "logger=csv",
                    "callbacks.progress_bar=null",
                    "callbacks.final_eval=null",
                    *arm_overrides(arm, args.events, args.share, args.balance),
                    *overrides,
                ],
                config="train",
            )
            t = time.perf_counter()
            metrics = train(cfg)
            trained = time.perf_counter() - t
            report = evaluate_checkpoint(
                compose_config(
                    [
                        *(o for o in overrides if o.lstrip("+~").startswith(("eval.", "paths."))),
                        f"eval.checkpoint={run / 'checkpoints' / 'last.ckpt'}",
                        f"eval.output_dir={run / 'eval'}",
                        "eval.progress=false",
                    ]
                )
            )
            policy = report["players"]["policy"]
            row = {
                "arm": arm,
                "seed": seed,
                "steps": int(metrics["global_step"]),
                "train_s": round(trained, 1),
                "return": policy["mean_return"],
                "return_vs_random": report["return_vs_random"],
                **{k: policy["success_rates"].get(k, 0.0) for k in SHOWN},
            }
            results.append(row)
            print(
                f"{arm:8s} seed {seed}: {row['steps']} steps in {trained:.0f} s; return {row['return']:.2f} "
                f"({row['return_vs_random']:.2f}x random); " + ", ".join(f"{k} {row[k]:.2f}" for k in SHOWN),
                flush=True,
            )
            (out / "results.json").write_text(json.dumps({"command": sys.argv, "runs": results}, indent=1))

    worlds = report["worlds"]["episodes"]
    print(f"\nper arm, mean ± standard error over seeds {args.seeds} ({worlds} held-out worlds each):")
    print(f"{'arm':8s}  {'return':>12s}  {'x random':>12s}  " + "  ".join(f"{k:>17s}" for k in SHOWN))
    for arm in args.arms:
        rows = [r for r in results if r["arm"] == arm]
        cells = [mean_stderr([r[k] for r in rows]) for k in ("return", "return_vs_random", *SHOWN)]
        print(f"{arm:8s}  {cells[0]:>12s}  {cells[1]:>12s}  " + "  ".join(f"{c:>17s}" for c in cells[2:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
