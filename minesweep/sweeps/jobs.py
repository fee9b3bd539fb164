"""The record each job leaves in its folder, for people and for ``minesweep-sweep-report``.

- ``job.json``: state (``running``, ``completed``, ``pruned``, ``failed``, ``stopped`` by SIGTERM/Ctrl-C with
  ``last.ckpt`` saved, ``requeued`` while waiting to
  run again), overrides, job number and SLURM job id, host, start/end/duration of every run of the job
  (a requeued job runs several times: ``restarts`` counts them), the checkpoint it resumed from and
  its step, the optimised metric's value, the final metrics, the checkpoints and the Optuna trial.
- ``metrics.json``: the final metrics ``train()`` returned.
- ``error.log``: the traceback of a failed job.

``JobRecord`` is a Hydra callback (``hydra.callbacks.job_record`` in conf/train.yaml): Hydra calls its
``on_job_start``/``on_job_end`` around every job, failed ones included, and hands ``on_job_end`` the exception that
ended a job (also submitit's ``SystemExit`` after a requeue). At the end of an Optuna trial it also tells the trial's
outcome to the study (``minesweep.sweeps.trial``). Training itself knows nothing of it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from minesweep.atomic_file import write_text_atomic
from minesweep.sweeps.trial import JobTrial, trial_number

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
METRICS_FILE = "metrics.json"  # written by minesweep.train.main: the final metrics train() returned
ERROR_FILE = "error.log"


def is_rank_zero() -> bool:
    """DDP ranks started by srun or torchrun share the job folder: only rank 0 writes the record."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").strip():
            return int(os.environ[key]) == 0
    return True


def restart_count() -> int:
    """How many times SLURM restarted this job (requeue, node failure); 0 elsewhere."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader (the report, a requeued job) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def update_record(job_dir: Path, **fields: Any) -> dict[str, Any]:
    record = read_json(job_dir / JOB_FILE)
    record.update(fields)
    write_json(job_dir / JOB_FILE, record)
    return record


def checkpoint_step(path: str | Path) -> int | None:
    """The global step saved in a Lightning checkpoint (memory-mapped: cheap for big files)."""
    try:
        import torch

        return int(torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)["global_step"])
    except Exception:
        return None


def mark_dead(job_dir: Path, reason: str, stderr: Any = None) -> None:
    """Record a job that ended without returning (called by the launcher in the sweep process)."""
    tail = ""
    if stderr and Path(str(stderr)).is_file():
        tail = "\n".join(Path(str(stderr)).read_text(errors="replace").splitlines()[-60:])
    (job_dir / ERROR_FILE).parent.mkdir(parents=True, exist_ok=True)
    (job_dir / ERROR_FILE).write_text(f"{reason}\n\n--- end of {stderr} ---\n{tail}\n")
    update_record(job_dir, state="failed", error=ERROR_FILE, reason=reason, ended=_now())


class JobRecord(Callback):
    """The Hydra callback that records every job (module docstring)."""

    def __init__(self) -> None:
        self._recorder: JobRecorder | None = None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._recorder = JobRecorder.for_current_job()
        if self._recorder is not None:
            self._recorder.start(config)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is None:
            return
        if job_return.status == JobStatus.COMPLETED:
            recorder.end(config, value=job_return.return_value)
        else:
            recorder.end(config, error=job_return._return_value)  # the exception (Hydra keeps it there)


def requeued_by_submitit(error: BaseException) -> bool:
    """submitit ends a job it has requeued with a ``SystemExit`` raised in its signal handler
    (``checkpoint_and_try_requeue``, called directly or by ``GracefulStop``): find that frame in the traceback."""
    if not isinstance(error, SystemExit):
        return False
    frame = error.__traceback__
    while frame is not None:
        code = frame.tb_frame.f_code
        if code.co_name == "checkpoint_and_try_requeue" and "submitit" in code.co_filename:
            return True
        frame = frame.tb_next
    return False


class JobRecorder:
    """Writes ``job.json`` (and ``error.log``) for the running Hydra job; tells its Optuna trial."""

    def __init__(self, hydra_cfg: DictConfig) -> None:
        self.hydra_cfg = hydra_cfg
        self.job_dir = Path(hydra_cfg.runtime.output_dir)
        self._started = time.time()

    @classmethod
    def for_current_job(cls) -> JobRecorder | None:
        from hydra.core.hydra_config import HydraConfig

        return cls(HydraConfig.get()) if HydraConfig.initialized() else None

    def start(self, cfg: DictConfig) -> None:
        self._started = time.time()
        if not is_rank_zero():
            return
        record = read_json(self.job_dir / JOB_FILE)
        ckpt = cfg.get("ckpt_path")
        resumed_from = str(self.job_dir / "checkpoints" / "last.ckpt") if ckpt == "last" else ckpt
        runs = record.get("runs", [])
        runs.append({"started": _now(), "restart": restart_count(), "host": socket.gethostname()})
        record.update(
            state="running",
            overrides=list(self.hydra_cfg.overrides.task),
            job_num=OmegaConf.select(self.hydra_cfg, "job.num", default=None),
            job_id=OmegaConf.select(self.hydra_cfg, "job.id", default=None),
            slurm_job_id=os.environ.get("SLURM_JOB_ID"),
            host=socket.gethostname(),
            started=record.get("started", runs[0]["started"]),
            restarts=restart_count(),
            runs=runs,
            resumed_from=resumed_from,
            resumed_step=checkpoint_step(resumed_from) if resumed_from else None,
            optimized_metric=cfg.get("optimized_metric"),
            trial=trial_number(self.hydra_cfg),
        )
        for stale in ("ended", "error", "reason", "value", "pruned_at_step"):
            record.pop(stale, None)
        write_json(self.job_dir / JOB_FILE, record)
        if record["trial"] is not None:
            self._trial_call("set_user_attr", "job_dir", str(self.job_dir))

    def end(self, cfg: DictConfig, value: Any = None, error: BaseException | None = None) -> None:
        from minesweep.graceful_stop import StopRequested
        from minesweep.sweeps.pruning import PRUNED_METRIC

        if not is_rank_zero():
            return
        record = read_json(self.job_dir / JOB_FILE)
        duration = time.time() - self._started
        number: float | None = None
        if error is None:
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = None
        metrics = read_json(self.job_dir / METRICS_FILE) if error is None else {}
        pruned_at = int(metrics[PRUNED_METRIC]) if PRUNED_METRIC in metrics else None  # OptunaPruning's final metric
        if error is not None and requeued_by_submitit(error):
            state = "requeued"  # submitit's SystemExit after scontrol requeue: the job runs again
        elif isinstance(error, StopRequested):
            state = "stopped"  # SIGTERM or Ctrl-C: last.ckpt saved, ckpt_path=last continues
        elif error is not None:
            state = "failed"
        else:
            state = "pruned" if pruned_at is not None else "completed"
        runs = record.get("runs") or [{}]
        runs[-1].update(ended=_now(), state=state, duration_s=round(duration, 1))
        record.update(
            state=state,
            ended=_now(),
            runs=runs,
            duration_s=round(sum(r.get("duration_s") or 0 for r in runs), 1),
            value=number if number is None or math.isfinite(number) else str(number),
            metrics=metrics,
            pruned_at_step=pruned_at,
            checkpoint=_existing(self.job_dir / "checkpoints" / "last.ckpt"),
            best_checkpoint=_best_checkpoint(self.job_dir),
        )
        if state == "failed":
            (self.job_dir / ERROR_FILE).write_text("".join(traceback.format_exception(error)))
            record["error"] = ERROR_FILE
        if state in ("failed", "stopped"):
            record["reason"] = f"{type(error).__name__}: {error}".splitlines()[0][:500]
        write_json(self.job_dir / JOB_FILE, record)
        if record.get("trial") is not None and state != "requeued":
            outcome = {"completed": "complete", "pruned": "pruned", "failed": "fail", "stopped": "fail"}[state]
            self._trial_call("tell", outcome, number)

    def _trial_call(self, method: str, *args: Any) -> None:
        """Annotate or finish this job's Optuna trial; the sweeper covers for a job that cannot."""
        try:
            trial = JobTrial.from_hydra(self.hydra_cfg)
            if trial is not None:
                getattr(trial, method)(*args)
        except Exception as error:
            log.warning("Optuna trial %s: %s failed: %s", args, method, error)


def _existing(path: Path) -> str | None:
    return str(path) if path.is_file() else None


def _best_checkpoint(job_dir: Path) -> str | None:
    best = sorted((job_dir / "checkpoints").glob("best-*.ckpt"))
    return str(best[-1]) if best else None
