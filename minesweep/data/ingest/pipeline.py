"""What every way into a store shares: the report of bad input, the progress bar, decoding and resizing a video,
episode ids from file names, and running one job per recording in worker processes while the results are appended
to the store in order (so that its bytes depend neither on the number of workers nor on a restart).

Used by :mod:`minesweep.data.ingest.contractor` (recordings with actions) and :mod:`minesweep.data.ingest.label`
(videos labelled by an inverse dynamics model).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from minesweep.data.ingest.resize import resize_bilinear
from minesweep.data.store import EncodedEpisode, StoreWriter

__all__ = [
    "REPORT",
    "IngestReport",
    "DecodeError",
    "decoded_frames",
    "episode_id",
    "is_utf8",
    "Progress",
    "print_report",
    "run_jobs",
    "append_episodes",
]

REPORT = "ingest_report.json"
RESIZE_BATCH = 32  # frames resized per vectorised call
DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError)

Job = TypeVar("Job")
Result = TypeVar("Result")


@dataclass
class IngestReport:
    src: str
    dst: str
    ingested: list[str] = field(default_factory=list)  # newly added by this run
    already: int = 0  # episodes found in the store from an earlier run, kept
    # {episode, file, reason, frame (int or None), kept (frames kept with on_error="prefix", else 0)}
    skipped: list[dict] = field(default_factory=list)
    frames: int = 0  # frames added by this run
    seconds: float = 0.0

    def skip(self, episode: str, file: Path | str, reason: str, frame: int | None = None, kept: int = 0) -> None:
        self.skipped.append({"episode": episode, "file": str(file), "reason": reason, "frame": frame, "kept": kept})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


class DecodeError(Exception):
    """A video stopped decoding; ``frame`` is the index of the first frame that could not be read."""

    def __init__(self, frame: int, cause: BaseException) -> None:
        super().__init__(f"video could not be decoded at frame {frame}: {type(cause).__name__}: {cause}")
        self.frame = frame


def episode_id(src: Path, path: Path) -> str:
    """Unique, flat id: the path relative to ``src`` without suffix, folders joined by '__'."""
    return "__".join(path.relative_to(src).with_suffix("").parts)


def is_utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes in the name became surrogates
        return False


def decoded_frames(mp4: Path, resolution: tuple[int, int], cursor: Any | None) -> Iterator[np.ndarray]:
    """Decode ``mp4`` and yield resized RGB frame batches ``(n, h, w, 3)``; ``cursor(batch, first_index)`` draws
    the GUI cursor on original-size frames first. Decoding errors become :class:`DecodeError`."""
    count = 0
    batch: list[np.ndarray] = []
    reformatter = VideoReformatter()  # reused: keeps its swscale context between frames

    def flush() -> np.ndarray:
        frames = np.stack(batch)
        if cursor is not None:
            cursor(frames, count - len(batch))
        batch.clear()
        return resize_bilinear(frames, resolution)

    try:
        with av.open(str(mp4)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            # One decoding thread: ingest runs one worker process per core, and frame threads would make the
            # workers fight over the cores.
            stream.codec_context.thread_count = 1
            for frame in container.decode(stream):
                batch.append(reformatter.reformat(frame, format="rgb24").to_ndarray())
                count += 1
                if len(batch) == RESIZE_BATCH:
                    yield flush()
    except DECODE_ERRORS as err:
        if batch:
            yield flush()  # the frames before the error are good (a valid prefix)
        raise DecodeError(count, err) from err
    if batch:
        yield flush()


def run_jobs(
    work: Callable[[Job], Result],
    jobs: list[Job],
    workers: int,
    what: str,
    initializer: Callable[..., Any] | None = None,
    initargs: tuple = (),
) -> Iterator[Result]:
    """``work(job)`` for each job, yielded in the order of ``jobs``: in this process (``workers <= 1``), or in
    ``workers`` spawned processes (``work`` must be a module-level function). ``what`` names a job in the error
    raised when a worker dies."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield work(job)
        return
    # spawn: a clean interpreter per worker (no inherited ffmpeg or torch threads from the parent). An executor, not
    # a Pool: a worker that dies (killed, or failing to start) breaks it with an error instead of a silent respawn.
    executor = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=initializer, initargs=initargs
    )
    try:
        yield from executor.map(work, jobs)
    except BrokenProcessPool as error:
        raise RuntimeError(
            f"a worker process died before finishing its {what} (killed, e.g. out of memory, or it could not "
            "start). Called from a script? Workers are started with 'spawn', which imports the script again in each "
            "of them: put the call under `if __name__ == '__main__':`. The episodes already appended are kept; run "
            "it again to resume."
        ) from error
    finally:
        executor.shutdown(wait=True, cancel_futures=True)  # on an error, the jobs not started are dropped


def append_episodes(
    results: Iterable[tuple[EncodedEpisode | None, list[dict]]],
    writer: StoreWriter,
    report: IngestReport,
    bar: Progress,
) -> None:
    """Append each job's episode (None: nothing kept) to the store, its problems to the report."""
    for encoded, problems in results:
        report.skipped.extend(problems)
        if encoded is not None:
            writer.append(encoded)
            report.ingested.append(encoded.id)
            report.frames += encoded.length
        bar.advance(encoded.length if encoded is not None else 0)


def finish(report: IngestReport, dst: Path, started: float, print_summary: bool, verb: str = "ingested") -> None:
    """Time the run, write ``dst/ingest_report.json`` and print the summary."""
    report.seconds = time.perf_counter() - started
    (dst / REPORT).write_text(report.to_json())
    if print_summary:
        print_report(report, verb)


class Progress:
    """Episodes done / total with episodes/s and frames/s (rich), or nothing when disabled."""

    def __init__(self, total: int, done: int, enabled: bool, name: str = "ingest") -> None:
        self.enabled, self.total, self.done, self.frames, self.name = enabled, total, done, 0, name
        self.start = time.perf_counter()

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn(self.name),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[rate]}"),
            )
            self.bar.start()
            self.task = self.bar.add_task(self.name, total=self.total, completed=self.done, rate="")
        return self

    def advance(self, frames: int) -> None:
        self.frames += frames
        if self.enabled:
            seconds = max(time.perf_counter() - self.start, 1e-9)
            self.bar.advance(self.task)
            episodes = self.bar.tasks[0].completed - self.done
            self.bar.update(
                self.task, rate=f"{episodes / seconds:.2f} episodes/s, {self.frames / seconds:.0f} frames/s"
            )

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            self.bar.stop()


def print_report(report: IngestReport, verb: str = "ingested") -> None:
    """Summary table of an ingest (or labelling: ``verb="labelled"``) run (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    rate = report.frames / report.seconds if report.seconds else 0.0
    summary = (
        f"{verb} {len(report.ingested)} episode(s), {report.frames} frames ({rate:.0f} frames/s) from "
        f"{report.src} into {report.dst}; {report.already} already there; {len(report.skipped)} problem(s)"
    )
    if not console.is_terminal:
        # A log file: plain tab-separated lines, never wrapped, so every name and path stays whole for grep.
        print(summary)
        if report.skipped:
            print(f"problems (kept > 0: the valid prefix was {verb})")
            print("episode\tfile\tframe\tkept\treason")
            for s in report.skipped:
                print(
                    f"{s['episode']}\t{s['file']}\t{'' if s['frame'] is None else s['frame']}\t{s['kept']}\t"
                    f"{s['reason']}"
                )
        return
    console.print(summary)
    if report.skipped:
        table = Table(title=f"problems (kept > 0: the valid prefix was {verb})", show_lines=False)
        for column in ("episode", "file", "frame", "kept", "reason"):
            table.add_column(column, overflow="fold")
        for s in report.skipped:
            table.add_row(
                s["episode"], s["file"], "" if s["frame"] is None else str(s["frame"]), str(s["kept"]), s["reason"]
            )
        console.print(table)
