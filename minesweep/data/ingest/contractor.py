"""Contractor recordings (``NAME.mp4`` + ``NAME.jsonl``) -> a training store, in parallel and resumable.

Each recording is decoded, its GUI cursor drawn where ``isGuiOpen`` (as the VPT data loader does), resized with
OpenCV-exact bilinear and encoded in a worker process; the parent appends finished episodes to the store in
the sorted order of the recordings, so a store's bytes do not depend on the number of workers or on a restart.
Re-running skips episodes already in the store (verified by the writer), so a killed ingest loses at most the
episodes that were in flight.

Bad input never stops the run: an unpaired file, a name that is not UTF-8, an unreadable or bad ``.jsonl`` line, a
missing key, a NaN, Infinity or absurd number (bounds: ``contractor.NUMBER_LIMITS``), an undecodable or truncated
video, a frame/action count mismatch, an empty episode. Each is reported
once with its file, the reason and, where it applies, the frame index. ``on_error="skip"`` drops such an episode;
``on_error="prefix"`` keeps its valid prefix (the frames and steps before the first problem). The report goes to
``<dst>/ingest_report.json`` and is printed as a table.

A ``NAME.segmentation.npz`` beside a recording (:mod:`minesweep.data.segmentation`) is resized to the store
resolution and stored with the episode; a malformed one is a problem like any other (its masks must not silently
go missing): the episode is skipped, or with ``prefix`` kept without them.

Steps that carry ``events`` or ``stats`` give the episode its events (:mod:`minesweep.data.events`); a malformed
one is a bad step like any other.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from minesweep.actions.contractor import ContractorFormatError, contractor_to_env, read_jsonl_prefix
from minesweep.data.events import contractor_events
from minesweep.data.ingest.cursor import cursor_inputs, draw_cursor
from minesweep.data.ingest.pipeline import (
    REPORT,
    DecodeError,
    IngestReport,
    Progress,
    append_episodes,
    decoded_frames,
    episode_id,
    finish,
    is_utf8,
    print_report,
    run_jobs,
)
from minesweep.data.ingest.resize import resize_masks
from minesweep.data.segmentation import SegmentationError, check_segmentation, read_sidecar, sidecar_path
from minesweep.data.store import DEFAULT_SHARD_SIZE, EncodedEpisode, EpisodeLengthError, StoreWriter, encode_episode

__all__ = ["IngestReport", "ingest", "print_report", "REPORT"]

ON_ERROR = ("skip", "prefix")


@dataclass(frozen=True)
class _Job:
    episode: str
    mp4: Path
    jsonl: Path
    source: str


@dataclass(frozen=True)
class _Settings:
    resolution: tuple[int, int]
    legacy_vpt_camera: bool
    on_error: str
    codec: str
    fps: int
    chunk_size: int
    gui_cursor: bool


def _pairs(src: Path, report: IngestReport) -> list[_Job]:
    files = sorted(p for p in src.rglob("*") if p.suffix in (".mp4", ".jsonl") and p.is_file())
    good: list[Path] = []
    for path in files:
        if is_utf8(path):
            good.append(path)
        else:
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            report.skip(shown, shown, "file name is not valid UTF-8: rename it")
    videos = {p.with_suffix(""): p for p in good if p.suffix == ".mp4"}
    actions = {p.with_suffix(""): p for p in good if p.suffix == ".jsonl"}
    for stem in sorted(videos.keys() - actions.keys()):
        report.skip(episode_id(src, videos[stem]), videos[stem], "no matching .jsonl")
    for stem in sorted(actions.keys() - videos.keys()):
        report.skip(episode_id(src, actions[stem]), actions[stem], "no matching .mp4")
    return [
        _Job(episode_id(src, videos[s]), videos[s], actions[s], os.fspath(videos[s].relative_to(src)))
        for s in sorted(videos.keys() & actions.keys())
    ]


def _cursor_drawer(steps: list[dict], source: str) -> Any | None:
    """A function that draws the GUI cursor onto a batch of original-size frames, or None when no step has a GUI
    open. Built from the steps' ``isGuiOpen`` and ``mouse.x/y``."""
    x, y, gui_open = cursor_inputs(steps, source=source)
    if not gui_open.any():
        return None

    def draw(frames: np.ndarray, first: int) -> None:
        n = max(0, min(len(frames), len(gui_open) - first))  # frames beyond the steps are cut later anyway
        if n:
            draw_cursor(frames[:n], x[first : first + n], y[first : first + n], gui_open[first : first + n])

    return draw


def _encode(job: _Job, settings: _Settings) -> tuple[EncodedEpisode | None, list[dict]]:
    """Worker: one recording -> its encoded episode (or None) and the problems found (each a report entry)."""
    problems: list[dict] = []
    prefix = settings.on_error == "prefix"

    def problem(file: Path, reason: str, frame: int | None = None) -> None:
        problems.append({"episode": job.episode, "file": str(file), "reason": reason, "frame": frame, "kept": 0})

    try:
        steps, error = read_jsonl_prefix(job.jsonl)
    except (OSError, UnicodeDecodeError) as err:
        problem(job.jsonl, f"cannot read: {err}")
        return None, problems
    if error is not None:
        problem(job.jsonl, str(error), frame=error.step)
        if not prefix:
            return None, problems
    try:
        env_actions = contractor_to_env(steps, legacy_vpt_camera=settings.legacy_vpt_camera, source=str(job.jsonl))
        cursor = _cursor_drawer(steps, str(job.jsonl)) if settings.gui_cursor else None
        events = contractor_events(steps, str(job.jsonl))
    except ContractorFormatError as err:
        problem(job.jsonl, str(err), frame=err.step)
        if not prefix or not err.step:
            return None, problems
        steps = steps[: err.step]
        env_actions = contractor_to_env(steps, legacy_vpt_camera=settings.legacy_vpt_camera, source=str(job.jsonl))
        cursor = _cursor_drawer(steps, str(job.jsonl)) if settings.gui_cursor else None
        events = contractor_events(steps, str(job.jsonl))
    if len(env_actions) == 0:
        if not problems:
            problem(job.jsonl, "no steps in the .jsonl")
        return None, problems
    segmentation = None
    segmentation_frames = 0  # frames in the sidecar; more than the steps is judged once the video is counted
    sidecar = sidecar_path(job.mp4)
    if sidecar.is_file():
        try:
            segmentation = read_sidecar(sidecar)
            segmentation_frames = len(segmentation["valid"])
            if segmentation_frames < len(env_actions):
                check_segmentation(segmentation, str(sidecar), length=len(env_actions))  # raises, naming both counts
            # Longer than the steps: a .jsonl shorter than the video (reported as that, below) or a sidecar with
            # extra frames; either way its first frames belong to the steps kept.
            segmentation = {k: v[: len(env_actions)] for k, v in segmentation.items()}
            segmentation["mask"] = resize_masks(segmentation["mask"], settings.resolution)
        except SegmentationError as err:
            problem(sidecar, f"{err} ({job.jsonl.name} has {len(env_actions)} steps)")
            if not prefix:
                return None, problems
            segmentation = None

    decode_error: list[DecodeError] = []

    def frames() -> Iterator[np.ndarray]:
        try:
            yield from decoded_frames(job.mp4, settings.resolution, cursor)
        except DecodeError as err:
            decode_error.append(err)
            if not prefix:
                raise

    try:
        encoded = encode_episode(
            job.episode,
            frames(),
            env_actions,
            settings.resolution,
            settings.codec,
            settings.fps,
            settings.chunk_size,
            source=job.source,
            allow_prefix=prefix,
            segmentation=segmentation,
            events=events,
        )
    except DecodeError as err:
        problem(job.mp4, str(err), frame=err.frame)
        return None, problems
    except EpisodeLengthError as err:
        if decode_error:
            problem(job.mp4, str(decode_error[0]), frame=decode_error[0].frame)
        elif err.frames == 0:
            problem(job.mp4, "video has no frames", frame=0)
        elif err.frames > err.actions:
            problem(
                job.mp4,
                f"video has {err.frames} frames but {job.jsonl.name} has only {err.actions} steps "
                "(truncated .jsonl or mismatched recording)",
                frame=err.actions,
            )
        else:
            problem(
                job.mp4,
                f"video has {err.frames} frames but {job.jsonl.name} has {err.actions} steps "
                "(truncated video or mismatched recording)",
                frame=min(err.frames, err.actions),
            )
        return None, problems
    if segmentation_frames > encoded.length and encoded.frames_seen == encoded.length and not decode_error:
        # The video matches the steps: the sidecar alone has extra frames.
        problem(
            sidecar,
            f"{sidecar}: segmentation has {segmentation_frames} frames, {job.mp4.name} and "
            f"{job.jsonl.name} have {encoded.length}",
            frame=encoded.length,
        )
        if not prefix:
            return None, problems
    if decode_error:
        problem(job.mp4, str(decode_error[0]), frame=decode_error[0].frame)
    elif encoded.length < len(env_actions):
        problem(
            job.mp4,
            f"video has {encoded.length} frames but {job.jsonl.name} has {len(env_actions)} steps "
            "(truncated video or mismatched recording)",
            frame=encoded.length,
        )
    elif encoded.frames_seen > encoded.length:
        problem(
            job.mp4, f"video has more frames than {job.jsonl.name} has steps ({len(env_actions)})", frame=encoded.length
        )
    for p in problems:
        p["kept"] = encoded.length
    return encoded, problems


def ingest(
    src_dir: str | Path,
    dst_dir: str | Path,
    resolution: tuple[int, int] = (128, 128),
    legacy_vpt_camera: bool = False,
    fps: int = 20,
    workers: int = 1,
    codec: str = "h264",
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_error: str = "skip",
    gui_cursor: bool = True,
    progress: bool = True,
    print_summary: bool = True,
) -> IngestReport:
    """Convert every ``*.mp4`` + ``*.jsonl`` pair under ``src_dir`` (recursively) into a store at ``dst_dir``,
    or add the missing ones to the store there.

    ``workers`` processes decode and encode (one per core is right); frames are resized to ``resolution = (h, w)``
    with OpenCV-exact bilinear; actions go through :func:`minesweep.actions.contractor.contractor_to_env` (null
    steps are kept and flagged, never dropped). ``on_error`` is ``"skip"`` or ``"prefix"`` (see the module).
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    src, dst = Path(src_dir), Path(dst_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    started = time.perf_counter()
    report = IngestReport(src=str(src), dst=str(dst))
    settings = _Settings(tuple(resolution), legacy_vpt_camera, on_error, codec, fps, 32, gui_cursor)
    jobs = _pairs(src, report)
    with StoreWriter(dst, resolution=resolution, fps=fps, codec=codec, shard_size=shard_size) as writer:
        todo = [job for job in jobs if job.episode not in writer]
        report.already = len(jobs) - len(todo)
        with Progress(len(jobs), report.already, enabled=progress) as bar:
            results = run_jobs(partial(_encode, settings=settings), todo, workers, "recording")
            append_episodes(results, writer, report, bar)
    finish(report, dst, started, print_summary)
    return report
