"""Reading a store: ``EpisodeStore`` reads any frame range, actions and masks of any episode, each checked
against its checksums."""

from __future__ import annotations

import io
import os
from collections import OrderedDict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from minesweep.data.store.format import (
    _INTEGRITY,
    _SEGMENTATION,
    EVENT_DTYPE,
    EVENTS,
    HUMAN_LABELS,
    JOURNAL,
    MANIFEST,
    CorruptDataError,
    EpisodeRecord,
    _crc,
    _load_index,
    _read_manifest,
    _shard_name,
    _unit_hashes,
)
from minesweep.video import ByteRange, OpenVideo

_INHERITED: list = []  # open videos inherited through fork(), kept alive on purpose (see EpisodeStore._own_handles)


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
        #: where the actions come from: "human" (recorded with the video) or "idm:<checkpoint hash>" (predicted)
        self.labels: str = str(manifest.get("labels", HUMAN_LABELS))
        self.index = _load_index(self.root, manifest)
        self.episodes = _Episodes(self.index)
        self._by_id: dict[str, int] | None = None  # built on first lookup by id
        self._pid = os.getpid()
        self._fds: dict[int, int] = {}
        self._videos: OrderedDict[int, OpenVideo] = OrderedDict()
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

    def _video(self, position: int, record: EpisodeRecord) -> OpenVideo:
        video = self._videos.pop(position, None)
        if video is None:
            if self._verify_reads:
                self._check_header(position, record)
            try:
                video = OpenVideo(ByteRange(self._fd(record.shard), record.video_offset, record.video_size))
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
            sums = _unit_hashes(view[start : start + whole * size], size, whole) if whole else crcs[:0]
            if whole == len(crcs) and np.array_equal(sums, crcs):
                return
            computed = [*sums.tolist(), *[None] * (len(crcs) - whole)]
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

    def _decode_into(self, video: OpenVideo, keyframe: int, start: int, out: np.ndarray) -> int:
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
