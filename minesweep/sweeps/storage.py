"""Where an Optuna study lives.

``storage`` in the sweeper config is one of:

- a journal file: ``journal:///abs/path/optuna.journal``, or any path ending in ``.journal`` or
  ``.log``. Safe for many processes writing at once (file locks that work on NFS too): the default, in
  the sweep folder, so the jobs of a sweep and a later rerun of the same command share the study;
- an SQLAlchemy URL: ``sqlite:///path/optuna.db`` (one machine), ``postgresql://...`` or
  ``mysql+pymysql://...`` (a database every cluster node reaches);
- ``null``: in memory (the study is lost when the sweep ends, jobs cannot prune).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

JOURNAL_PREFIX = "journal://"
JOURNAL_SUFFIXES = (".journal", ".log")


def journal_path(spec: str) -> Path | None:
    """The file of a journal storage spec, or None when ``spec`` is not a journal."""
    if spec.startswith(JOURNAL_PREFIX):
        return Path(spec[len(JOURNAL_PREFIX) :])
    if "://" not in spec and spec.endswith(JOURNAL_SUFFIXES):
        return Path(spec)
    return None


def sqlite_path(spec: str) -> Path | None:
    if spec.startswith("sqlite:///"):
        return Path(spec[len("sqlite:///") :])
    return None


def open_storage(spec: Any) -> Any:
    """An Optuna storage object (or URL string, or None) for ``spec``; creates the file's folder."""
    if spec is None or not isinstance(spec, str):
        return spec  # None (in memory) or an already built storage
    spec = spec.strip()
    journal = journal_path(spec)
    if journal is not None:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

        journal = journal.expanduser().absolute()
        journal.parent.mkdir(parents=True, exist_ok=True)
        # Symlink locks work on NFS, where the jobs of a cluster sweep write from several nodes.
        return JournalStorage(JournalFileBackend(str(journal), lock_obj=JournalFileSymlinkLock(str(journal))))
    sqlite = sqlite_path(spec)
    if sqlite is not None:
        from optuna.storages import RDBStorage

        sqlite.parent.mkdir(parents=True, exist_ok=True)
        # Jobs and the sweeper write at once: wait for the lock instead of failing at once.
        return RDBStorage(spec, engine_kwargs={"connect_args": {"timeout": 60}})
    return spec  # any other SQLAlchemy URL: Optuna opens it


def find_storage(sweep_dir: Path) -> str | None:
    """A study storage saved in a sweep folder by the default presets, if any."""
    for name in ("optuna.journal", "optuna.db"):
        path = sweep_dir / name
        if path.is_file():
            return f"{JOURNAL_PREFIX}{path.absolute()}" if name.endswith(".journal") else f"sqlite:///{path.absolute()}"
    return None
