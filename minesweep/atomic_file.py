"""Small files written whole or not at all: a reader (a requeued job, a sweep report, another loader, a resumed
ingest) sees the old content or the new, never a part. Checkpoints have their own, fsync'ing path
(minesweep.checkpoint_io)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["write_text_atomic"]


def write_text_atomic(path: str | Path, text: str, mode: int = 0o644) -> None:
    """Write ``text`` to a temporary file beside ``path`` (a unique name: concurrent writers never share one) and
    rename it over ``path``. ``mode``: mkstemp's 0600 would hide the file from others sharing the folder."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
