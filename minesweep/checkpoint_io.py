"""Checkpoints written whole or not at all: a file under a checkpoint's final name is never partial.

Lightning writes a checkpoint straight to its final name; a full disk or a kill during the write leaves a truncated
``last.ckpt`` or ``best-*.ckpt`` that the next ``ckpt_path=last`` fails on (or, worse, a resume from an older
state). ``AtomicCheckpointIO`` writes to a temporary file in the same folder, flushes it to disk (fsync), renames it
over the final name (atomic on POSIX) and syncs the folder. A failed save removes the temporary file (freeing the
space it took, so the job's record can still be written) and raises ``CheckpointSaveError`` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class CheckpointSaveError(OSError):
    """A checkpoint could not be written; nothing was left under its name."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with write-to-temporary, fsync, rename for local paths (others: Lightning's own)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path):  # object stores: Lightning's fsspec path
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint takes no storage_options, got {storage_options}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException as error:
            tmp.unlink(missing_ok=True)
            if isinstance(error, Exception):  # torch.save reports a failed write as a RuntimeError
                reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).strip()
                free = os.statvfs(path.parent).f_bavail * os.statvfs(path.parent).f_frsize
                raise CheckpointSaveError(
                    f"could not save checkpoint {path}: {reason} ({free / 2**20:.0f} MiB free on its file system)"
                ) from error
            raise
        fd = os.open(path.parent, os.O_RDONLY)
        try:  # the rename itself reaches the disk
            os.fsync(fd)
        finally:
            os.close(fd)
