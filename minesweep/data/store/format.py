"""The store format: its files, version, index rows, manifest, checksums and errors (see the package docstring)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from minesweep.data.events import Event

#: 3: per-chunk CRC32 sums checked on every read (2 had none: a flipped byte decoded silently).
FORMAT_VERSION = 4
#: Bump when the meaning of stored actions changes (button order, camera units).
ACTION_SPACE_VERSION = "vpt-20buttons-camera-degrees-1"
CODECS = ("h264", "raw")
MANIFEST, INDEX, JOURNAL, SHARDS = "manifest.json", "index.npy", "episodes.jsonl", "shards"
#: A store's ``labels`` (manifest) when its actions were recorded with the video; "idm:<hash>" when predicted.
HUMAN_LABELS = "human"
#: The per-frame probability of the predicted action, kept with the actions of an IDM-labelled store.
LABEL_CONFIDENCE = "label_confidence"
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
    rows = np.frombuffer(data, np.uint8, count * unit_bytes).reshape(count, unit_bytes)
    # map over the rows of one array view: no Python slicing per unit (that overhead was a third of the hashing)
    return np.fromiter(map(xxhash.xxh3_64_intdigest, rows), np.uint64, count)


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
