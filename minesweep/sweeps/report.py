"""``minesweep-sweep-report SWEEP_DIR``: every job of a sweep in one table, and a figure.

The table lists each job (its swept overrides, final metrics, state, duration, restarts, checkpoint),
sorted by the optimised metric (best first; jobs without a value last). The figure
(``SWEEP_DIR/sweep_report.png`` unless ``--png``) plots the metric against each swept parameter and,
when the sweep folder holds an Optuna study, the optimisation history and the parameters' importances.

Sources: each job folder's ``job.json`` / ``metrics.json`` (``minesweep.sweeps.jobs``), Hydra's
``.hydra/overrides.yaml`` for jobs without one, and the study storage (``optuna.journal`` /
``optuna.db``) for trial states, parameters and trials that have no folder yet.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minesweep.sweeps.jobs import JOB_FILE, METRICS_FILE, read_json
from minesweep.sweeps.storage import find_storage, open_storage

log = logging.getLogger(__name__)

#: states in table order after the metric: finished ones first
STATE_ORDER = {
    "completed": 0,
    "complete": 0,
    "pruned": 1,
    "running": 2,
    "requeued": 2,
    "waiting": 3,
    "failed": 4,
    "fail": 4,
}


@dataclass
class Job:
    num: int | None
    folder: Path | None
    state: str
    overrides: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    value: float | None = None
    duration_s: float | None = None
    restarts: int = 0
    checkpoint: str | None = None
    trial: int | None = None
    params: dict[str, Any] = field(default_factory=dict)  # Optuna's view of the trial's parameters
    error: str | None = None


# -- reading a sweep ---------------------------------------------------------------------------
def parse_overrides(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if sep and not key.startswith(("hydra.", "+hydra.", "++hydra.")):
            out[key.lstrip("+~")] = value
    return out


def _folder_num(folder: Path) -> int | None:
    head = folder.name.split("_", 1)[0]
    return int(head) if head.isdigit() else None


def read_job(folder: Path, metric: str) -> Job | None:
    record = read_json(folder / JOB_FILE)
    overrides_file = folder / ".hydra" / "overrides.yaml"
    if not record and not overrides_file.is_file():
        return None
    if record.get("overrides") is not None:
        overrides = parse_overrides(record["overrides"])
    else:
        from omegaconf import OmegaConf

        overrides = parse_overrides(list(OmegaConf.load(overrides_file)))
    metrics = record.get("metrics") or read_json(folder / METRICS_FILE)
    value = metrics.get(metric)
    if value is None and isinstance(record.get("value"), (int, float)) and record.get("optimized_metric") == metric:
        value = record["value"]
    state = record.get("state") or ("completed" if metrics else "unknown")
    return Job(
        num=record.get("job_num", _folder_num(folder)),
        folder=folder,
        state=state,
        overrides=overrides,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        value=float(value) if isinstance(value, (int, float)) else None,
        duration_s=record.get("duration_s"),
        restarts=int(record.get("restarts") or 0),
        checkpoint=record.get("checkpoint"),
        trial=record.get("trial"),
        error=record.get("reason") or (record.get("error") and str(folder / record["error"])),
    )


def read_jobs(sweep_dir: Path, metric: str) -> list[Job]:
    jobs = [job for folder in sorted(p for p in sweep_dir.iterdir() if p.is_dir()) if (job := read_job(folder, metric))]
    return jobs


def load_studies(sweep_dir: Path) -> list[Any]:
    spec = find_storage(sweep_dir)
    if spec is None:
        return []
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(spec)
    return [
        optuna.load_study(study_name=s.study_name, storage=storage) for s in optuna.get_all_study_summaries(storage)
    ]


def merge_trials(jobs: list[Job], study: Any, metric: str) -> list[Job]:
    """Trial states and parameters onto the jobs (matched by trial number), plus trials without a job folder."""
    by_trial = {job.trial: job for job in jobs if job.trial is not None}
    for trial in study.get_trials(deepcopy=False):
        job = by_trial.get(trial.number)
        state = trial.state.name.lower()
        if job is None:
            job = Job(num=trial.number, folder=None, state=state, trial=trial.number)
            jobs.append(job)
        job.params = dict(trial.params)
        if not (state == "running" and job.state in ("requeued", "failed")):  # the job folder knows better
            job.state = {"complete": "completed", "fail": "failed"}.get(state, state)
        if job.value is None and trial.value is not None and trial.state.name in ("COMPLETE", "PRUNED"):
            job.value = float(trial.value)
    return jobs


def swept_parameters(jobs: list[Job]) -> list[str]:
    """Parameters whose values differ between jobs (Optuna parameters, or varying overrides)."""
    names: list[str] = []
    for job in jobs:
        for key in list(job.params) + list(job.overrides):
            if key not in names:
                names.append(key)
    swept = []
    for key in names:
        values = {
            str(job.params.get(key, job.overrides.get(key)))
            for job in jobs
            if key in job.params or key in job.overrides
        }
        if len(values) > 1:
            swept.append(key)
    return swept


def param_value(job: Job, key: str) -> Any:
    if key in job.params:
        return job.params[key]
    raw = job.overrides.get(key)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        return raw


def sort_jobs(jobs: list[Job], maximize: bool = False) -> list[Job]:
    """Completed jobs by the metric (best first), then pruned ones (their value is from an earlier
    step, not comparable), then running, then failed."""

    def key(job: Job) -> tuple:
        has_value = job.value is not None and math.isfinite(job.value)
        value = (-job.value if maximize else job.value) if has_value else 0.0
        group = STATE_ORDER.get(job.state, 5)
        return (group, not has_value, value, job.num if job.num is not None else 1 << 30)

    return sorted(jobs, key=key)


# -- the table ---------------------------------------------------------------------------------
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def table(jobs: list[Job], metric: str, sweep_dir: Path, extra_metrics: list[str]) -> str:
    swept = swept_parameters(jobs)
    header = ["#", "job", "state", metric, *extra_metrics, *swept, "duration", "restarts", "checkpoint"]
    rows = []
    for rank, job in enumerate(jobs, 1):
        ckpt = job.checkpoint
        if ckpt:
            try:
                ckpt = str(Path(ckpt).resolve().relative_to(sweep_dir.resolve()))
            except ValueError:
                pass
        rows.append(
            [
                str(rank),
                _fmt(job.num),
                job.state,
                _fmt(job.value),
                *[_fmt(job.metrics.get(m)) for m in extra_metrics],
                *[_fmt(param_value(job, key)) for key in swept],
                _fmt_duration(job.duration_s),
                str(job.restarts),
                ckpt or "-",
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    widths[-1] = len(header[-1])  # the checkpoint path is last and not padded
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in rows]
    failures = [job for job in jobs if job.state == "failed"]
    if failures:
        lines.append("")
        lines += [f"failed job {_fmt(job.num)}: {failure_summary(job)}" for job in failures]
    return "\n".join(lines)


def failure_summary(job: Job) -> str:
    """The exception line of the job's error.log (or the launcher's reason), and where to read more."""
    path = Path(job.error) if job.error and Path(job.error).is_file() else None
    if path is None and job.folder is not None and (job.folder / "error.log").is_file():
        path = job.folder / "error.log"
    if path is None:
        return job.error or "no error.log (the trial failed in the sweeper, see its log)"
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    exception = next(
        (line for line in reversed(lines) if not line.startswith((" ", "\t", "---"))), lines[0] if lines else ""
    )
    return f"{exception[:200]} ({path})"


# -- the figure --------------------------------------------------------------------------------
STATE_COLORS = {"completed": "tab:blue", "pruned": "tab:orange", "failed": "tab:red"}


def _auto_yscale(ax: Any, values: list[float]) -> None:
    """Log scale when a few diverged jobs would flatten everything else."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")


def figure(jobs: list[Job], metric: str, studies: list[Any], path: Path, maximize: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = swept_parameters(jobs)
    study = studies[0] if studies else None
    panels = len(swept) + (2 if study is not None else 0)
    cols = min(3, max(panels, 1))
    rows = max(1, math.ceil(max(panels, 1) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    flat = list(axes.flat)
    valued = [job for job in jobs if job.value is not None and math.isfinite(job.value)]

    for ax, key in zip(flat, swept, strict=False):
        points = [(param_value(job, key), job.value, job.state) for job in valued if param_value(job, key) is not None]
        numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x, _, _ in points)
        if numeric and points:
            xs = [float(x) for x, _, _ in points]
            if min(xs) > 0 and max(xs) / min(xs) > 100:
                ax.set_xscale("log")
        else:
            categories = sorted({str(x) for x, _, _ in points})
            ax.set_xticks(range(len(categories)), categories, rotation=20, fontsize=8)
            xs = [categories.index(str(x)) for x, _, _ in points]
        for state in sorted({s for _, _, s in points}):
            sel = [i for i, (_, _, s) in enumerate(points) if s == state]
            ax.scatter(
                [xs[i] for i in sel],
                [points[i][1] for i in sel],
                label=state,
                color=STATE_COLORS.get(state, "tab:gray"),
                alpha=0.8,
            )
        _auto_yscale(ax, [p[1] for p in points])
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if points:
            ax.legend(fontsize=7)
    used = len(swept)

    if study is not None:
        ax = flat[used]
        trials = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
        for state in ("COMPLETE", "PRUNED"):
            sel = [t for t in trials if t.state.name == state]
            ax.scatter(
                [t.number for t in sel],
                [t.value for t in sel],
                label=state.lower(),
                color=STATE_COLORS["completed" if state == "COMPLETE" else "pruned"],
                alpha=0.8,
            )
        best, line = None, []
        for t in sorted((t for t in trials if t.state.name == "COMPLETE"), key=lambda t: t.number):
            if best is None or (t.value > best if maximize else t.value < best):
                best = t.value
            line.append((t.number, best))
        if line:
            ax.step([n for n, _ in line], [b for _, b in line], where="post", color="black", label="best so far")
        failed = [t.number for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
        for n in failed:
            ax.axvline(n, color=STATE_COLORS["failed"], alpha=0.3, lw=1)
        ax.set_title(f"Optuna study '{study.study_name}': history" + (f" ({len(failed)} failed)" if failed else ""))
        _auto_yscale(ax, [t.value for t in trials])
        ax.set_xlabel("trial")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        used += 1

        ax = flat[used]
        ax.set_title("parameter importances")
        try:
            import optuna

            with warnings.catch_warnings():  # "too few trials" is visible in the figure
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(study)
            names = list(importances)[::-1]
            ax.barh(names, [importances[n] for n in names], color="tab:green")
            ax.tick_params(axis="y", labelsize=8)
        except Exception as error:  # needs at least two completed trials with varying parameters
            ax.text(0.5, 0.5, f"not available:\n{str(error)[:80]}", ha="center", va="center", fontsize=8, wrap=True)
            ax.set_axis_off()
        used += 1

    if used == 0:
        flat[0].text(0.5, 0.5, "no swept parameter with a value yet", ha="center", va="center")
        used = 1
    for ax in flat[used:]:
        ax.set_axis_off()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# -- the command -------------------------------------------------------------------------------
def report(
    sweep_dir: Path,
    metric: str | None = None,
    png: Path | None = None,
    maximize: bool | None = None,
    extra_metrics: tuple[str, ...] = (),
) -> tuple[str, Path]:
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"no sweep folder at {sweep_dir}")
    metric = metric or _default_metric(sweep_dir)
    jobs = read_jobs(sweep_dir, metric)
    studies = load_studies(sweep_dir)
    for study in studies:
        jobs = merge_trials(jobs, study, metric)
        if maximize is None:
            maximize = study.direction.name == "MAXIMIZE"
    if not jobs:
        raise FileNotFoundError(f"{sweep_dir} holds no job folders (job.json or .hydra/overrides.yaml)")
    jobs = sort_jobs(jobs, bool(maximize))
    text = table(jobs, metric, sweep_dir, list(extra_metrics))
    states: dict[str, int] = {}
    for job in jobs:
        states[job.state] = states.get(job.state, 0) + 1
    counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    summary = f"{sweep_dir}: {len(jobs)} jobs ({counts}), sorted by {metric}"
    if studies:
        summary += f"; Optuna studies: {', '.join(s.study_name for s in studies)}"
    path = figure(jobs, metric, studies, png or sweep_dir / "sweep_report.png", bool(maximize))
    return f"{summary}\n\n{text}\n\nfigure: {path}", path


def _default_metric(sweep_dir: Path) -> str:
    for folder in sorted(sweep_dir.iterdir()):
        metric = read_json(folder / JOB_FILE).get("optimized_metric") if folder.is_dir() else None
        if metric:
            return metric
    return "val/loss"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minesweep-sweep-report", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun or Optuna sweep folder (hydra.sweep.dir)")
    parser.add_argument("--metric", help="the metric to sort by (default: the jobs' optimized_metric, val/loss)")
    parser.add_argument("--png", type=Path, help="where to write the figure (default SWEEP_DIR/sweep_report.png)")
    parser.add_argument(
        "--maximize",
        action="store_true",
        default=None,
        help="higher is better (default: the study's direction, else lower)",
    )
    parser.add_argument(
        "--show", action="append", default=[], metavar="METRIC", help="another metric column (repeatable)"
    )
    args = parser.parse_args(argv)
    try:
        text, _ = report(args.sweep_dir, args.metric, args.png, args.maximize, tuple(args.show))
    except FileNotFoundError as error:
        print(f"minesweep-sweep-report: {error}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
