"""``hydra/sweeper=grid`` (chosen by name; a plain ``-m`` is Hydra's own basic sweeper): Hydra's basic grid
sweeper, subclassed where it must differ for sweeps of many jobs (one line each, with the limitation it works around):

- ``split_arguments``: overrides of objectives a job does not train with are dropped and identical jobs run once
  (``minesweep.sweeps.overrides``): ``'objective=[bc],[bc,kl]' objective.kl.weight=0.001,0.01,0.1`` runs 4 jobs
  (upstream composes all 6 and fails 3: ``objective.kl`` is not in a ``[bc]`` job's config).
- ``setup``/``sweep``: a failed job does not stop the sweep: every batch is launched (``max_batch_size`` splits a
  grid into batches), and the sweep ends with an error naming the failed jobs, raising the first one's (upstream
  raises at the end of the first batch with a failure, and the later batches never run).

Registered as a Hydra plugin through the ``hydra.plugins`` entry points in pyproject.toml.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn, JobStatus, filter_overrides

from minesweep.sweeps.overrides import deduplicate

log = logging.getLogger(__name__)


class _HeldBack(JobReturn):
    """A failed job's return whose ``return_value`` does not raise: the failure is raised when the sweep ends."""

    @property
    def return_value(self) -> Any:
        return self._return_value


class _LaunchAll:
    """The launcher, setting failed jobs aside so that the basic sweeper goes on to the next batch."""

    def __init__(self, launcher: Any) -> None:
        self.launcher = launcher
        self.failed: list[tuple[int, JobReturn]] = []

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        results = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        out = []
        for number, result in enumerate(results, initial_job_idx):
            if result.status != JobStatus.COMPLETED:
                self.failed.append((number, result))
                result = _HeldBack(**{f.name: getattr(result, f.name) for f in dataclasses.fields(JobReturn)})
            out.append(result)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.launcher, name)


class GridSweeper(BasicSweeper):
    def setup(self, *args: Any, **kwargs: Any) -> None:
        super().setup(*args, **kwargs)
        self.launcher = _LaunchAll(self.launcher)

    def split_arguments(  # type: ignore[override]  (an instance method: it needs the config's objectives)
        self, overrides: list[Override], max_batch_size: int | None
    ) -> list[list[list[str]]]:
        (grid,) = BasicSweeper.split_arguments(overrides, None)
        jobs, _ = deduplicate(grid, (self.config.get("objective") or {}).keys() if self.config else ())
        if len(jobs) < len(grid):
            log.info(f"{len(grid)} combinations, {len(jobs)} distinct jobs")
        return list(self.split_overrides_to_chunks(jobs, max_batch_size))

    def sweep(self, arguments: list[str]) -> Any:
        returns = super().sweep(arguments)
        failed = self.launcher.failed
        if failed:
            for number, ret in failed:
                error = ret._return_value
                log.error(
                    f"job #{number} failed ({' '.join(filter_overrides(ret.overrides or []))}): "
                    f"{type(error).__name__}: {error}"
                )
            total = sum(len(batch) for batch in returns)
            log.error(f"{len(failed)} of {total} jobs failed; the others finished (see each job's error.log)")
            _ = failed[0][1].return_value  # raises the first failure, with its traceback
        return returns
