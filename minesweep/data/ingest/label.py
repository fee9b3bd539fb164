"""Pseudo-labelling: videos without actions -> a training store whose actions an inverse dynamics model predicted.

VPT's method: an IDM (``policy=idm_tiny``, ``policy=vpt_idm_4x``; trained with ``objective=[idm]``) labels
unlabelled video, and a policy is then trained by behaviour cloning on those labels as on any store.

    minesweep-data label VIDEOS STORE --idm RUN/checkpoints/last.ckpt [--workers N --codec raw|h264 ...]

``VIDEOS`` is a folder of ``.mp4`` files (searched recursively; a ``.jsonl`` beside one is ignored: the IDM's
labels are the point) or a store (its frames are labelled again, its events kept). Each episode is decoded and
resized to the IDM's frame size (the store's resolution), cut into overlapping windows of ``window`` frames every
``stride`` frames, and each frame takes its action from the window whose centre it is nearest to (so, away from
an episode's ends, it sees ``window / 4`` frames of past and future at least). An action is the most likely
class of each factored component (20 buttons, 2 camera axes); its ``label_confidence`` is that action's
probability (the product over the 22 components), stored per frame with the actions. ``data.min_label_confidence``
masks the frames below a threshold in training.

The store records where its labels come from: ``labels: "idm:<first 12 hex of the checkpoint's sha256>"`` in its
manifest (a store ingested from recordings says ``"human"``). Like ``ingest``: parallel (one process per worker,
each with its own copy of the IDM), resumable (a re-run keeps the episodes already there and adds the rest, in the
same order, and the IDM runs on one thread per process, so the store's bytes depend neither on a restart nor on
the number of workers; a store labelled by another checkpoint is refused),
with a progress bar and the same bad-input report (``<dst>/ingest_report.json``, the same table).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minesweep.actions.space import CAMERA_NULL_BIN, bins_to_camera
from minesweep.data.ingest.pipeline import (
    DecodeError,
    IngestReport,
    Progress,
    append_episodes,
    decoded_frames,
    episode_id,
    finish,
    is_utf8,
    run_jobs,
)
from minesweep.data.store import (
    DEFAULT_SHARD_SIZE,
    LABEL_CONFIDENCE,
    MANIFEST,
    EncodedEpisode,
    EpisodeStore,
    StoreWriter,
    encode_episode,
)
from minesweep.policies.heads import FactoredActionHead

__all__ = ["label", "label_source", "predict_actions", "window_starts"]
ON_ERROR = ("skip", "prefix")
_WINDOWS_PER_BATCH = 8  # windows the IDM reads at once


def label_source(checkpoint: str | Path) -> str:
    """``idm:<first 12 hex of the checkpoint file's sha256>``: what labelled a store."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"idm:{digest.hexdigest()[:12]}"


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Starts of the windows that cover ``length`` frames: every ``stride`` frames, the last one ending with the
    episode (one window, padded, for an episode shorter than ``window``)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


@torch.no_grad()
def predict_actions(
    idm: torch.nn.Module, frames: np.ndarray, window: int, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An IDM's actions for every frame of one episode ``(T, H, W, 3)`` uint8: button presses ``(T, 20)`` uint8,
    camera bins ``(T, 2)`` int64 and the probability of each frame's predicted action ``(T,)`` float32. Each frame
    is predicted by the window (see :func:`window_starts`) whose centre is nearest to it."""
    length = len(frames)
    starts = window_starts(length, window, stride)
    buttons = np.zeros((length, 20), np.uint8)
    camera = np.full((length, 2), CAMERA_NULL_BIN, np.int64)
    confidence = np.zeros(length, np.float32)
    distance = np.full(length, np.inf)
    device = next(idm.parameters()).device
    for first in range(0, len(starts), _WINDOWS_PER_BATCH):
        group = starts[first : first + _WINDOWS_PER_BATCH]
        image = np.zeros((len(group), window, *frames.shape[1:]), np.uint8)
        mask = np.zeros((len(group), window), np.float32)
        for b, s in enumerate(group):
            n = min(window, length - s)
            image[b, :n], mask[b, :n] = frames[s : s + n], 1.0
        latents, _ = idm({"image": torch.from_numpy(image).to(device), "mask": torch.from_numpy(mask).to(device)})
        best = {name: logp.max(-1) for name, logp in latents["pi_logits"].items()}  # each (values, indices)
        log_conf = (best["buttons"].values.sum(-1) + best["camera"].values.sum(-1)).float().cpu().numpy()
        pressed = best["buttons"].indices.cpu().numpy().astype(np.uint8)
        bins = best["camera"].indices.cpu().numpy()
        centre = (window - 1) / 2
        for b, s in enumerate(group):
            n = min(window, length - s)
            d = np.abs(np.arange(n) - centre)
            take = d < distance[s : s + n]  # ties keep the earlier window
            t = np.flatnonzero(take)
            buttons[s + t], camera[s + t] = pressed[b, t], bins[b, t]
            confidence[s + t] = np.exp(log_conf[b, t])
            distance[s + t] = d[t]
    return buttons, camera, confidence


@dataclass(frozen=True)
class _Job:
    episode: str
    source: str
    mp4: Path | None = None  # a video file, or
    position: int | None = None  # an episode of the source store


@dataclass(frozen=True)
class _Settings:
    checkpoint: str
    src: str
    resolution: tuple[int, int]
    codec: str
    fps: int
    chunk_size: int
    window: int
    stride: int
    on_error: str


_IDM: dict[tuple, Any] = {}  # per process: the IDM of the checkpoint file (path, size, mtime), loaded once


def _load(checkpoint: str) -> Any:
    stat = os.stat(checkpoint)
    key = (os.path.realpath(checkpoint), stat.st_size, stat.st_mtime_ns)
    if key not in _IDM:
        from minesweep.eval import load_policy  # the eval's strict, checkpoint-only loader

        _IDM.clear()  # one IDM at a time
        _IDM[key] = load_policy(None, checkpoint)
    return _IDM[key]


def _label_one(job: _Job, settings: _Settings) -> tuple[EncodedEpisode | None, list[dict]]:
    """Worker: one video (or source-store episode) -> its labelled episode (or None) and the problems found."""
    problems: list[dict] = []
    file = str(job.mp4) if job.mp4 is not None else f"{settings.src} (episode {job.episode})"

    def problem(reason: str, frame: int | None = None, kept: int = 0) -> None:
        problems.append({"episode": job.episode, "file": file, "reason": reason, "frame": frame, "kept": kept})

    events: list = []
    if job.mp4 is not None:
        batches: list[np.ndarray] = []
        try:
            for batch in decoded_frames(job.mp4, settings.resolution, None):
                batches.append(batch)
        except DecodeError as err:
            problem(str(err), frame=err.frame)
            if settings.on_error != "prefix" or not batches:
                return None, problems
        frames = np.concatenate(batches) if batches else np.zeros((0, *settings.resolution, 3), np.uint8)
    else:
        store = EpisodeStore(settings.src)
        length = int(store.lengths[job.position])
        try:
            frames = store.read_frames(job.position, 0, length)
        except (OSError, ValueError, RuntimeError) as err:  # CorruptDataError is a ValueError: named, not labelled
            problem(f"cannot be read: {err}")
            return None, problems
        events = store.episode_events(job.position)
    if len(frames) == 0:
        problem("video has no frames", frame=0)
        return None, problems
    idm = _load(settings.checkpoint)
    pressed, bins, confidence = predict_actions(idm, frames, settings.window, settings.stride)
    actions = {
        "buttons": pressed,
        "camera": bins_to_camera(bins).astype(np.float32),
        "is_null": (pressed.sum(1) == 0) & (bins == CAMERA_NULL_BIN).all(1),
        "esc": np.zeros(len(frames), bool),
        LABEL_CONFIDENCE: confidence,
    }
    encoded = encode_episode(
        job.episode,
        frames,
        actions,
        settings.resolution,
        settings.codec,
        settings.fps,
        settings.chunk_size,
        source=job.source,
        events=events,
    )
    for p in problems:
        p["kept"] = encoded.length
    return encoded, problems


def _jobs(src: Path, report: IngestReport) -> list[_Job]:
    if (src / MANIFEST).is_file():  # a store: label its episodes again
        store = EpisodeStore(src)
        return [_Job(e.id, e.source or e.id, position=i) for i, e in enumerate(store.episodes)]
    jobs = []
    for path in sorted(p for p in src.rglob("*.mp4") if p.is_file()):
        if not is_utf8(path):
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            report.skip(shown, shown, "file name is not valid UTF-8: rename it")
            continue
        jobs.append(_Job(episode_id(src, path), os.fspath(path.relative_to(src)), mp4=path))
    return jobs


def label(
    src_dir: str | Path,
    dst_dir: str | Path,
    idm_checkpoint: str | Path,
    *,
    window: int | None = None,
    stride: int | None = None,
    workers: int = 1,
    codec: str = "raw",
    fps: int = 20,
    shard_size: int = DEFAULT_SHARD_SIZE,
    on_error: str = "skip",
    progress: bool = True,
    print_summary: bool = True,
) -> IngestReport:
    """Label every ``.mp4`` under ``src_dir`` (or every episode of the store there) with the IDM of
    ``idm_checkpoint`` into a store at ``dst_dir`` (see the module). ``window``: frames the IDM sees at once
    (default: its ``timesteps``); ``stride``: frames between window starts (default ``window // 2``); frames are
    resized to the IDM's frame size. ``on_error``: a video that stops decoding is skipped, or (``"prefix"``) its
    frames before the error are labelled."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    src, dst, checkpoint = Path(src_dir), Path(dst_dir), Path(idm_checkpoint)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    if not checkpoint.is_file():
        raise FileNotFoundError(f"--idm: no checkpoint file at {checkpoint}")
    started = time.perf_counter()
    idm = _load(str(checkpoint))  # here too: its frame size and window are the store's
    if not isinstance(idm.pi_head, FactoredActionHead):
        raise ValueError(
            f"--idm {checkpoint}: its policy '{getattr(idm, 'name', '?')}' is not an inverse dynamics model "
            "(train one with policy=idm_tiny 'objective=[idm]')"
        )
    resolution = tuple(int(v) for v in idm.img_shape[:2])
    window = int(window or getattr(idm, "timesteps", 0) or 32)
    stride = int(stride or max(1, window // 2))
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in [1, window={window}], got {stride}")
    source = label_source(checkpoint)
    report = IngestReport(src=str(src), dst=str(dst))
    settings = _Settings(str(checkpoint), str(src), resolution, codec, fps, 32, window, stride, on_error)
    jobs = _jobs(src, report)
    if workers > 1:
        _IDM.clear()  # the workers load their own
    with StoreWriter(dst, resolution=resolution, fps=fps, codec=codec, shard_size=shard_size, labels=source) as writer:
        todo = [job for job in jobs if job.episode not in writer]
        report.already = len(jobs) - len(todo)
        with Progress(len(jobs), report.already, enabled=progress, name="label") as bar, _one_thread():
            # one thread in each worker too (see _one_thread)
            work = partial(_label_one, settings=settings)
            results = run_jobs(work, todo, workers, "video", initializer=torch.set_num_threads, initargs=(1,))
            append_episodes(results, writer, report, bar)
    finish(report, dst, started, print_summary, verb="labelled")
    return report


@contextmanager
def _one_thread() -> Iterator[None]:
    """The IDM runs on one thread per process (parallel across worker processes), so that its float sums, and the
    store's bytes, do not depend on the number of workers or of cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
