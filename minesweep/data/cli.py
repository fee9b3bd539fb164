"""``minesweep-data``: make synthetic or Crafter recordings and ingest recordings into a training store.

    minesweep-data synth OUT --episodes 24 --frames 256 [--seed 0 --width 640 --height 360 --no-segmentation]
    minesweep-data crafter OUT --episodes 200 [--seed 0 --length 500 --size 128 --noise 0.05 --workers N]
    minesweep-data ingest SRC DST [--resolution 128 | 128x96] [--legacy-vpt-camera] [--workers N] [--codec h264|raw]
                   [--shard-size-mb 256] [--on-error skip|prefix] [--no-gui-cursor] [--no-progress]
    minesweep-data import-minestudio SRC DST [--resolution 128 | 128x96]
    minesweep-data label VIDEOS DST --idm RUN/checkpoints/last.ckpt [--window N --stride N] [--workers N]
                   [--codec raw|h264] [--on-error skip|prefix] [--no-progress]
    minesweep-data verify STORE [--json]
    minesweep-data events STORE [PATTERN ...] [--json]

``ingest``, ``import-minestudio`` and ``label`` exit 0 when the store holds at least one episode (problems are
printed), 1 when none. Re-running ``ingest`` or ``label`` on the same DST resumes it: episodes already there are
kept, the rest are added. ``label`` predicts the actions of videos (``.mp4`` files, or a store's episodes) with an
inverse dynamics model (:mod:`minesweep.data.ingest.label`).
``verify`` reads the whole store and checks it against its checksums (every video chunk, action block and mask row;
the shard and index sha256 sums): exit 0 when intact, 1 when anything is damaged (listed, or a JSON report).
``events`` lists each event name of a store (or those matching the patterns) with its count and the episodes it
occurs in; exit 1 when the store keeps no events or a pattern matches none.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from minesweep.data.store import CODECS, DEFAULT_SHARD_SIZE


def _resolution(text: str) -> tuple[int, int]:
    """``128`` -> (128, 128); ``HxW`` -> (H, W)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0 or any(p % 2 for p in parts):
        raise argparse.ArgumentTypeError(f"resolution must be N or HxW with even positive sizes, got {text!r}")
    return parts[0], parts[1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="minesweep-data", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write synthetic contractor recordings (NAME.mp4 + NAME.jsonl)")
    synth.add_argument("out", help="output folder")
    synth.add_argument("--episodes", type=int, required=True)
    synth.add_argument("--frames", type=int, required=True, help="frames per episode (20 fps)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--width", type=int, default=640)
    synth.add_argument("--height", type=int, default=360)
    synth.add_argument(
        "--no-segmentation",
        action="store_true",
        help="do not write NAME.segmentation.npz (the target's mask per frame) beside each recording",
    )

    crafter = commands.add_parser("crafter", help="record a scripted Crafter player as contractor recordings")
    crafter.add_argument("out", help="output folder")
    crafter.add_argument("--episodes", type=int, required=True)
    crafter.add_argument("--seed", type=int, default=0, help="episode i plays world seed+i (default 0)")
    crafter.add_argument("--length", type=int, default=500, help="step limit per episode (default 500)")
    crafter.add_argument("--size", type=int, default=128, help="frame size in pixels (default 128)")
    crafter.add_argument("--noise", type=float, default=0.05, help="probability of a random action (default 0.05)")
    crafter.add_argument("--player", choices=("scripted", "random"), default="scripted")
    crafter.add_argument("--workers", type=int, default=None, help="parallel processes (default: CPU count)")

    ingest = commands.add_parser("ingest", help="convert *.mp4 + *.jsonl recordings under SRC into a store at DST")
    ingest.add_argument("src")
    ingest.add_argument("dst")
    ingest.add_argument("--resolution", type=_resolution, default=(128, 128), help="N or HxW (default 128)")
    ingest.add_argument(
        "--legacy-vpt-camera",
        action="store_true",
        help="truncate camera degrees to integers, as the original VPT data loader does",
    )
    ingest.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes decoding and encoding (default: one per core)",
    )
    ingest.add_argument(
        "--codec",
        choices=CODECS,
        default="h264",
        help="h264 (default, ~1.4 KB/frame at 128x128) or raw uint8 frames (fast, large)",
    )
    ingest.add_argument(
        "--shard-size-mb",
        type=int,
        default=DEFAULT_SHARD_SIZE >> 20,
        help="episodes are packed into shard files of about this size",
    )
    ingest.add_argument(
        "--on-error",
        choices=("skip", "prefix"),
        default="skip",
        help="a bad episode is skipped, or its valid prefix is kept",
    )
    ingest.add_argument(
        "--no-gui-cursor",
        dest="gui_cursor",
        action="store_false",
        help="do not draw the mouse cursor onto frames where the recording has a GUI open",
    )
    ingest.add_argument("--no-progress", dest="progress", action="store_false")

    minestudio = commands.add_parser(
        "import-minestudio", help="import a MineStudio dataset (image/ + action/ LMDB parts) into a store"
    )
    minestudio.add_argument("src", help="the dataset folder (holding image/ or video/, and action/)")
    minestudio.add_argument("dst")
    minestudio.add_argument("--resolution", type=_resolution, default=(128, 128), help="N or HxW (default 128)")

    label = commands.add_parser(
        "label", help="label videos (*.mp4 under VIDEOS, or a store) with an inverse dynamics model into DST"
    )
    label.add_argument("src", metavar="VIDEOS")
    label.add_argument("dst")
    label.add_argument("--idm", required=True, help="an IDM's checkpoint (policy=idm_tiny 'objective=[idm]')")
    label.add_argument("--window", type=int, default=None, help="frames the IDM sees at once (default: its timesteps)")
    label.add_argument("--stride", type=int, default=None, help="frames between windows (default: window / 2)")
    label.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes, each with its own IDM on one thread (default: one per core)",
    )
    label.add_argument("--codec", choices=CODECS, default="raw", help="the store's codec (default raw)")
    label.add_argument(
        "--on-error", choices=("skip", "prefix"), default="skip", help="a bad video is skipped, or its prefix kept"
    )
    label.add_argument("--no-progress", dest="progress", action="store_false")

    verify = commands.add_parser(
        "verify", help="check every episode of a store against its checksums (exit 1: damaged)"
    )
    verify.add_argument("store")
    verify.add_argument("--json", action="store_true", help="print a machine-readable report instead of a table")

    events = commands.add_parser("events", help="count the events (e.g. Crafter achievements) of a store")
    events.add_argument("store")
    events.add_argument("patterns", nargs="*", help="only names matching these shell patterns (e.g. 'make_*')")
    events.add_argument("--json", action="store_true", help="print {name: {events, episodes}} as JSON")
    return parser


def _events(root: str, patterns: Sequence[str], as_json: bool) -> int:
    import numpy as np

    from minesweep.data.events import match_event_names
    from minesweep.data.store import EpisodeStore

    try:
        store = EpisodeStore(root)
        if not store.has_events:
            raise ValueError(
                f"{root} keeps no events: it was written by a minesweep before events were stored; re-ingest it"
            )
        names = match_event_names(patterns, store.event_names, root) if patterns else store.event_names
        table = store.events
    except (OSError, ValueError) as err:
        print(f"minesweep-data events: {err}", file=sys.stderr)
        return 1
    codes = {name: store.event_names.index(name) for name in names}
    rows = {
        name: {
            "events": int((table["name"] == code).sum()),
            "episodes": len(np.unique(table["episode"][table["name"] == code])),
        }
        for name, code in codes.items()
    }
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{root}: {len(table)} events of {len(store.event_names)} kinds in {len(store)} episodes")
    print("event\tcount\tepisodes")  # tab-separated: names stay whole for grep
    for name, row in sorted(rows.items(), key=lambda item: (-item[1]["events"], item[0])):
        print(f"{name}\t{row['events']}\t{row['episodes']}")
    return 0


def _verify(store: str, as_json: bool) -> int:
    from dataclasses import asdict

    from minesweep.data.store import verify_store

    report = verify_store(store)
    if as_json:
        print(json.dumps({**asdict(report), "ok": report.ok}, indent=1))
        return 0 if report.ok else 1
    if report.ok:
        print(f"{store}: intact ({report.episodes} episodes, {report.frames} frames checked)")
        return 0
    print(f"{store}: {len(report.problems)} problem(s) in {report.episodes} episodes checked")
    # Plain tab-separated lines, not a wrapped table: ids and paths stay whole for grep and for logs.
    print("episode\tposition\tshard\twhat\tframes")
    for p in report.problems:
        frames = f"[{p['frames'][0]}, {p['frames'][1]})" if p["frames"] else "-"
        print(
            f"{p['episode'] or '-'}\t{'-' if p['position'] is None else p['position']}\t{p['shard'] or '-'}\t"
            f"{p['what']}\t{frames}"
        )
    if any(p["episode"] is None for p in report.problems):
        print()
        for p in report.problems:
            if p["episode"] is None:
                print(p["message"])
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "synth":
        from minesweep.data.recordings.synth import generate_recordings

        paths = generate_recordings(
            args.out,
            args.episodes,
            args.frames,
            seed=args.seed,
            width=args.width,
            height=args.height,
            segmentation=not args.no_segmentation,
        )
        print(f"wrote {len(paths)} recordings to {args.out}")
        return 0
    if args.command == "crafter":
        from minesweep.envs.crafter_record import SUMMARY, record_crafter

        try:
            results = record_crafter(
                args.out,
                args.episodes,
                first_seed=args.seed,
                length=args.length,
                size=args.size,
                noise=args.noise,
                workers=args.workers,
                player=args.player,
            )
        except (ValueError, ImportError) as err:
            print(f"minesweep-data crafter: {err}", file=sys.stderr)
            return 1
        returns = [r.episode_return for r in results]
        print(
            f"wrote {len(results)} recordings to {args.out} (worlds {args.seed}..{args.seed + len(results) - 1}); "
            f"mean return {sum(returns) / len(returns):.2f}, mean length "
            f"{sum(r.length for r in results) / len(results):.0f} steps; summary in {args.out}/{SUMMARY}"
        )
        return 0

    if args.command == "verify":
        return _verify(args.store, args.json)
    if args.command == "events":
        return _events(args.store, args.patterns, args.json)

    if args.command == "import-minestudio":
        from minesweep.data.ingest.minestudio import MineStudioFormatError, import_minestudio

        try:
            report = import_minestudio(args.src, args.dst, resolution=args.resolution)
        except (FileNotFoundError, FileExistsError, MineStudioFormatError) as err:
            print(f"minesweep-data import-minestudio: {err}", file=sys.stderr)
            return 1
        return 0 if report.ingested else 1

    if args.command == "label":
        from minesweep.data.ingest.label import label

        try:
            report = label(
                args.src,
                args.dst,
                args.idm,
                window=args.window,
                stride=args.stride,
                workers=args.workers,
                codec=args.codec,
                on_error=args.on_error,
                progress=args.progress,
            )
        except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
            print(f"minesweep-data label: {err}", file=sys.stderr)
            return 1
        return 0 if report.ingested or report.already else 1

    from minesweep.data.ingest.contractor import ingest

    try:
        report = ingest(
            args.src,
            args.dst,
            resolution=args.resolution,
            legacy_vpt_camera=args.legacy_vpt_camera,
            workers=args.workers,
            codec=args.codec,
            shard_size=args.shard_size_mb << 20,
            on_error=args.on_error,
            gui_cursor=args.gui_cursor,
            progress=args.progress,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        print(f"minesweep-data ingest: {err}", file=sys.stderr)
        return 1
    return 0 if report.ingested or report.already else 1


if __name__ == "__main__":
    sys.exit(main())
