"""``minesweep-data``: make synthetic recordings and ingest recordings into a training store.

    minesweep-data synth OUT --episodes 24 --frames 256 [--seed 0 --width 640 --height 360 --no-segmentation]
    minesweep-data ingest SRC DST [--resolution 128 | 128x96] [--legacy-vpt-camera]

``ingest`` exits 0 when at least one episode was ingested (skipped ones are printed), 1 when none was.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence


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
    synth.add_argument("--no-segmentation", action="store_true",
                       help="do not write NAME.segmentation.npz (the target's mask per frame) beside each recording")

    ingest = commands.add_parser("ingest", help="convert *.mp4 + *.jsonl recordings under SRC into a store at DST")
    ingest.add_argument("src")
    ingest.add_argument("dst")
    ingest.add_argument("--resolution", type=_resolution, default=(128, 128), help="N or HxW (default 128)")
    ingest.add_argument("--legacy-vpt-camera", action="store_true",
                        help="truncate camera degrees to integers, as the original VPT data loader does")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "synth":
        from minesweep.data.synth import generate_recordings

        paths = generate_recordings(args.out, args.episodes, args.frames, seed=args.seed, width=args.width,
                                    height=args.height, segmentation=not args.no_segmentation)
        print(f"wrote {len(paths)} recordings to {args.out}")
        return 0

    from minesweep.data.ingest import ingest

    try:
        report = ingest(args.src, args.dst, resolution=args.resolution, legacy_vpt_camera=args.legacy_vpt_camera)
    except (FileNotFoundError, FileExistsError) as err:
        print(f"minesweep-data ingest: {err}", file=sys.stderr)
        return 1
    return 0 if report.ingested else 1


if __name__ == "__main__":
    sys.exit(main())
