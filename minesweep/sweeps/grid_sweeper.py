"""``hydra/sweeper=grid`` (chosen by name; a plain ``-m`` is Hydra's own basic sweeper): Hydra's basic grid
sweeper, with two changes for sweeps of many jobs:

- Overrides of objectives a job does not train with are dropped and identical jobs run once
  (``minesweep.sweeps.overrides``): ``'objective=[bc],[bc,kl]' objective.kl.weight=0.001,0.01,0.1``
  runs 4 jobs instead of failing to compose 3 of 6.
- A failed job does not stop the sweep: every batch is launched (``max_batch_size`` splits a grid
  into batches), and the sweep ends with an error naming the failed jobs, raising the first one's.

Registered as a Hydra plugin through the ``hydra.plugins`` entry points in pyproject.toml.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf

from minesweep.sweeps.overrides import deduplicate

log = logging.getLogger(__name__)


class GridSweeper(BasicSweeper):
    def sweep(self, arguments: list[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides(self._parse_config() + list(arguments))
        (grid,) = self.split_arguments(overrides, None)
        jobs, _ = deduplicate(grid, (self.config.get("objective") or {}).keys())
        if len(jobs) < len(grid):
            log.info(f"{len(grid)} combinations, {len(jobs)} distinct jobs")
        self.overrides = list(self.split_overrides_to_chunks(jobs, self.max_batch_size))
        self.batch_index = 0

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        returns: list[Sequence[JobReturn]] = []
        failed: list[tuple[int, JobReturn]] = []
        initial_job_idx = 0
        while not self.is_done():
            batch = self.get_job_batch()
            tic = time.perf_counter()
            self.validate_batch_is_legal(batch)
            log.debug(f"validated {len(batch)} job configs in {time.perf_counter() - tic:.2f}s")
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            failed += [(initial_job_idx + i, r) for i, r in enumerate(results) if r.status != JobStatus.COMPLETED]
            initial_job_idx += len(batch)
            returns.append(results)

        if failed:
            for number, ret in failed:
                error = ret._return_value
                log.error(
                    f"job #{number} failed ({' '.join(filter_overrides(ret.overrides or []))}): "
                    f"{type(error).__name__}: {error}"
                )
            log.error(f"{len(failed)} of {initial_job_idx} jobs failed; the others finished (see each job's error.log)")
            _ = failed[0][1].return_value  # raises the first failure, with its traceback
        return returns
