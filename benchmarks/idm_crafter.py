"""VPT's method on the Crafter demo: an IDM trained on 10% of the games labels the rest; BC on the pseudo-labels.

    python benchmarks/idm_crafter.py [--games 200 --labelled 20 --held-out 20 --length 300 --size 64]
                                     [--idm-steps 1500 --bc-steps 1600] [--out outputs/idm_crafter]

1. Records ``--games`` games of the scripted player (worlds 0..games-1, as ``minesweep-data crafter``) and ingests
   them all (the true labels, for reference and for measuring the IDM).
2. Keeps the actions of the first ``--labelled`` games only; the other games' videos are the unlabelled data.
3. Trains an IDM (``policy=idm_tiny objective=[idm]``, ``--idm-steps`` steps) on the labelled games.
4. Labels the unlabelled videos with it (``minesweep-data label``) and measures its accuracy against the true
   actions on ``--held-out`` of them (frames whose action, all 20 buttons and both camera bins, is right; and
   the keys: per pressed button, the frames where the IDM says it is pressed).
5. Trains BC (the default experiment: ``policy=tiny``, ``--bc-steps`` steps, the demo's batches) three times
   with the same budget: on the labelled games plus the pseudo-labelled rest (``pseudo``), on the labelled games
   alone (``labelled``), on every game with its true labels (``true``); plays each on the eval's held-out worlds.

Prints the machine, the command, the IDM's accuracy and each arm's return, ratio to random and achievements;
writes ``OUT/results_bc<steps>.json``. Recordings, stores, the IDM (same ``--idm-steps``) and its labels are
reused from an earlier run in the same ``--out``, so that other BC budgets (``--bc-steps``) cost only the BC runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.crafter_bc import recording_matches  # noqa: E402
from benchmarks.train_throughput import cpu_model  # noqa: E402
from minesweep.data.ingest.contractor import ingest  # noqa: E402
from minesweep.data.ingest.label import label  # noqa: E402
from minesweep.data.store import MANIFEST, EpisodeStore  # noqa: E402
from minesweep.envs.crafter_record import record_crafter  # noqa: E402
from minesweep.eval import compose_config, evaluate_checkpoint  # noqa: E402
from minesweep.train import train  # noqa: E402

SHOWN = ("collect_wood", "place_table", "make_wood_pickaxe", "make_wood_sword")


def link_recordings(raw: Path, names: list[str], out: Path, with_actions: bool) -> Path:
    """A folder of hard links (copies across devices) to some recordings: videos, and their .jsonl if asked."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        for suffix in (".mp4", ".jsonl") if with_actions else (".mp4",):
            target = out / f"{name}{suffix}"
            if not target.exists():
                try:
                    os.link(raw / f"{name}{suffix}", target)
                except OSError:
                    shutil.copy(raw / f"{name}{suffix}", target)
    return out


def store_of(src: Path, dst: Path, size: int) -> Path:
    if not (dst / MANIFEST).is_file():
        ingest(
            src,
            dst,
            resolution=(size, size),
            codec="raw",
            workers=os.cpu_count() or 1,
            progress=False,
            print_summary=False,
        )
    return dst


def idm_accuracy(labelled: EpisodeStore, truth: EpisodeStore, ids: list[str]) -> dict[str, float]:
    """Per frame (but each episode's last, whose action no frame shows): the whole action right, the buttons
    right, the camera right; per pressed key: how often the IDM says it is pressed (recall) and right when it
    does (precision)."""
    right = buttons_right = camera_right = frames = 0
    pressed = said = hit = 0
    for episode in ids:
        p, t = labelled.read_actions(episode), truth.read_actions(episode)
        pb, tb = p["buttons"][:-1] != 0, t["buttons"][:-1] != 0
        pc, tc = p["camera"][:-1], t["camera"][:-1]
        b_ok, c_ok = (pb == tb).all(1), np.isclose(pc, tc, atol=1e-3).all(1)
        right += int((b_ok & c_ok).sum())
        buttons_right += int(b_ok.sum())
        camera_right += int(c_ok.sum())
        frames += len(tb)
        pressed, said, hit = pressed + int(tb.sum()), said + int(pb.sum()), hit + int((pb & tb).sum())
    return {
        "action_accuracy": right / frames,
        "buttons_accuracy": buttons_right / frames,
        "camera_accuracy": camera_right / frames,
        "keypress_recall": hit / max(pressed, 1),
        "keypress_precision": hit / max(said, 1),
        "frames": frames,
    }


def trained_steps(checkpoint: Path) -> int | None:
    """The optimizer steps a checkpoint was trained for (None: no checkpoint)."""
    if not checkpoint.is_file():
        return None
    return int(torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)["global_step"])


def train_and_play(name: str, run: Path, overrides: list[str], worlds: int) -> dict:
    cfg = compose_config(
        [
            f"paths.output_dir={run}",
            "logger=csv",
            "callbacks.progress_bar=null",
            "callbacks.final_eval=null",
            "data.demo=null",
            *overrides,
        ],
        config="train",
    )
    started = time.perf_counter()
    metrics = train(cfg)
    seconds = time.perf_counter() - started
    report = evaluate_checkpoint(
        compose_config(
            [
                f"eval.checkpoint={run / 'checkpoints' / 'last.ckpt'}",
                f"eval.output_dir={run / 'eval'}",
                f"eval.episodes={worlds}",
                "eval.progress=false",
            ]
        )
    )
    policy = report["players"]["policy"]
    row = {
        "arm": name,
        "steps": int(metrics["global_step"]),
        "train_s": round(seconds, 1),
        "return": policy["mean_return"],
        "return_stderr": policy.get("stderr_return"),
        "return_vs_random": report["return_vs_random"],
        "random_return": report["players"].get("random", {}).get("mean_return"),
        **{k: policy["success_rates"].get(k, 0.0) for k in SHOWN},
    }
    print(
        f"{name:9s}: {row['steps']} steps in {seconds:.0f} s; return {row['return']:.2f} "
        f"({row['return_vs_random']:.2f}x random); " + ", ".join(f"{k} {row[k]:.2f}" for k in SHOWN),
        flush=True,
    )
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--games", type=int, default=200)
    parser.add_argument("--labelled", type=int, default=20, help="games whose actions are kept (default 20: 10%%)")
    parser.add_argument("--held-out", type=int, default=20, help="unlabelled games the IDM's accuracy is measured on")
    parser.add_argument("--length", type=int, default=300, help="step limit per game")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--idm-steps", type=int, default=1500)
    parser.add_argument("--bc-steps", type=int, default=1600, help="each BC arm's budget (the demo's default)")
    parser.add_argument("--arms", nargs="+", default=["pseudo", "labelled", "true"])
    parser.add_argument("--eval-worlds", type=int, default=30, help="held-out worlds each BC arm plays")
    parser.add_argument("--out", default="outputs/idm_crafter")
    args, overrides = parser.parse_known_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {cpu_model()}; {os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); python {platform.python_version()}",
        flush=True,
    )
    started = time.perf_counter()
    raw = out / "raw"
    if not recording_matches(raw, args.games, args.length, 0):
        shutil.rmtree(raw, ignore_errors=True)
        record_crafter(raw, args.games, first_seed=0, length=args.length, size=args.size, progress=False)
    names = sorted(p.stem for p in raw.glob("*.mp4"))
    labelled_names, unlabelled_names = names[: args.labelled], names[args.labelled :]
    true_all = store_of(raw, out / "store_true", args.size)
    labelled_store = store_of(
        link_recordings(raw, labelled_names, out / "raw_labelled", True), out / "store_labelled", args.size
    )
    unlabelled_videos = link_recordings(raw, unlabelled_names, out / "videos_unlabelled", False)
    print(f"recorded and ingested {len(names)} games in {time.perf_counter() - started:.0f} s", flush=True)

    idm_run = out / "idm"
    idm_cfg = compose_config(
        [
            "policy=idm_tiny",
            f"policy.img_shape=[{args.size},{args.size},16]",
            "objective=[idm]",
            f"data.root={labelled_store}",
            "data.demo=null",
            "data.episode_continuous_batch=false",
            "data.sampling=frames",
            "data.win_len=32",
            "data.batch_size=8",
            "data.val_fraction=0.1",
            f"trainer.max_steps={args.idm_steps}",
            f"trainer.val_check_interval={min(args.idm_steps, 500)}",
            f"paths.output_dir={idm_run}",
            "logger=csv",
            "callbacks.progress_bar=null",
            "callbacks.final_eval=null",
        ],
        config="train",
    )
    checkpoint = idm_run / "checkpoints" / "last.ckpt"
    t = time.perf_counter()
    if trained_steps(checkpoint) == args.idm_steps:  # an earlier run's IDM, with these settings: reused
        idm_metrics = {"global_step": args.idm_steps}
        print(f"reusing the IDM of {checkpoint}", flush=True)
    else:
        idm_metrics = train(idm_cfg)
    idm_seconds = time.perf_counter() - t
    print(
        f"IDM: {int(idm_metrics['global_step'])} steps on {len(labelled_names)} games in {idm_seconds:.0f} s",
        flush=True,
    )

    pseudo_store = out / "store_pseudo"
    t = time.perf_counter()
    report = label(
        unlabelled_videos, pseudo_store, checkpoint, workers=os.cpu_count() or 1, progress=False, print_summary=False
    )
    label_seconds = time.perf_counter() - t
    accuracy = idm_accuracy(EpisodeStore(pseudo_store), EpisodeStore(true_all), unlabelled_names[: args.held_out])
    print(
        f"labelled {len(report.ingested) + report.already} games ({report.frames} frames) in {label_seconds:.0f} s; "
        f"IDM on {args.held_out} held-out games: action {accuracy['action_accuracy']:.3f}, buttons "
        f"{accuracy['buttons_accuracy']:.3f}, camera {accuracy['camera_accuracy']:.3f}, keypress recall "
        f"{accuracy['keypress_recall']:.3f}, precision {accuracy['keypress_precision']:.3f}",
        flush=True,
    )

    roots = {"pseudo": f"[{labelled_store},{pseudo_store}]", "labelled": str(labelled_store), "true": str(true_all)}
    rows = []
    for arm in args.arms:
        rows.append(
            train_and_play(
                arm,
                out / f"bc_{arm}_{args.bc_steps}",
                [f"data.root={roots[arm]}", f"trainer.max_steps={args.bc_steps}", *overrides],
                args.eval_worlds,
            )
        )
        (out / f"results_bc{args.bc_steps}.json").write_text(
            json.dumps({"command": sys.argv, "idm": accuracy, "idm_steps": args.idm_steps, "arms": rows}, indent=1)
        )
    by_arm = {r["arm"]: r for r in rows}
    if {"pseudo", "true", "labelled"} <= by_arm.keys():
        print(
            f"pseudo-labelled BC returns {by_arm['pseudo']['return'] / by_arm['true']['return']:.0%} of true-label "
            f"BC's (goal >= 80%); BC on the {len(labelled_names)} labelled games alone: "
            f"{by_arm['labelled']['return']:.2f}",
        )
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
