"""One episode into the store's bytes: video (h264 GOPs or raw frames), actions .npz, masks, checksums."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import av
import numpy as np

from minesweep.data.events import Event, check_events
from minesweep.data.segmentation import SegmentationError, check_segmentation
from minesweep.data.store.format import (
    _INTEGRITY,
    _SEGMENTATION,
    ACTION_KEYS,
    CODECS,
    EpisodeLengthError,
    _crc,
    _unit_hashes,
)
from minesweep.video import H264Writer


def _env_action_arrays(env_actions: Any, episode_id: str) -> dict[str, np.ndarray]:
    """EnvActions (attributes) or a mapping -> validated arrays with the store dtypes (extra keys are kept)."""
    arrays = {}
    for key, (dtype, tail) in ACTION_KEYS.items():
        value = (
            env_actions[key]
            if isinstance(env_actions, Mapping) and key in env_actions
            else (None if isinstance(env_actions, Mapping) else getattr(env_actions, key, None))
        )
        if value is None:
            raise KeyError(f"episode {episode_id!r}: env actions have no {key!r}")
        value = np.asarray(value).astype(dtype, copy=False)
        if value.ndim != 1 + len(tail) or value.shape[1:] != tail:
            raise ValueError(f"episode {episode_id!r}: actions {key!r} has shape {value.shape}, expected (T, *{tail})")
        arrays[key] = value
    if isinstance(env_actions, Mapping):  # other per-step arrays (e.g. a segmentation modality) travel along
        arrays.update({k: np.asarray(v) for k, v in env_actions.items() if k not in arrays})
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"episode {episode_id!r}: action arrays have different lengths {lengths}")
    return arrays


def _frames_of(frames: Iterable[np.ndarray] | np.ndarray) -> Iterator[np.ndarray]:
    """Single frames from an array ``(T, H, W, 3)`` or an iterable of frames or of frame batches."""
    for item in frames:
        item = np.asarray(item)
        yield from (item if item.ndim == 4 else (item,))


@dataclass(frozen=True)
class EncodedEpisode:
    """One episode's bytes, ready to append to a shard (built in ingest workers, appended by the writer)."""

    id: str
    length: int
    video: bytes
    actions: bytes
    source: str = ""
    frames_seen: int = 0  # frames the source offered (> length: it had more frames than actions)
    segmentation: bytes = b""  # bit-packed masks, one row per frame (empty: no segmentation)
    events: tuple[Event, ...] = ()  # (frame, name), sorted

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.video + self.actions + self.segmentation).hexdigest()

    @property
    def actions_crc(self) -> int:
        return _crc(self.actions)


def validate_episode_id(episode_id: str) -> None:
    if not episode_id or any(c in episode_id for c in "/\\\0\n") or episode_id.startswith("."):
        raise ValueError(f"invalid episode id {episode_id!r}: no path separators or newlines, not starting with '.'")


def encode_episode(
    episode_id: str,
    frames: Iterable[np.ndarray] | np.ndarray,
    env_actions: Any,
    resolution: tuple[int, int],
    codec: str = "h264",
    fps: int = 20,
    chunk_size: int = 32,
    crf: int = 18,
    preset: str = "veryfast",
    source: str = "",
    allow_prefix: bool = False,
    segmentation: Mapping[str, np.ndarray] | None = None,
    events: Iterable[Sequence] | None = None,
) -> EncodedEpisode:
    """Encode frames and actions of one episode in memory. Raises :class:`EpisodeLengthError` when the frame and
    action counts differ (or are zero), ``ValueError`` for a frame of the wrong shape or dtype.

    ``allow_prefix``: where the counts differ, keep the first ``min(frames, actions)`` of both instead (frames past
    the last action are not read, beyond one to notice that there are more).
    ``segmentation``: optional per-frame object masks at ``resolution`` (keys of :mod:`minesweep.data.segmentation`),
    one entry per action.
    ``events``: ``(frame, name)`` pairs (:mod:`minesweep.data.events`), frames within the actions; those past a
    prefix that ``allow_prefix`` keeps are dropped with their frames.
    """
    validate_episode_id(episode_id)
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {CODECS}")
    actions = _env_action_arrays(env_actions, episode_id)
    n_actions = len(actions["buttons"])
    checked_events = check_events(events or (), n_actions, f"episode {episode_id!r}")
    h, w = resolution
    if segmentation is not None:
        segmentation = check_segmentation(segmentation, f"episode {episode_id!r}", length=n_actions)
        if segmentation["mask"].shape[1:] != (h, w):
            raise SegmentationError(
                f"episode {episode_id!r}: segmentation 'mask' is {segmentation['mask'].shape[1:]}"
                f", the store resolution is {(h, w)}"
            )
    seen = 0

    def limited() -> Iterator[np.ndarray]:
        nonlocal seen
        for frame in _frames_of(frames):
            seen += 1
            if allow_prefix and seen > n_actions:
                return
            yield frame

    if codec == "h264":
        buffer = io.BytesIO()
        with H264Writer(buffer, w, h, fps, gop=chunk_size, crf=crf, preset=preset) as video:
            for frame in limited():
                video.write(frame)
        count, video_bytes = video.count, buffer.getvalue()
    else:
        parts = []
        for count, frame in enumerate(limited()):
            if frame.shape != (h, w, 3) or frame.dtype != np.uint8:
                raise ValueError(
                    f"episode {episode_id!r}: frame {count} is {frame.dtype}{list(frame.shape)}, "
                    f"expected uint8[{h}, {w}, 3]"
                )
            parts.append(np.ascontiguousarray(frame).tobytes())
        count, video_bytes = len(parts), b"".join(parts)
    if allow_prefix and 0 < count < n_actions:
        actions = {k: v[:count] for k, v in actions.items()}
        if segmentation is not None:
            segmentation = {k: v[:count] for k, v in segmentation.items()}
        n_actions = count
    if count != n_actions or n_actions == 0:
        raise EpisodeLengthError(episode_id, count, n_actions)
    packed = b""
    if segmentation is not None:
        actions.update({f"{_SEGMENTATION}.{k}": v for k, v in segmentation.items() if k != "mask"})
        packed = np.packbits(segmentation["mask"].reshape(n_actions, -1), axis=1).tobytes()
    actions.update(_checksums(episode_id, codec, video_bytes, n_actions, chunk_size, packed))
    npz = io.BytesIO()
    np.savez(npz, **actions)
    return EncodedEpisode(
        episode_id,
        n_actions,
        video_bytes,
        npz.getvalue(),
        str(source),
        frames_seen=seen,
        segmentation=packed,
        events=tuple(e for e in checked_events if e[0] < n_actions),
    )


def _h264_chunk_bounds(episode_id: str, video: bytes, length: int, chunk_size: int) -> np.ndarray:
    """Byte offsets in ``video`` where each GOP's packets start, and the end of the last: ``(chunks + 1,)``. With
    one stream and closed GOPs the packets of GOP k (frames ``[k * chunk_size, (k + 1) * chunk_size)``) lie
    back to back from its keyframe to the next one."""
    starts, end, total = [], 0, 0
    with av.open(io.BytesIO(video)) as container:
        for packet in container.demux(container.streams.video[0]):
            if packet.size == 0:
                continue  # the demuxer's final empty packet
            if packet.is_keyframe:
                starts.append(packet.pos)
            end, total = max(end, packet.pos + packet.size), total + packet.size
    chunks = -(-length // chunk_size)
    if len(starts) != chunks or starts != sorted(starts) or (starts and end - starts[0] != total):
        raise RuntimeError(
            f"episode {episode_id!r}: the encoded video does not have {chunks} contiguous "
            f"{chunk_size}-frame GOPs (keyframes at bytes {starts[:8]}...); cannot checksum it"
        )
    return np.array(starts + [end], np.int64)


def _checksums(
    episode_id: str, codec: str, video: bytes, length: int, chunk_size: int, masks: bytes
) -> dict[str, np.ndarray]:
    """The ``integrity.*`` arrays of an episode (module docstring): CRC32 per video unit, per mask row and, for
    h264, of the container metadata outside the GOPs."""
    view = memoryview(video)
    out: dict[str, np.ndarray] = {}
    if codec == "h264":
        bounds = _h264_chunk_bounds(episode_id, video, length, chunk_size)
        out[f"{_INTEGRITY}.video_bounds"] = bounds
        out[f"{_INTEGRITY}.header_crc"] = np.uint32(_crc(view[: bounds[0]].tobytes() + view[bounds[-1] :].tobytes()))
        gops = zip(bounds[:-1], bounds[1:], strict=True)
        out[f"{_INTEGRITY}.video_crc"] = np.array([_crc(view[a:b]) for a, b in gops], np.uint32)
    else:  # raw: a unit is a frame
        out[f"{_INTEGRITY}.video_crc"] = _unit_hashes(view, len(video) // length, length)
    if masks:
        out[f"{_INTEGRITY}.segmentation_crc"] = _unit_hashes(masks, len(masks) // length, length)
    return out
