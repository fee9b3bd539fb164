"""The training store: episodes packed into a few large shard files, with an index for one-seek window reads.

Layout of a store folder::

    manifest.json     dataset facts: format/action-space version, fps, resolution, codec, chunk size, counts, and
                      every shard's size and sha256. Written last: a folder without it is an unfinished ingest.
    index.npy         one row per episode (id, length, shard, byte ranges): what readers load, memory-mapped,
                      so a worker holds only the pages it touches, never the whole dataset's metadata.
    episodes.jsonl    the same rows plus each episode's sha256 and source file, one JSON line per episode,
                      appended as ingest goes: the journal a killed ingest resumes from.
    shards/shard-NNNNN.bin
                      episodes back to back: the video bytes, the actions (an uncompressed .npz), and, for
                      episodes that have the segmentation modality, its masks (bit-packed rows, one per frame,
                      so a window's masks are one read; the per-frame ids are in the actions .npz).

Integrity (format 4): every read is checked against a checksum per decoding unit (CRC32 of each h264 GOP, XXH3-64
of each raw frame and mask row: ``_unit_hashes``), so damaged bytes raise
:class:`CorruptDataError` instead of decoding into wrong frames or actions. The units are: each ``chunk_size``-frame
GOP of an h264 video (the bytes from its keyframe to the next; a window decodes whole GOPs) plus the container
metadata around them, checked when a video is opened; each frame of a raw video and each mask row (a window reads
exactly its frames, so per-frame sums never make a read bigger); the actions block as a whole (read once per
episode, then cached). The per-unit sums live in the actions .npz (``integrity.*`` arrays, never returned by
:meth:`EpisodeStore.read_actions`); the actions block's own CRC is in the index row. The sha256 sums (per episode
in the index, per shard in the manifest) cover whole files and are checked by ``minesweep-data verify``.

Video codecs (one per store):

* ``h264``: each episode is an mp4 (H.264 yuv420p) with a keyframe exactly every ``chunk_size`` frames and pts =
  frame index, so a window ``[start, start + n)`` is one seek to the keyframe at or before ``start`` and at most
  ``chunk_size - 1`` frames decoded and thrown away. ~1.4 KB/frame at 128x128.
* ``raw``: uint8 frames ``(T, H, W, 3)``; a window is one ``pread``. 48 KB/frame at 128x128: tests, small data.

A store is appended to episode by episode (:class:`StoreWriter`); shards roll over at ``shard_size`` bytes, so a
dataset of millions of episodes is a few thousand files, not millions.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import xxhash
from av.video.reformatter import VideoReformatter

from minesweep.data.events import Event, check_events
from minesweep.data.segmentation import SegmentationError, check_segmentation
from minesweep.video import H264Writer

__all__ = [
    "ACTION_SPACE_VERSION",
    "CODECS",
    "CorruptDataError",
    "EncodedEpisode",
    "EpisodeLengthError",
    "EpisodeRecord",
    "EpisodeStore",
    "FORMAT_VERSION",
    "StoreWriter",
    "encode_episode",
    "verify_store",
]

#: 3: per-chunk CRC32 sums checked on every read (2 had none: a flipped byte decoded silently).
FORMAT_VERSION = 4
#: Bump when the meaning of stored actions changes (button order, camera units).
ACTION_SPACE_VERSION = "vpt-20buttons-camera-degrees-1"
CODECS = ("h264", "raw")
MANIFEST, INDEX, JOURNAL, SHARDS = "manifest.json", "index.npy", "episodes.jsonl", "shards"
EVENTS = "events.npy"
#: One row per event of the store, sorted by (episode, frame, name); ``name`` indexes ``manifest["events"]["names"]``.
EVENT_DTYPE = np.dtype([("episode", "<i8"), ("frame", "<i8"), ("name", "<i4")])
DEFAULT_SHARD_SIZE = 256 << 20
_SEGMENTATION = "segmentation"  # prefix of the segmentation modality's per-frame arrays in the actions .npz
_INTEGRITY = "integrity"  # prefix of the per-unit checksum arrays in the actions .npz (module docstring)
ACTION_KEYS = {
    "buttons": (np.uint8, (20,)),
    "camera": (np.float32, (2,)),
    "is_null": (np.bool_, ()),
    "esc": (np.bool_, ()),
}


class EpisodeLengthError(ValueError):
    """The video and the action arrays of an episode have different lengths."""

    def __init__(self, episode_id: str, frames: int, actions: int) -> None:
        super().__init__(f"episode {episode_id!r}: video has {frames} frames but there are {actions} actions")
        self.episode_id, self.frames, self.actions = episode_id, frames, actions


class CorruptDataError(ValueError):
    """Stored bytes do not match their checksum (or a store file is damaged). The message names the store, the
    shard file, the episode (id and position) and what is damaged: frames ``[a, b)``, ``actions`` or
    ``segmentation``. Constructible from the message alone, so it survives DataLoader workers' re-raise."""

    def __init__(
        self,
        message: str,
        *,
        episode: str | None = None,
        position: int | None = None,
        what: str | None = None,
        frames: tuple[int, int] | None = None,
        shard: str | None = None,
    ) -> None:
        super().__init__(message)
        self.episode, self.position, self.what, self.frames, self.shard = episode, position, what, frames, shard


def _crc(data: bytes | memoryview) -> int:
    return zlib.crc32(data)  # cheap (GB/s) and catches every burst error up to 32 bits


def _unit_hashes(data: bytes | memoryview, unit_bytes: int, count: int) -> np.ndarray:
    """XXH3-64 of each of ``count`` consecutive units of ``unit_bytes`` bytes (raw frames, mask rows).

    A raw frame is read with one ``pread`` at memory speed, which CRC32 (~2 GB/s here) cannot keep up with: it cost
    a fifth of the raw loader's throughput. XXH3 runs at ~20 GB/s, and as a 64-bit hash it catches any change."""
    view = memoryview(data).cast("B")
    return np.array(
        [xxhash.xxh3_64_intdigest(view[i * unit_bytes : (i + 1) * unit_bytes]) for i in range(count)], np.uint64
    )


@dataclass(frozen=True)
class EpisodeRecord:
    id: str
    length: int
    shard: int
    video_offset: int
    video_size: int
    actions_offset: int
    actions_size: int
    sha256: str = ""  # of the video bytes, the actions bytes and the segmentation bytes, in that order
    source: str = ""
    segmentation_offset: int = 0
    segmentation_size: int = 0  # 0: the episode has no segmentation
    actions_crc: int = 0  # CRC32 of the actions bytes (which hold the checksums of everything else)
    # (frame, name) pairs (minesweep.data.events): journalled with the episode, gathered into events.npy on close.
    # Empty in records read back from the index (the reader has them in EpisodeStore.events).
    events: tuple[Event, ...] = ()

    def __post_init__(self) -> None:  # a journal line gives lists
        object.__setattr__(self, "events", tuple((int(f), str(n)) for f, n in self.events))


def _shard_name(shard: int) -> str:
    return f"{SHARDS}/shard-{shard:05d}.bin"


def _end(record: EpisodeRecord) -> int:
    """The byte after the episode's last byte in its shard."""
    return record.actions_offset + record.actions_size + record.segmentation_size


# --------------------------------------------------------------------------- encoding


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


# --------------------------------------------------------------------------- writing


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _index_array(records: Sequence[EpisodeRecord]) -> np.ndarray:
    id_width = max((len(r.id) for r in records), default=1)
    source_width = max((len(r.source) for r in records), default=1) or 1
    dtype = np.dtype(
        [
            ("id", f"U{id_width}"),
            ("length", "<i8"),
            ("shard", "<i4"),
            ("video_offset", "<i8"),
            ("video_size", "<i8"),
            ("actions_offset", "<i8"),
            ("actions_size", "<i8"),
            ("sha256", "S64"),
            ("source", f"U{source_width}"),
            ("segmentation_offset", "<i8"),
            ("segmentation_size", "<i8"),
            ("actions_crc", "<u4"),
        ]
    )
    return np.array(
        [
            (
                r.id,
                r.length,
                r.shard,
                r.video_offset,
                r.video_size,
                r.actions_offset,
                r.actions_size,
                r.sha256.encode("ascii"),
                r.source,
                r.segmentation_offset,
                r.segmentation_size,
                r.actions_crc,
            )
            for r in records
        ],
        dtype=dtype,
    )


#: Fields every index row must have (a file without them is not this format's index).
_INDEX_FIELDS = (
    "id",
    "length",
    "shard",
    "video_offset",
    "video_size",
    "actions_offset",
    "actions_size",
    "sha256",
    "source",
    "segmentation_offset",
    "segmentation_size",
    "actions_crc",
)


class StoreWriter:
    """Appends episodes to a store folder, resuming one that a killed run left behind; ``close()`` writes the
    index and the manifest (atomically).

    Every appended episode is journalled in ``episodes.jsonl`` after its bytes are on disk. Opening an existing
    folder keeps every journalled episode whose bytes verify (sizes everywhere; sha256 in the last shard, the
    only one a killed run can have left half-written), truncates what follows, and appends from there: an
    interrupted ingest loses at most the episodes in flight, and the result is byte-identical to an
    uninterrupted run over the same inputs in the same order.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: tuple[int, int] = (128, 128),
        fps: int = 20,
        chunk_size: int = 32,
        codec: str = "h264",
        shard_size: int = DEFAULT_SHARD_SIZE,
        crf: int = 18,
        preset: str = "veryfast",
    ) -> None:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose one of {CODECS}")
        self.root = Path(root)
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.fps, self.chunk_size, self.codec = int(fps), int(chunk_size), codec
        self.shard_size, self.crf, self.preset = int(shard_size), crf, preset
        self._check_compatible()
        (self.root / SHARDS).mkdir(parents=True, exist_ok=True)
        self.episodes: list[EpisodeRecord] = self._recover()
        self._ids = {e.id for e in self.episodes}
        self.resumed = len(self.episodes)
        self._journal = open(self.root / JOURNAL, "a", encoding="utf-8")
        self._shard_file = None
        self._closed = False

    # -- resume ----------------------------------------------------------------------------------------------
    def _settings(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "action_space_version": ACTION_SPACE_VERSION,
            "fps": self.fps,
            "resolution": list(self.resolution),
            "chunk_size": self.chunk_size,
            "codec": self.codec,
        }

    def _check_compatible(self) -> None:
        """Appending to an existing store is only allowed with the same settings (else its episodes would mix)."""
        settings_path = self.root / ".settings.json"
        if settings_path.exists():
            existing = json.loads(settings_path.read_text())
            changed = {k: (existing.get(k), v) for k, v in self._settings().items() if existing.get(k) != v}
            if changed:
                detail = ", ".join(f"{k}: store has {a!r}, asked for {b!r}" for k, (a, b) in changed.items())
                raise ValueError(f"{self.root} was written with other settings ({detail}); write to another folder")
        elif (self.root / MANIFEST).exists():
            raise ValueError(f"{self.root / MANIFEST}: not a format-{FORMAT_VERSION} store; write to another folder")
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            _write_json_atomic(settings_path, self._settings())

    def _recover(self) -> list[EpisodeRecord]:
        journal = self.root / JOURNAL
        if not journal.exists():
            return []
        names = {f.name for f in fields(EpisodeRecord)}
        records: list[EpisodeRecord] = []
        with open(journal, "rb") as f:
            for line in f:
                try:
                    data = json.loads(line)
                    records.append(EpisodeRecord(**{k: v for k, v in data.items() if k in names}))
                except (ValueError, TypeError):
                    break  # a line cut by the kill: nothing after it is trusted
        last_shard = max((r.shard for r in records), default=0)
        kept: list[EpisodeRecord] = []
        handles: dict[int, Any] = {}
        try:
            for record in records:
                path = self.root / _shard_name(record.shard)
                end = _end(record)
                if not path.exists() or path.stat().st_size < end:
                    break
                if record.shard == last_shard:
                    f = handles.setdefault(record.shard, open(path, "rb"))
                    f.seek(record.video_offset)
                    if hashlib.sha256(f.read(end - record.video_offset)).hexdigest() != record.sha256:
                        break
                kept.append(record)
        finally:
            for f in handles.values():
                f.close()
        # Cut everything after the last good episode: partial bytes, later shards, unverified journal lines.
        end_shard = kept[-1].shard if kept else 0
        for path in sorted((self.root / SHARDS).glob("shard-*.bin")):
            if int(path.stem.split("-")[1]) > end_shard:
                path.unlink()
        shard_path = self.root / _shard_name(end_shard)
        if shard_path.exists():
            with open(shard_path, "r+b") as f:
                f.truncate(_end(kept[-1]) if kept else 0)
        tmp = journal.with_name(f".{JOURNAL}.tmp")
        tmp.write_text("".join(json.dumps(asdict(r)) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, journal)
        (self.root / MANIFEST).unlink(missing_ok=True)  # the store is being changed: readers must not trust it
        return kept

    # -- appending -------------------------------------------------------------------------------------------
    def __contains__(self, episode_id: str) -> bool:
        return episode_id in self._ids

    def add_episode(
        self,
        episode_id: str,
        frames: Iterable[np.ndarray] | np.ndarray,
        env_actions: Any,
        source: str = "",
        segmentation: Mapping[str, np.ndarray] | None = None,
        events: Iterable[Sequence] | None = None,
    ) -> EpisodeRecord:
        """Encode ``frames`` (an array ``(T, H, W, 3)`` or an iterable of frames or of frame batches) with the
        actions (and optional segmentation masks, see :func:`encode_episode`) and append them. Nothing of the
        episode is kept if anything fails (bad frame, iterator error, length mismatch)."""
        if episode_id in self._ids:
            raise ValueError(f"episode {episode_id!r} was already added to {self.root}")
        encoded = encode_episode(
            episode_id,
            frames,
            env_actions,
            self.resolution,
            self.codec,
            self.fps,
            self.chunk_size,
            self.crf,
            self.preset,
            source,
            segmentation=segmentation,
            events=events,
        )
        return self.append(encoded)

    def append(self, episode: EncodedEpisode) -> EpisodeRecord:
        """Append an episode encoded elsewhere (:func:`encode_episode`, e.g. in an ingest worker process)."""
        if self._closed:
            raise RuntimeError(f"store writer for {self.root} is closed")
        validate_episode_id(episode.id)
        if episode.id in self._ids:
            raise ValueError(f"episode {episode.id!r} was already added to {self.root}")
        shard, offset = self._shard_for(len(episode.video) + len(episode.actions) + len(episode.segmentation))
        self._shard_file.write(episode.video)
        self._shard_file.write(episode.actions)
        self._shard_file.write(episode.segmentation)
        self._shard_file.flush()
        os.fsync(self._shard_file.fileno())
        actions_offset = offset + len(episode.video)
        record = EpisodeRecord(
            episode.id,
            episode.length,
            shard,
            offset,
            len(episode.video),
            actions_offset,
            len(episode.actions),
            episode.sha256,
            episode.source,
            actions_offset + len(episode.actions),
            len(episode.segmentation),
            episode.actions_crc,
            episode.events,
        )
        self._journal.write(json.dumps(asdict(record)) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self.episodes.append(record)
        self._ids.add(episode.id)
        return record

    def _shard_for(self, size: int) -> tuple[int, int]:
        """The shard to append ``size`` bytes to, and the offset there: a new shard once the current is full."""
        if self._shard_file is None:
            shard = self.episodes[-1].shard if self.episodes else 0
            self._shard_file = open(self.root / _shard_name(shard), "ab")
            self._shard_index = shard
        offset = self._shard_file.tell()
        if offset > 0 and offset + size > self.shard_size:
            self._shard_file.close()
            self._shard_index += 1
            self._shard_file = open(self.root / _shard_name(self._shard_index), "ab")
            offset = 0
        return self._shard_index, offset

    def close(self) -> Path:
        """Write ``index.npy`` and ``manifest.json``; the store is readable from then on."""
        path = self.root / MANIFEST
        if self._closed:
            return path
        if self._shard_file is not None:
            self._shard_file.close()
        self._journal.close()
        index = _index_array(self.episodes)
        tmp = self.root / f".{INDEX}.tmp.npy"
        np.save(tmp, index)
        os.replace(tmp, self.root / INDEX)
        events = self._write_events()
        shards = sorted({e.shard for e in self.episodes})
        _write_json_atomic(
            path,
            {
                **self._settings(),
                "num_episodes": len(self.episodes),
                "num_frames": int(sum(e.length for e in self.episodes)),
                # size: checked on every open (cheap); sha256: by `minesweep-data verify` (reads the whole index)
                "index": {
                    "file": INDEX,
                    "size": (self.root / INDEX).stat().st_size,
                    "sha256": _file_sha256(self.root / INDEX),
                },
                "events": events,
                "shards": [
                    {
                        "file": _shard_name(s),
                        "size": (self.root / _shard_name(s)).stat().st_size,
                        "sha256": _file_sha256(self.root / _shard_name(s)),
                    }
                    for s in shards
                ],
            },
        )
        self._closed = True
        return path

    def _write_events(self) -> dict[str, Any]:
        """``events.npy`` (every episode's events, :data:`EVENT_DTYPE`) and its manifest entry: the names, the count
        of each, the file's size and sha256."""
        names = sorted({name for record in self.episodes for _, name in record.events})
        code = {name: i for i, name in enumerate(names)}
        rows = [
            (position, frame, code[name])
            for position, record in enumerate(self.episodes)
            for frame, name in record.events
        ]
        table = np.array(sorted(rows), dtype=EVENT_DTYPE)
        tmp = self.root / f".{EVENTS}.tmp.npy"
        np.save(tmp, table)
        os.replace(tmp, self.root / EVENTS)
        counts = np.bincount(table["name"], minlength=len(names)) if len(table) else np.zeros(len(names), int)
        return {
            "file": EVENTS,
            "size": (self.root / EVENTS).stat().st_size,
            "sha256": _file_sha256(self.root / EVENTS),
            "names": names,
            "counts": {name: int(n) for name, n in zip(names, counts, strict=True)},
        }

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- reading

_INHERITED: list = []  # open videos inherited through fork(), kept alive on purpose (see EpisodeStore._own_handles)


class _ByteRange(io.RawIOBase):
    """A read-only file object over bytes ``[offset, offset + size)`` of an open file descriptor (``pread``: no
    shared file position, so any number of these can read one shard at once)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__()
        self.fd, self.offset, self.size, self.pos = fd, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        if n == 0:
            return 0
        got = os.preadv(self.fd, [memoryview(buffer)[:n]], self.offset + self.pos)
        self.pos += got
        return got

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos


class _OpenVideo:
    """An open mp4 container of one episode and its video stream (one per episode per process)."""

    def __init__(self, source: _ByteRange) -> None:
        self.container = av.open(source, mode="r")
        self.stream = self.container.streams.video[0]
        # Single-threaded decode and colour conversion: frames are small, loader workers already run in parallel,
        # and ffmpeg thread pools do not survive fork() (freeing one in a forked child deadlocks).
        self.stream.codec_context.thread_count = 1
        self.time_base = self.stream.time_base
        self.start = self.stream.start_time or 0  # pts of frame 0 (mp4 edit lists usually make it 0)
        # One reformatter per video keeps its swscale context: frame.to_ndarray(format=...) rebuilds it per frame
        # and is ~4x slower for small frames. The pixels are identical.
        self.reformatter = VideoReformatter()

    def close(self) -> None:
        self.container.close()


class _Episodes(Sequence):
    """``store.episodes``: records built on access from the memory-mapped index (no per-episode objects held)."""

    def __init__(self, index: np.ndarray) -> None:
        self._index = index

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> EpisodeRecord:  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = self._index[i]
        return EpisodeRecord(
            str(row["id"]),
            int(row["length"]),
            int(row["shard"]),
            int(row["video_offset"]),
            int(row["video_size"]),
            int(row["actions_offset"]),
            int(row["actions_size"]),
            row["sha256"].decode("ascii"),
            str(row["source"]),
            int(row["segmentation_offset"]),
            int(row["segmentation_size"]),
            int(row["actions_crc"]),
        )


_MANIFEST_KEYS = {
    "format_version": int,
    "fps": int,
    "resolution": list,
    "chunk_size": int,
    "codec": str,
    "num_episodes": int,
    "shards": list,
}


def _read_manifest(path: Path) -> dict[str, Any]:
    """``manifest.json``, with errors that name it and say what is wrong (and what to do)."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptDataError(
            f"{path}: not valid JSON ({err}): the manifest is truncated or damaged; re-ingest the "
            "store, or restore the file"
        ) from err
    if not isinstance(manifest, dict):
        raise CorruptDataError(
            f"{path}: expected a JSON object, got {type(manifest).__name__}: the manifest is "
            "damaged; re-ingest the store, or restore the file"
        )
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        if isinstance(version, int) and version < FORMAT_VERSION:
            raise ValueError(
                f"{path}: a format-{version} store; this version of minesweep reads format "
                f"{FORMAT_VERSION}, which checksums every chunk so that damaged data cannot be read "
                "silently. Re-ingest the recordings into a new folder (`minesweep-data ingest SRC DST` "
                "or `minesweep-data import-minestudio SRC DST`)"
            )
        raise ValueError(
            f"{path}: format_version {version!r}, expected {FORMAT_VERSION} "
            "(re-ingest the recordings with this version of minesweep)"
        )
    for key, kind in _MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise CorruptDataError(
                f"{path}: {key!r} is {manifest.get(key)!r}, expected a {kind.__name__}: the "
                "manifest is damaged; re-ingest the store, or restore the file"
            )
    return manifest


def _load_index(root: Path, manifest: Mapping[str, Any]) -> np.ndarray:
    """``index.npy``, memory-mapped, checked against the manifest (size, fields, rows) without reading it all."""
    path = root / INDEX
    expected = manifest.get("index", {}).get("size") if isinstance(manifest.get("index"), dict) else None
    try:
        size = path.stat().st_size
        if expected is not None and size != expected:
            raise ValueError(f"it is {size} bytes, the manifest says {expected} (truncated or replaced)")
        index = np.load(path, mmap_mode="r")
        fields = index.dtype.names or ()
        missing = [f for f in _INDEX_FIELDS if f not in fields]
        if index.ndim != 1 or missing:
            raise ValueError(
                f"expected one row per episode with fields {list(_INDEX_FIELDS)}, got shape "
                f"{index.shape} with fields {list(fields)}"
            )
    except FileNotFoundError:
        raise CorruptDataError(f"{path} is missing: the store is incomplete; re-ingest it") from None
    except (ValueError, OSError, EOFError) as err:
        raise CorruptDataError(
            f"{path}: not a valid store index: {err}. Restore the file or re-ingest the store"
        ) from err
    if len(index) != manifest["num_episodes"]:
        raise CorruptDataError(
            f"{path} has {len(index)} episodes, the manifest says {manifest['num_episodes']}: "
            "restore the file or re-ingest the store"
        )
    return index


class EpisodeStore:
    """Read side of a store folder. Cheap to create and to pickle: shards are opened lazily, per process, so it is
    safe in fork- and spawn-started DataLoader workers. Episodes are addressed by position or by id."""

    max_open = 16  # open mp4 containers kept per process (LRU)
    max_cached_actions = 256  # episodes whose action arrays are kept per process (LRU)
    #: Internal, for benchmarks/loader_throughput.py only (the cost of checking): False skips every checksum.
    _verify_reads = True

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            hint = (
                " (an ingest into it did not finish: run it again to resume)" if (self.root / JOURNAL).exists() else ""
            )
            raise FileNotFoundError(f"no store at {self.root}: {path} does not exist{hint}")
        manifest = _read_manifest(path)
        self.manifest = manifest
        self.fps: int = int(manifest["fps"])
        self.resolution: tuple[int, int] = tuple(manifest["resolution"])
        self.chunk_size: int = int(manifest["chunk_size"])
        self.codec: str = manifest["codec"]
        self.index = _load_index(self.root, manifest)
        self.episodes = _Episodes(self.index)
        self._by_id: dict[str, int] | None = None  # built on first lookup by id
        self._pid = os.getpid()
        self._fds: dict[int, int] = {}
        self._videos: OrderedDict[int, _OpenVideo] = OrderedDict()
        self._actions: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.decoded_frames = 0  # frames decoded by the last read_frames (seek cost included)
        self._events: np.ndarray | None = None  # events.npy, loaded on first use

    def __len__(self) -> int:
        return len(self.index)

    @property
    def lengths(self) -> np.ndarray:
        """Frames per episode, ``(N,)`` int64."""
        return np.asarray(self.index["length"])

    def position(self, episode: int | str) -> int:
        """The position of an episode given by position or id."""
        if isinstance(episode, (int, np.integer)):
            if not 0 <= episode < len(self.index):
                raise IndexError(f"episode {episode} out of range: store {self.root} has {len(self.index)} episodes")
            return int(episode)
        if self._by_id is None:
            self._by_id = {str(e): i for i, e in enumerate(self.index["id"])}
        try:
            return self._by_id[episode]
        except KeyError:
            raise KeyError(f"unknown episode {episode!r} in store {self.root}") from None

    def episode(self, episode: int | str) -> EpisodeRecord:
        return self.episodes[self.position(episode)]

    # -- processes: never share an open container or descriptor across processes --------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(
            _videos=OrderedDict(), _actions=OrderedDict(), _fds={}, _by_id=None, index=None, episodes=None, _events=None
        )
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.index = _load_index(self.root, self.manifest)
        self.episodes = _Episodes(self.index)

    def _own_handles(self) -> None:
        if self._pid != os.getpid():  # forked after opening: this process opens its own
            # Never free the parent's containers: their ffmpeg objects may reference threads that do not exist here.
            _INHERITED.append(self._videos)
            self._videos, self._actions, self._fds, self._pid = OrderedDict(), OrderedDict(), {}, os.getpid()

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.root / _shard_name(shard), os.O_RDONLY)
        return fd

    def _video(self, position: int, record: EpisodeRecord) -> _OpenVideo:
        video = self._videos.pop(position, None)
        if video is None:
            if self._verify_reads:
                self._check_header(position, record)
            try:
                video = _OpenVideo(_ByteRange(self._fd(record.shard), record.video_offset, record.video_size))
            except av.error.FFmpegError as err:
                raise RuntimeError(
                    f"episode {record.id!r}: its video in {self.root / _shard_name(record.shard)} "
                    f"cannot be opened: {err}"
                ) from err
            while len(self._videos) >= self.max_open:
                self._videos.popitem(last=False)[1].close()
        self._videos[position] = video
        return video

    def close(self) -> None:
        self._own_handles()
        for video in self._videos.values():
            video.close()
        self._videos.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # -- events ------------------------------------------------------------------------------------------------
    @property
    def has_events(self) -> bool:
        """Whether the store records events at all (written by a minesweep that keeps them; it may hold none)."""
        return isinstance(self.manifest.get("events"), dict)

    @property
    def event_names(self) -> list[str]:
        return list(self.manifest["events"]["names"]) if self.has_events else []

    @property
    def event_counts(self) -> dict[str, int]:
        """Occurrences of each event name in the whole store."""
        return dict(self.manifest["events"]["counts"]) if self.has_events else {}

    @property
    def events(self) -> np.ndarray:
        """Every event of the store, :data:`EVENT_DTYPE` rows ``(episode position, frame, name code)`` sorted by
        episode and frame; ``event_names[code]`` is the name. Empty for a store without events."""
        if self._events is None:
            self._events = self._load_events()
        return self._events

    def _load_events(self) -> np.ndarray:
        if not self.has_events:
            return np.zeros(0, EVENT_DTYPE)
        entry, path = self.manifest["events"], self.root / EVENTS
        try:
            size = path.stat().st_size
            if size != entry.get("size"):
                raise ValueError(f"it is {size} bytes, the manifest says {entry.get('size')} (truncated or replaced)")
            table = np.load(path, mmap_mode="r")
            if table.dtype != EVENT_DTYPE or table.ndim != 1:
                raise ValueError(f"expected rows of {EVENT_DTYPE}, got {table.dtype} with shape {table.shape}")
        except FileNotFoundError:
            raise CorruptDataError(f"{path} is missing (the manifest lists events): restore it or re-ingest") from None
        except (ValueError, OSError, EOFError) as err:
            raise CorruptDataError(f"{path}: not a valid event table: {err}. Restore it or re-ingest") from err
        names = entry.get("names", [])
        episodes, codes = table["episode"], table["name"]
        bad = (episodes < 0) | (episodes >= len(self)) | (codes < 0) | (codes >= len(names))
        if not bad.any():
            bad = table["frame"] >= self.lengths[table["episode"]]
        if bad.any() or (table["frame"] < 0).any():
            raise CorruptDataError(f"{path}: event rows point outside the store's episodes or names: re-ingest")
        return table

    def episode_events(self, episode: int | str) -> list[tuple[int, str]]:
        """``(frame, name)`` pairs of one episode."""
        position = self.position(episode)
        table = self.events
        lo, hi = np.searchsorted(table["episode"], [position, position + 1])
        names = self.event_names
        return [(int(f), names[int(n)]) for f, n in zip(table["frame"][lo:hi], table["name"][lo:hi], strict=True)]

    # -- reading ---------------------------------------------------------------------------------------------
    @property
    def has_segmentation(self) -> bool:
        """Whether any episode carries the segmentation modality."""
        return bool((np.asarray(self.index["segmentation_size"]) > 0).any())

    def read_segmentation(self, episode: int | str, start: int, length: int) -> dict[str, np.ndarray] | None:
        """Segmentation of frames ``[start, start + length)``: mask (length, h, w) bool, object_id int32,
        interaction int8, valid bool (length,); None when the episode has none. The masks are one read, each row
        checked against its CRC32 (:class:`CorruptDataError` on a mismatch)."""
        self._own_handles()
        position = self.position(episode)
        record = self.episodes[position]
        if record.segmentation_size == 0:
            return None
        if start < 0 or length < 0 or start + length > record.length:
            raise IndexError(
                f"episode {record.id!r}: segmentation frames [{start}, {start + length}) out of range "
                f"[0, {record.length})"
            )
        h, w = self.resolution
        row = -(-h * w // 8)
        actions = self.read_actions(position)
        data = os.pread(self._fd(record.shard), row * length, record.segmentation_offset + row * start)
        if self._verify_reads:
            self._check_units(
                position,
                record,
                "segmentation",
                data,
                np.arange(start, start + length + 1) * row,
                self._sums(position)["segmentation_crc"][start : start + length],
                start,
            )
        packed = np.frombuffer(data, np.uint8).reshape(length, row)
        out = {"mask": np.unpackbits(packed, axis=1, count=h * w).reshape(length, h, w).astype(bool)}
        for key in ("object_id", "interaction", "valid"):
            out[key] = actions[f"{_SEGMENTATION}.{key}"][start : start + length]
        return out

    def read_actions(self, episode: int | str) -> dict[str, np.ndarray]:
        """The env actions of an episode: buttons (T, 20) uint8, camera (T, 2) float32, is_null, esc (T,) bool
        (and the segmentation modality's per-frame ids, ``segmentation.*``, where the episode has it). The block is
        checked against its CRC32 when read from the shard (:class:`CorruptDataError`), then cached."""
        self._own_handles()
        position = self.position(episode)
        cached = self._actions.pop(position, None)
        if cached is None:
            record = self.episodes[position]
            data = os.pread(self._fd(record.shard), record.actions_size, record.actions_offset)
            if self._verify_reads and (len(data) != record.actions_size or _crc(data) != record.actions_crc):
                raise self._corrupt(
                    position,
                    record,
                    "actions",
                    None,
                    "CRC32 mismatch"
                    if len(data) == record.actions_size
                    else f"the shard ends {record.actions_size - len(data)} bytes early",
                )
            try:
                with np.load(io.BytesIO(data)) as npz:
                    everything = {k: npz[k] for k in npz.files}
            except (ValueError, OSError, EOFError, KeyError) as err:  # unverified reads only: a sum catches it first
                raise self._corrupt(position, record, "actions", None, f"cannot be parsed: {err}") from err
            prefix = f"{_INTEGRITY}."
            cached = (
                {k: v for k, v in everything.items() if not k.startswith(prefix)},
                {k[len(prefix) :]: v for k, v in everything.items() if k.startswith(prefix)},
            )
            while len(self._actions) >= self.max_cached_actions:
                self._actions.popitem(last=False)
        self._actions[position] = cached
        return cached[0]

    # -- integrity -------------------------------------------------------------------------------------------
    def _sums(self, position: int) -> dict[str, np.ndarray]:
        """The ``integrity.*`` arrays of an episode (read with, and verified like, its actions)."""
        cached = self._actions.get(position)
        if cached is None:
            self.read_actions(position)
            cached = self._actions[position]
        return cached[1]

    def _corrupt(
        self, position: int, record: EpisodeRecord, what: str, frames: tuple[int, int] | None, why: str
    ) -> CorruptDataError:
        shard = self.root / _shard_name(record.shard)
        kind = what
        if frames is not None:  # video frames [a, b) / segmentation masks of frames [a, b)
            kind = f"{'segmentation masks of' if what == 'segmentation' else what} frames [{frames[0]}, {frames[1]})"
        return CorruptDataError(
            f"corrupt data in store {self.root}: episode {record.id!r} (position {position}), {kind}, in shard "
            f"{shard}: {why}. Restore the shard or re-ingest; `minesweep-data verify {self.root}` lists every damaged "
            "episode",
            episode=record.id,
            position=position,
            what=what,
            frames=frames,
            shard=str(shard),
        )

    def _video_unit_frames(self) -> int:
        """Frames per checksummed video unit: a GOP for h264 (the decoding unit), a frame for raw (one pread)."""
        return self.chunk_size if self.codec == "h264" else 1

    def _video_bounds(
        self, position: int, record: EpisodeRecord, first: int = 0, last: int | None = None
    ) -> np.ndarray:
        """Byte offsets in the episode's video where units ``first..last`` (default: to the end) start, and where
        the last one ends."""
        stop = None if last is None else last + 2
        if self.codec == "h264":
            return self._sums(position)["video_bounds"][first:stop]
        frame_bytes = self.resolution[0] * self.resolution[1] * 3  # raw: a unit is a frame, no table needed
        return np.arange(first, record.length + 1 if stop is None else stop, dtype=np.int64) * frame_bytes

    def _check_units(
        self,
        position: int,
        record: EpisodeRecord,
        what: str,
        data: bytes | memoryview,
        bounds: np.ndarray,
        crcs: np.ndarray,
        first: int,
        unit_frames: int = 1,
        collect: list[CorruptDataError] | None = None,
        base: int | None = None,
    ) -> None:
        """Check ``data`` (the bytes from offset ``base``, default ``bounds[0]``, on) unit by unit against ``crcs``.
        Unit ``j`` is ``data[bounds[j] - base:bounds[j + 1] - base]``, frames from ``(first + j) * unit_frames``.
        Raises the first mismatch, or appends every one to ``collect``."""
        view = memoryview(data)
        base = int(bounds[0]) if base is None else base
        short = len(view) < int(bounds[-1]) - base
        computed: list[int | None] | None = None
        if what == "segmentation" or self.codec == "raw":  # units of one size: checked in one vectorised pass
            size = int(bounds[1] - bounds[0]) if len(bounds) > 1 else 0
            start = int(bounds[0]) - base
            whole = max(0, min(len(crcs), (len(view) - start) // size)) if size else 0
            sums = _unit_hashes(view[start : start + whole * size], size, whole).tolist() if whole else []
            computed = [*sums, *[None] * (len(crcs) - whole)]
            if computed == crcs.tolist():
                return
        for j, crc in enumerate(crcs.tolist()):
            a, b = int(bounds[j]) - base, int(bounds[j + 1]) - base
            if b > len(view) or (computed[j] if computed is not None else _crc(view[a:b])) != crc:
                frames = ((first + j) * unit_frames, min((first + j + 1) * unit_frames, record.length))
                error = self._corrupt(
                    position,
                    record,
                    what,
                    frames,
                    "the shard ends early" if short and b > len(view) else "checksum mismatch",
                )
                if collect is None:
                    raise error
                collect.append(error)

    def _check_header(
        self, position: int, record: EpisodeRecord, collect: list[CorruptDataError] | None = None
    ) -> None:
        """The h264 container metadata (the bytes around the GOPs: ftyp, the mdat header, moov)."""
        bounds = self._video_bounds(position, record)
        fd = self._fd(record.shard)
        head = os.pread(fd, int(bounds[0]), record.video_offset)
        tail = os.pread(fd, record.video_size - int(bounds[-1]), record.video_offset + int(bounds[-1]))
        if _crc(head + tail) != int(self._sums(position)["header_crc"]):
            error = self._corrupt(
                position, record, "video header", None, "CRC32 mismatch in the mp4 container metadata (all frames)"
            )
            if collect is None:
                raise error
            collect.append(error)

    def _check_frames(
        self, position: int, record: EpisodeRecord, start: int, stop: int, data: bytes | memoryview | None = None
    ) -> None:
        """Check the video units holding frames ``[start, stop)``: reads their bytes unless ``data`` (raw frames
        ``[start, stop)`` already read) is given."""
        unit = self._video_unit_frames()
        first, last = start // unit, (stop - 1) // unit
        bounds = self._video_bounds(position, record, first, last)
        if data is None:
            data = os.pread(self._fd(record.shard), int(bounds[-1] - bounds[0]), record.video_offset + int(bounds[0]))
        self._check_units(
            position, record, "video", data, bounds, self._sums(position)["video_crc"][first : last + 1], first, unit
        )

    def verify_episode(self, episode: int | str) -> list[CorruptDataError]:
        """Every damaged part of an episode (all video units, the header, the actions, all mask rows), as errors;
        ``[]`` when it is intact. Reads all its bytes."""
        self._own_handles()
        position = self.position(episode)
        record = self.episodes[position]
        self._actions.pop(position, None)  # check the bytes on disk, not a cached copy
        try:
            data = os.pread(self._fd(record.shard), record.actions_size, record.actions_offset)
            if _crc(data) != record.actions_crc:  # here whatever _verify_reads says
                missing = record.actions_size - len(data)
                raise self._corrupt(
                    position,
                    record,
                    "actions",
                    None,
                    f"the shard ends {missing} bytes early" if missing else "CRC32 mismatch",
                )
            self.read_actions(position)
        except CorruptDataError as err:
            return [err]  # the per-unit sums of the rest are in the damaged block: nothing more can be checked
        problems: list[CorruptDataError] = []
        if self.codec == "h264":
            self._check_header(position, record, collect=problems)
        bounds = self._video_bounds(position, record)
        data = os.pread(self._fd(record.shard), record.video_size, record.video_offset)
        self._check_units(
            position,
            record,
            "video",
            data,
            bounds,
            self._sums(position)["video_crc"],
            0,
            self._video_unit_frames(),
            collect=problems,
            base=0,
        )
        if record.segmentation_size:
            data = os.pread(self._fd(record.shard), record.segmentation_size, record.segmentation_offset)
            row = record.segmentation_size // record.length
            self._check_units(
                position,
                record,
                "segmentation",
                data,
                np.arange(record.length + 1) * row,
                self._sums(position)["segmentation_crc"],
                0,
                collect=problems,
            )
        return problems

    def read_video_bytes(self, episode: int | str) -> bytes:
        """The stored video of an episode as is: an mp4 (``h264``) or raw frames (``raw``), e.g. to export it."""
        self._own_handles()
        position = self.position(episode)
        record = self.episodes[position]
        data = os.pread(self._fd(record.shard), record.video_size, record.video_offset)
        if self._verify_reads:
            self.read_actions(position)  # verifies the block holding the sums
            if self.codec == "h264":
                self._check_header(position, record)
            self._check_units(
                position,
                record,
                "video",
                data,
                self._video_bounds(position, record),
                self._sums(position)["video_crc"],
                0,
                self._video_unit_frames(),
                base=0,
            )
        return data

    def read_frames(self, episode: int | str, start: int, length: int, out: np.ndarray | None = None) -> np.ndarray:
        """Frames ``[start, start + length)`` of an episode as uint8 ``(length, H, W, 3)``, written into ``out`` (a
        C-contiguous array of that shape, e.g. a slice of a shared-memory batch) when given. The chunks read are
        checked against their checksums first (h264: the GOPs decoded; raw: the frames): :class:`CorruptDataError`."""
        self._own_handles()
        position = self.position(episode)
        record = self.episodes[position]
        if start < 0 or length < 0 or start + length > record.length:
            raise IndexError(
                f"episode {record.id!r}: frames [{start}, {start + length}) out of range [0, {record.length})"
            )
        h, w = self.resolution
        if out is None:
            out = np.empty((length, h, w, 3), np.uint8)
        elif out.shape != (length, h, w, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            raise ValueError(
                f"out must be a C-contiguous uint8 array of shape {(length, h, w, 3)}, got {out.dtype}{list(out.shape)}"
            )
        self.decoded_frames = 0
        if length == 0:
            return out
        if self._verify_reads:
            self.read_actions(position)  # loads (and verifies) the sums of this episode's units
        if self.codec == "raw":
            frame_bytes = h * w * 3
            got = os.preadv(
                self._fd(record.shard), [memoryview(out).cast("B")], record.video_offset + start * frame_bytes
            )
            if got != length * frame_bytes:
                raise self._corrupt(
                    position, record, "video", (start, start + length), "the shard is shorter than the index says"
                )
            if self._verify_reads:  # per frame: exactly the bytes just read, no extra read
                self._check_frames(position, record, start, start + length, memoryview(out).cast("B"))
            self.decoded_frames = length
            return out
        if self._verify_reads:  # the GOPs the decoder will use, before it sees them
            self._check_frames(position, record, start - start % self.chunk_size, start + length)
        video = self._video(position, record)
        keyframe = start - start % self.chunk_size
        got = self._decode_into(video, keyframe, start, out)
        if got < 0:  # the seek landed after `start` (unexpected file layout): decode from the beginning instead
            if self._verify_reads:
                self._check_frames(position, record, 0, start + length)
            got = self._decode_into(video, 0, start, out)
        if got != length:
            raise RuntimeError(
                f"episode {record.id!r} ({self.root / _shard_name(record.shard)}): decoded only "
                f"{max(got, 0)} of frames [{start}, {start + length}); the video is shorter than the "
                "index says"
            )
        return out

    def _decode_into(self, video: _OpenVideo, keyframe: int, start: int, out: np.ndarray) -> int:
        """Seek to frame ``keyframe``, decode, fill ``out`` with frames from ``start``. Returns the number filled,
        or -1 if the first decoded frame is already past ``start``."""
        keyframe_pts = video.start + int(Fraction(keyframe, self.fps) / video.time_base)
        video.container.seek(keyframe_pts, stream=video.stream, backward=True, any_frame=False)
        filled, end = 0, start + len(out)
        for frame in video.container.decode(video.stream):
            self.decoded_frames += 1
            index = round(float((frame.pts - video.start) * video.time_base) * self.fps)
            if filled == 0 and index > start:
                return -1
            if index < start:
                continue
            out[index - start] = video.reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
            filled += 1
            if index + 1 >= end:
                break
        return filled


# --------------------------------------------------------------------------- verifying


@dataclass
class VerifyReport:
    """What :func:`verify_store` found: ``problems`` is empty for an intact store."""

    root: str
    episodes: int = 0
    frames: int = 0
    # {episode (id or None for a file), position, shard, what, frames ([a, b) or None), message}
    problems: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(root: str | Path) -> VerifyReport:
    """Check a whole store: the index's size and sha256 and each shard's against the manifest, and every episode's
    video units, container metadata, actions and mask rows against their CRC32 sums. A store that cannot be opened
    (damaged manifest or index) is one problem."""
    report = VerifyReport(str(root))

    def problem(
        what: str,
        message: str,
        episode: str | None = None,
        position: int | None = None,
        shard: str | None = None,
        frames: tuple[int, int] | None = None,
    ) -> None:
        report.problems.append(
            {
                "episode": episode,
                "position": position,
                "shard": shard,
                "what": what,
                "frames": list(frames) if frames else None,
                "message": message,
            }
        )

    try:
        store = EpisodeStore(root)
    except (ValueError, OSError) as err:
        problem("store", str(err))
        return report
    try:
        index = store.manifest.get("index")
        if isinstance(index, dict) and index.get("sha256") != _file_sha256(store.root / INDEX):
            problem("index", f"{store.root / INDEX}: sha256 does not match the manifest", shard=INDEX)
        if store.has_events:
            path = store.root / EVENTS
            if not path.is_file() or _file_sha256(path) != store.manifest["events"].get("sha256"):
                problem("events", f"{path}: missing, or its sha256 does not match the manifest", shard=EVENTS)
        for shard in store.manifest["shards"]:
            path = store.root / shard["file"]
            if not path.is_file():
                problem("shard", f"{path} is missing", shard=shard["file"])
            elif path.stat().st_size != shard["size"] or _file_sha256(path) != shard["sha256"]:
                problem(
                    "shard",
                    f"{path}: size or sha256 does not match the manifest (the episodes in it are "
                    "checked one by one below)",
                    shard=shard["file"],
                )
        for position in range(len(store)):
            record = store.episodes[position]
            report.episodes += 1
            report.frames += record.length
            try:
                errors = store.verify_episode(position)
            except OSError as err:
                errors = [store._corrupt(position, record, "episode", None, f"cannot be read: {err}")]
            for err in errors:
                problem(
                    err.what or "episode",
                    str(err),
                    episode=err.episode,
                    position=err.position,
                    shard=_shard_name(record.shard),
                    frames=err.frames,
                )
    finally:
        store.close()
    return report
