"""``minesweep-data``: make synthetic or Crafter recordings and ingest recordings into a training store.

    minesweep-data synth OUT --episodes 24 --frames 256 [--seed 0 --width 640 --height 360]
    minesweep-data crafter OUT --episodes 200 [--seed 0 --length 500 --size 128 --noise 0.05 --workers N]
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
    ingest.add_argument("--legacy-vpt-camera", action="store_true",
                        help="truncate camera degrees to integers, as the original VPT data loader does")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "synth":
        from minesweep.data.synth import generate_recordings

        paths = generate_recordings(args.out, args.episodes, args.frames, seed=args.seed, width=args.width,
                                    height=args.height)
        print(f"wrote {len(paths)} recordings to {args.out}")
        return 0
    if args.command == "crafter":
        from minesweep.envs.crafter_record import SUMMARY, record_crafter

        try:
            results = record_crafter(args.out, args.episodes, first_seed=args.seed, length=args.length,
                                     size=args.size, noise=args.noise, workers=args.workers, player=args.player)
        except (ValueError, ImportError) as err:
            print(f"minesweep-data crafter: {err}", file=sys.stderr)
            return 1
        returns = [r.episode_return for r in results]
        print(f"wrote {len(results)} recordings to {args.out} (worlds {args.seed}..{args.seed + len(results) - 1}); "
              f"mean return {sum(returns) / len(returns):.2f}, mean length "
              f"{sum(r.length for r in results) / len(results):.0f} steps; summary in {args.out}/{SUMMARY}")
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
