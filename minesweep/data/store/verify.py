"""``minesweep-data verify``: every episode and file of a store checked against its checksums."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from minesweep.data.store.format import EVENTS, INDEX, _shard_name
from minesweep.data.store.reader import EpisodeStore
from minesweep.data.store.writer import _file_sha256


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
