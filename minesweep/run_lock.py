"""One run per run folder: ``run.lock`` names the process that trains in it.

A run folder is fixed by the overrides (so that ``ckpt_path=last`` finds it again), so two runs started with the
same overrides, or with different ``trainer.max_steps`` (not part of the name), would write the same ``last.ckpt``,
``train.log`` and ``job.json``. The first run takes the lock; a second is refused with the holder's host, PID and
start time. A lock whose process is gone (same host; or the same SLURM job, requeued) is taken over with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"


class RunFolderLocked(RuntimeError):
    """Another live run holds the run folder."""


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused PID from the holder."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _me() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start": _process_start(os.getpid()),
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }


def _is_stale(holder: dict[str, Any]) -> bool:
    """Is the process that wrote ``holder`` certainly gone?"""
    me = _me()
    if holder.get("slurm_job_id") and holder.get("slurm_job_id") == me["slurm_job_id"]:
        return True  # the same SLURM job, requeued: its earlier run has ended
    if holder.get("host") != me["host"]:
        return False  # no way to look at another host's processes
    pid = int(holder.get("pid", -1))
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    start = _process_start(pid)
    return holder.get("process_start") is not None and start is not None and start != holder["process_start"]


def _describe(holder: dict[str, Any]) -> str:
    return f"host {holder.get('host')}, PID {holder.get('pid')}, started {holder.get('started')}" + (
        f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    )


@contextmanager
def run_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``folder/run.lock`` while the body runs; refuse if a live run holds it."""
    path = Path(folder) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _me()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
            except FileNotFoundError:
                continue  # released meanwhile
            except ValueError:
                holder = {}  # a lock written half by a killed process
            if holder and not _is_stale(holder):
                raise RunFolderLocked(
                    f"the run folder {path.parent} is in use by another run ({_describe(holder)}): wait for it to end, "
                    f"change an override to train in another folder, or, if that run is gone, delete {path}"
                ) from None
            log.warning(
                "taking over the lock of a run that is gone (%s): %s",
                _describe(holder) if holder else "unreadable lock file",
                path,
            )
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me) + "\n")
        break
    else:
        raise RunFolderLocked(f"could not take the lock {path}: other runs keep taking it")
    try:
        yield path
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == me["pid"]:
                path.unlink()
        except (OSError, ValueError):
            pass


def owns_run_folder() -> bool:
    """The process that takes the lock: not the extra DDP ranks a launcher starts with the same command line."""
    return all(int(os.environ.get(key, "0") or 0) == 0 for key in ("LOCAL_RANK", "RANK", "SLURM_PROCID"))
