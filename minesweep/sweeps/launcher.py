"""The ``hydra/launcher=slurm`` and ``hydra/launcher=local`` plugins: Hydra's submitit launchers, made
preemption-safe and failure-tolerant.

- A requeued job resumes from its own checkpoint: a job's folder is fixed by its sweep folder, job
  number and overrides, so when the job starts again (requeued by submitit after a time-out or
  preemption, or restarted by SLURM after a node failure) and ``<job folder>/checkpoints/last.ckpt``
  exists, the job gets ``ckpt_path=last`` (an override that does not change the folder name).
- A job that dies without returning (cancelled, killed for memory, node lost, out of requeues) becomes
  a failed ``JobReturn`` with the reason, and its ``job.json`` says so; the other jobs' results are
  still collected. (The stock launcher raises on the first such job and loses the rest.)

Registered as Hydra plugins through the ``hydra.plugins`` entry points in pyproject.toml.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides, run_job, setup_globals
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
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
        import submitit

        assert self.hydra_context is not None and self.config is not None and self.task_function is not None
        Singleton.set_state(singleton_state)
        setup_globals()
        overrides = list(sweep_overrides)
        sweep_config = self._sweep_config(overrides, job_num)
        if requeued or restart_count() > 0:
            # Hydra's job logging is not set up yet: say it through submitit's logger (the job's log).
            say = submitit.core.logger.get_logger().info
            last = self.job_dir(sweep_config, job_dir_key) / "checkpoints" / "last.ckpt"
            if last.is_file():
                say(f"restarted job {job_num} resumes from {last}")
                overrides = [o for o in overrides if not o.startswith("ckpt_path=")] + [RESUME_OVERRIDE]
                sweep_config = self._sweep_config(overrides, job_num)
            else:
                say(f"restarted job {job_num} has no checkpoint yet ({last}): starting over")
        with open_dict(sweep_config.hydra.job) as job:
            job.id = submitit.JobEnvironment().job_id  # type: ignore[attr-defined]
        return run_job(
            hydra_context=self.hydra_context,
            task_function=self.task_function,
            config=sweep_config,
            job_dir_key=job_dir_key,
            job_subdir_key="hydra.sweep.subdir",
        )

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
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **{**kwargs, "requeued": True})

    # -- in the sweep process -----------------------------------------------------------------
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        import submitit

        assert self.config is not None
        num_jobs = len(job_overrides)
        assert num_jobs > 0
        params = self.params
        init_params = {"folder": self.params["submitit_folder"]}
        specific_init_keys = {"max_num_timeout", "python"}
        init_params.update(**{f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x in specific_init_keys})
        init_keys = specific_init_keys | {"submitit_folder"}
        executor = submitit.AutoExecutor(cluster=self._EXECUTOR, **init_params)
        baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
        params = {x if x in baseparams else f"{self._EXECUTOR}_{x}": y for x, y in params.items() if x not in init_keys}
        executor.update_parameters(**params)

        log.info(f"Submitit '{self._EXECUTOR}' sweep output dir : {self.config.hydra.sweep.dir}")
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if "mode" in self.config.hydra.sweep:
            os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))

        job_params: list[Any] = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))

        jobs = executor.map_array(self, *zip(*job_params, strict=False))
        return [
            self._result(job, list(overrides), idx)
            for idx, (job, overrides) in enumerate(zip(jobs, job_overrides, strict=False), initial_job_idx)
        ]

    def _result(self, job: Any, overrides: list[str], job_num: int) -> JobReturn:
        """The job's JobReturn; a failed one when the job died without returning."""
        try:
            return job.results()[0]
        except Exception as error:
            stderr = getattr(getattr(job, "paths", None), "stderr", None)
            message = (
                f"job {job.job_id} ended without a result ({type(error).__name__}: {error}); submitit log: {stderr}"
            )
            log.error("#%d %s", job_num, message)
            ret = JobReturn()
            ret.overrides = overrides
            ret.status = JobStatus.FAILED
            ret.return_value = RuntimeError(message)
            try:
                job_dir = self.job_dir(self._sweep_config(overrides, job_num))
                mark_dead(job_dir, message, stderr)
                ret.working_dir = str(job_dir)
            except Exception as record_error:  # the record is a courtesy; the return is what counts
                log.warning("could not record the death of job %d: %s", job_num, record_error)
            return ret


class SlurmLauncher(ResumingSubmititLauncher):
    _EXECUTOR = "slurm"


class LocalLauncher(ResumingSubmititLauncher):
    _EXECUTOR = "local"
