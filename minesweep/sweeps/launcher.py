"""The ``hydra/launcher=slurm`` and ``hydra/launcher=local`` plugins: Hydra's submitit launchers, subclassed where
they must differ, each divergence one line (the upstream limitation it works around):

- ``__call__``: a restarted job resumes from its own ``last.ckpt`` (upstream starts a requeued job over). The job's
  folder is fixed by its sweep folder, number and overrides, so when it starts again (requeued by submitit after a
  time-out or preemption, restarted by SLURM after a node failure) and ``checkpoints/last.ckpt`` exists, it gets
  ``ckpt_path=last``, an override that does not change the folder name. (Lightning's own ``ckpt_path="last"``
  would also start over silently when the file is missing; ours is strict, see ``minesweep.train``.)
- ``checkpoint``: the resubmission is marked ``requeued``, for the above (upstream resubmits the same arguments).
- ``launch``: a job that dies without returning (cancelled, killed for memory, node lost, out of requeues) becomes a
  failed ``JobReturn`` with the reason, and its ``job.json`` says so (upstream's ``launch`` raises on the first such
  job's ``results()`` and loses every other job's result).

Registered as Hydra plugins through the ``hydra.plugins`` entry points in pyproject.toml.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, setup_globals
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher
from omegaconf import DictConfig, OmegaConf, open_dict

from minesweep.sweeps.jobs import mark_dead, restart_count

log = logging.getLogger(__name__)

RESUME_OVERRIDE = "ckpt_path=last"


class ResumingSubmititLauncher(BaseSubmititLauncher):
    _EXECUTOR = "abstract"

    # -- in the job ---------------------------------------------------------------------------
    def __call__(  # type: ignore[override]
        self,
        sweep_overrides: list[str],
        job_dir_key: str,
        job_num: int,
        job_id: str,
        singleton_state: dict[type, Singleton],
        requeued: bool = False,
    ) -> JobReturn:
        overrides = list(sweep_overrides)
        if requeued or restart_count() > 0:
            import submitit

            Singleton.set_state(singleton_state)  # to compose the job's config and find its folder
            setup_globals()
            # Hydra's job logging is not set up yet: say it through submitit's logger (the job's log).
            say = submitit.core.logger.get_logger().info
            last = self.job_dir(self._sweep_config(overrides, job_num), job_dir_key) / "checkpoints" / "last.ckpt"
            if last.is_file():
                say(f"restarted job {job_num} resumes from {last}")
                overrides = [o for o in overrides if not o.startswith("ckpt_path=")] + [RESUME_OVERRIDE]
            else:
                say(f"restarted job {job_num} has no checkpoint yet ({last}): starting over")
        return super().__call__(overrides, job_dir_key, job_num, job_id, singleton_state)

    def _sweep_config(self, overrides: list[str], job_num: int) -> DictConfig:
        assert self.hydra_context is not None and self.config is not None
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, overrides)
        with open_dict(sweep_config.hydra.job):
            sweep_config.hydra.job.num = job_num
        return sweep_config

    @staticmethod
    def job_dir(sweep_config: DictConfig, job_dir_key: str = "hydra.sweep.dir") -> Path:
        """The folder ``run_job`` will give this job (its subdir may use ``${hydra:...}``)."""
        from hydra.core.hydra_config import HydraConfig

        previous = HydraConfig.instance().cfg
        HydraConfig.instance().set_config(sweep_config)
        try:
            return Path(str(OmegaConf.select(sweep_config, job_dir_key))) / str(
                OmegaConf.select(sweep_config, "hydra.sweep.subdir")
            )
        finally:
            HydraConfig.instance().cfg = previous

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on the preemption signal: the same job again, marked as requeued."""
        return super().checkpoint(*args, **{**kwargs, "requeued": True})

    # -- in the sweep process -----------------------------------------------------------------
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """Upstream's launch, where a dead job's ``results()`` is a failed ``JobReturn`` instead of an exception."""
        import submitit

        results = submitit.core.core.Job.results

        def results_or_failure(job: Any) -> list[JobReturn]:
            try:
                return results(job)
            except Exception as error:
                return [self._dead(job, error)]

        with mock.patch.object(submitit.core.core.Job, "results", results_or_failure):
            return super().launch(job_overrides, initial_job_idx)

    def _dead(self, job: Any, error: Exception) -> JobReturn:
        """The failed JobReturn of a job that died without returning, recorded in its ``job.json``."""
        try:
            overrides, _, job_num = job.submission().args[:3]  # what launch submitted: (overrides, key, number, ...)
        except Exception:  # its submission file is gone too: nothing to record it by, fail as upstream does
            raise error from None
        stderr = getattr(getattr(job, "paths", None), "stderr", None)
        message = f"job {job.job_id} ended without a result ({type(error).__name__}: {error}); submitit log: {stderr}"
        log.error("#%d %s", job_num, message)
        ret = JobReturn()
        ret.overrides = list(overrides)
        ret.status = JobStatus.FAILED
        ret.return_value = RuntimeError(message)
        try:
            job_dir = self.job_dir(self._sweep_config(list(overrides), job_num))
            mark_dead(job_dir, message, stderr)
            ret.working_dir = str(job_dir)
        except Exception as record_error:  # the record is a courtesy; the return is what counts
            log.warning("could not record the death of job %d: %s", job_num, record_error)
        return ret


class SlurmLauncher(ResumingSubmititLauncher):
    _EXECUTOR = "slurm"


class LocalLauncher(ResumingSubmititLauncher):
    _EXECUTOR = "local"
