"""Writing a store: episodes appended to shards and journalled; a killed ingest resumes; ``close()`` writes the
index and the manifest."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

from minesweep.atomic_file import write_text_atomic
from minesweep.data.store.encode import EncodedEpisode, encode_episode, validate_episode_id
from minesweep.data.store.format import (
    ACTION_SPACE_VERSION,
    CODECS,
    DEFAULT_SHARD_SIZE,
    EVENT_DTYPE,
    EVENTS,
    FORMAT_VERSION,
    HUMAN_LABELS,
    INDEX,
    JOURNAL,
    MANIFEST,
    SHARDS,
    EpisodeRecord,
    _end,
    _index_array,
    _shard_name,
)


def _write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        labels: str = HUMAN_LABELS,
    ) -> None:
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose one of {CODECS}")
        self.root = Path(root)
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.fps, self.chunk_size, self.codec = int(fps), int(chunk_size), codec
        self.shard_size, self.crf, self.preset = int(shard_size), crf, preset
        self.labels = str(labels)  # where the actions come from: "human" (recordings) or "idm:<checkpoint hash>"
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
            "labels": self.labels,
        }

    def _check_compatible(self) -> None:
        """Appending to an existing store is only allowed with the same settings (else its episodes would mix)."""
        settings_path = self.root / ".settings.json"
        if settings_path.exists():
            existing = {"labels": HUMAN_LABELS, **json.loads(settings_path.read_text())}  # before labels: human
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

    def __exit__(self, exc_type: type[BaseException] | None, *exc: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # an error or Ctrl-C mid-way: no manifest, so no reader takes this for a finished store
            self.abort()

    def abort(self) -> None:
        """Stop without writing the index and manifest: the store reads as unfinished ("run it again to resume"),
        and a new writer on the folder keeps every journalled episode."""
        if self._closed:
            return
        if self._shard_file is not None:
            self._shard_file.close()
        self._journal.close()
        self._closed = True
