"""Contractor recordings (``NAME.mp4`` + ``NAME.jsonl``) -> a training store.

Bad input never stops the run: every episode with a problem (unpaired file, unreadable jsonl, missing key,
undecodable or truncated video, frame/action count mismatch, empty episode) is skipped and recorded with its file,
the reason and, where it applies, the frame index. Every good episode is ingested. A ``NAME.segmentation.npz``
beside a recording (:mod:`minesweep.data.segmentation`) is resized to the store resolution and stored with the
episode; a malformed one skips the episode (its masks would otherwise silently go missing). The report is written to
``<dst>/ingest_report.json`` and printed as a table.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from minesweep.actions.contractor import ContractorFormatError, contractor_to_env, read_jsonl
from minesweep.data.resize import resize_bilinear
from minesweep.data.segmentation import SegmentationError, read_sidecar, resize_masks, sidecar_path
from minesweep.data.store import EpisodeLengthError, StoreWriter

__all__ = ["IngestReport", "ingest"]

REPORT = "ingest_report.json"
_RESIZE_BATCH = 32  # frames resized per vectorised call
_DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError)


@dataclass
class IngestReport:
    src: str
    dst: str
    ingested: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {episode, file, reason, frame (int or None)}

    def skip(self, episode: str, file: Path | str, reason: str, frame: int | None = None) -> None:
        self.skipped.append({"episode": episode, "file": str(file), "reason": reason, "frame": frame})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


class _DecodeError(Exception):
    """A video stopped decoding; ``frame`` is the index of the first frame that could not be read."""

    def __init__(self, frame: int, cause: BaseException) -> None:
        super().__init__(f"video could not be decoded at frame {frame}: {type(cause).__name__}: {cause}")
        self.frame = frame


def _episode_id(src: Path, mp4: Path) -> str:
    """Unique, flat id: the path relative to ``src`` without suffix, folders joined by '__'."""
    return "__".join(mp4.relative_to(src).with_suffix("").parts)


def _resized_frames(mp4: Path, resolution: tuple[int, int]) -> Iterator[np.ndarray]:
    """Decode ``mp4`` and yield resized RGB frame batches ``(n, h, w, 3)``. Decoding errors become _DecodeError."""
    count = 0
    batch: list[np.ndarray] = []
    reformatter = VideoReformatter()  # reused: keeps its swscale context between frames
    try:
        with av.open(str(mp4)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"  # source videos are large: let ffmpeg use frame threads
            for frame in container.decode(stream):
                batch.append(reformatter.reformat(frame, format="rgb24").to_ndarray())
                count += 1
                if len(batch) == _RESIZE_BATCH:
                    yield resize_bilinear(np.stack(batch), resolution)
                    batch.clear()
    except _DECODE_ERRORS as err:
        raise _DecodeError(count, err) from err
    if batch:
        yield resize_bilinear(np.stack(batch), resolution)


def _pairs(src: Path, report: IngestReport) -> list[tuple[Path, Path]]:
    videos = {p.with_suffix(""): p for p in sorted(src.rglob("*.mp4"))}
    actions = {p.with_suffix(""): p for p in sorted(src.rglob("*.jsonl"))}
    for stem in sorted(videos.keys() - actions.keys()):
        report.skip(_episode_id(src, videos[stem]), videos[stem], "no matching .jsonl")
    for stem in sorted(actions.keys() - videos.keys()):
        report.skip(_episode_id(src, actions[stem]), actions[stem], "no matching .mp4")
    return [(videos[s], actions[s]) for s in sorted(videos.keys() & actions.keys())]


def _ingest_one(writer: StoreWriter, src: Path, mp4: Path, jsonl: Path, legacy_vpt_camera: bool,
                report: IngestReport) -> None:
    episode = _episode_id(src, mp4)
    try:
        steps = read_jsonl(jsonl)
        env_actions = contractor_to_env(steps, legacy_vpt_camera=legacy_vpt_camera, source=str(jsonl))
    except (ContractorFormatError, OSError, UnicodeDecodeError) as err:
        report.skip(episode, jsonl, str(err))
        return
    if len(env_actions) == 0:
        report.skip(episode, jsonl, "no steps in the .jsonl")
        return
    segmentation = None
    sidecar = sidecar_path(mp4)
    if sidecar.is_file():
        try:
            segmentation = read_sidecar(sidecar, length=len(env_actions))
        except SegmentationError as err:
            report.skip(episode, sidecar, f"{err} ({jsonl.name} has {len(env_actions)} steps)")
            return
        segmentation["mask"] = resize_masks(segmentation["mask"], writer.resolution)
    try:
        writer.add_episode(episode, _resized_frames(mp4, writer.resolution), env_actions,
                           source=os.fspath(mp4.relative_to(src)), segmentation=segmentation)
    except _DecodeError as err:
        report.skip(episode, mp4, str(err), frame=err.frame)
        return
    except EpisodeLengthError as err:
        if err.frames == 0:
            report.skip(episode, mp4, "video has no frames", frame=0)
        else:
            report.skip(episode, mp4, f"video has {err.frames} frames but {jsonl.name} has {err.actions} steps "
                        "(truncated video or mismatched recording)", frame=min(err.frames, err.actions))
        return
    report.ingested.append(episode)


def ingest(src_dir: str | Path, dst_dir: str | Path, resolution: tuple[int, int] = (128, 128),
           legacy_vpt_camera: bool = False, fps: int = 20, print_summary: bool = True) -> IngestReport:
    """Convert every ``*.mp4`` + ``*.jsonl`` pair under ``src_dir`` (recursively) into a store at ``dst_dir``.

    Frames are resized to ``resolution = (h, w)`` with OpenCV-exact bilinear; actions go through
    :func:`minesweep.actions.contractor.contractor_to_env` (null steps are kept and flagged).
    """
    src, dst = Path(src_dir), Path(dst_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    report = IngestReport(src=str(src), dst=str(dst))
    with StoreWriter(dst, resolution=resolution, fps=fps) as writer:
        for mp4, jsonl in _pairs(src, report):
            _ingest_one(writer, src, mp4, jsonl, legacy_vpt_camera, report)
    (dst / REPORT).write_text(report.to_json())
    if print_summary:
        print_report(report)
    return report


def print_report(report: IngestReport) -> None:
    """Summary table of an ingest run (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"ingested {len(report.ingested)} episode(s) from {report.src} into {report.dst}; "
                  f"skipped {len(report.skipped)}")
    if report.skipped:
        table = Table(title="skipped", show_lines=False)
        for column in ("episode", "file", "frame", "reason"):
            table.add_column(column, overflow="fold")
        for s in report.skipped:
            table.add_row(s["episode"], s["file"], "" if s["frame"] is None else str(s["frame"]), s["reason"])
        console.print(table)
