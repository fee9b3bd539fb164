"""The ``hydra/sweeper=optuna_study`` plugin (launch/hydra/sweeper/optuna_study.yaml): Optuna trials as Hydra jobs.
(``hydra/sweeper=optuna`` stays hydra-optuna-sweeper's own preset.)

Built on hydra-optuna-sweeper's search-space parsing, with what a long search on a cluster needs:

- **Resumable**: the study lives in ``storage`` (default: a journal file in the sweep folder, which is
  fixed by the study name), is loaded if it exists, and every invocation runs ``n_trials`` more trials:
  the same command run again continues the same study.
- **Pruning**: ``pruner`` (e.g. ``optuna.pruners.MedianPruner``) is used by the jobs themselves
  (``minesweep.sweeps.pruning``); a pruned job is recorded as PRUNED, not COMPLETE.
- **Failures are trials, not crashes**: a job that raises, returns NaN or dies is recorded as FAIL
  and the sweep goes on; it stops only when more than ``max_failure_rate`` of its trials failed.
- **Jobs know their trial**: ``hydra.job.env_set.MINESWEEP_OPTUNA_TRIAL`` (not part of the job folder
  name); job numbers are trial numbers, so trial N trains in ``<sweep dir>/N_<overrides>``.
- ``custom_search_space`` is instantiated only from ``minesweep.sweeps.search_space.*`` and the user's trusted
  extensions (minesweep.allowed_targets; configs are a security boundary);
  samplers only from ``optuna.samplers.*``, pruners only from ``optuna.pruners.*``.

Trials tell their own outcome from the job (``minesweep.sweeps.jobs``); the sweeper tells the ones a
job could not (killed, no storage access) from the job's return.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from minesweep.sweeps.storage import open_storage
from minesweep.sweeps.trial import PRUNED_AT_STEP, TRIAL_ENV

log = logging.getLogger(__name__)

SAMPLERS = ("optuna.samplers.*", "hydra_plugins.hydra_optuna_sweeper.*")
PRUNERS = ("optuna.pruners.*",)
# Functions called with (cfg, trial): only those written as search spaces, not any minesweep function. The user's
# own (MINESWEEP_ALLOWED_TARGETS) join through @hydra.main's whitelist, which this one adds to.
SEARCH_SPACES = ("minesweep.sweeps.search_space.*",)


class OptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        direction: Any = "minimize",
        storage: Any | None = None,
        study_name: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 2,
        max_failure_rate: float = 0.5,
        custom_search_space: str | None = None,
        params: DictConfig | None = None,
        pruner: Any | None = None,
        objective_weights: DictConfig | None = None,  # read by search_space.objective_weights
        sweep_subdir: str | None = None,  # read by hydra.sweep.dir in conf/train.yaml
    ) -> None:
        self.sampler = instantiate(sampler, _execution_whitelist_=SAMPLERS) if sampler else None
        self.pruner = instantiate(pruner, _execution_whitelist_=PRUNERS) if pruner else None
        self.direction = direction
        self.storage_spec = storage
        self.study_name = study_name
        self.n_trials = int(n_trials)
        self.n_jobs = max(1, int(n_jobs))
        self.max_failure_rate = float(max_failure_rate)
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate must be in [0, 1], got {max_failure_rate}")
        self.custom_search_space = None
        if custom_search_space:
            self.custom_search_space = instantiate(
                {"_target_": custom_search_space, "_partial_": True}, _execution_whitelist_=SEARCH_SPACES
            )
        self.params = params
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            config=config, hydra_context=hydra_context, task_function=task_function
        )

    # -- search space -------------------------------------------------------------------------
    def _search_space(self, arguments: list[str]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides

        params = [f"{k!s}={v}" for k, v in (self.params or {}).items()]
        distributions, fixed, fixed_overrides = create_params_from_overrides(params + list(arguments))
        for name in fixed:
            distributions.pop(name, None)  # a value on the command line wins over the preset's range
        return distributions, fixed, fixed_overrides

    def _overrides(self, trial: Any, distributions: dict, fixed: dict, fixed_overrides: list[str]) -> list[str]:
        for name, distribution in distributions.items():
            trial._suggest(name, distribution)
        for name, value in fixed.items():
            trial.set_user_attr(name, value)
        if self.custom_search_space is not None:
            self.custom_search_space(self.config, trial)
        overlap = set(trial.params) & set(fixed)
        if overlap:
            raise ValueError(f"parameters both fixed and searched: {sorted(overlap)}")
        params = {**trial.params, **fixed}
        return (
            [f"{name}={value}" for name, value in params.items()]
            + list(fixed_overrides)
            + [f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}"]
        )

    def _directions(self) -> list[str]:
        directions = (
            self.direction
            if isinstance(self.direction, (list, tuple)) or OmegaConf.is_list(self.direction)
            else [self.direction]
        )
        return [str(getattr(d, "name", d)) for d in directions]

    # -- the sweep ----------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        import optuna

        assert self.config is not None and self.launcher is not None
        distributions, fixed, fixed_overrides = self._search_space(arguments)
        directions = self._directions()
        study = optuna.create_study(
            study_name=self.study_name,
            storage=open_storage(self.storage_spec),
            sampler=self.sampler,
            pruner=self.pruner,
            directions=directions,
            load_if_exists=True,
        )
        before = len(study.trials)
        log.info(f"Study '{study.study_name}' in {self.storage_spec}: {before} trials so far, {self.n_trials} to run")
        log.info(
            f"Sampler: {type(self.sampler).__name__}, pruner: {type(self.pruner).__name__}, directions: {directions}"
        )
        stale = [t.number for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
        if stale:
            log.warning(f"trials {stale} are still RUNNING from an earlier sweep (or run by another sweeper now)")

        launched = failed = 0
        counts: dict[str, int] = {}
        while launched < self.n_trials:
            batch = min(self.n_jobs, self.n_trials - launched)
            trials = [study.ask() for _ in range(batch)]
            overrides = [self._overrides(t, distributions, fixed, fixed_overrides) for t in trials]
            numbers = [t.number for t in trials]
            if numbers != list(range(numbers[0], numbers[0] + batch)):
                log.warning(f"trial numbers {numbers} are not consecutive: job numbers will differ from them")
            returns = self.launcher.launch(overrides, initial_job_idx=numbers[0])
            launched += batch
            for trial, ret in zip(trials, returns, strict=False):
                state = self._record(study, trial, ret, directions)
                counts[state] = counts.get(state, 0) + 1
                failed += state == "FAIL"
            if failed and failed / launched > self.max_failure_rate:
                log.error(f"{failed} of {launched} trials failed (max_failure_rate={self.max_failure_rate}): stopping")
                for ret in returns:
                    if ret.status == JobStatus.FAILED:
                        _ = ret.return_value  # raises the job's error, with its traceback
                raise RuntimeError(f"{failed} of {launched} trials failed")

        log.info(f"Ran {launched} trials: {counts}; the study now has {len(study.trials)} trials")
        self._save_results(study, directions)

    def _record(self, study: Any, trial: Any, ret: JobReturn, directions: list[str]) -> str:
        """Tell the trial's outcome unless the job already did; return the trial's final state name."""
        import optuna

        frozen = study._storage.get_trial(trial._trial_id)
        if not frozen.state.is_finished():
            state, values, why = self._outcome(frozen, ret, directions)
            if why:
                log.warning(f"trial {trial.number} {state.name}: {why}")
            study.tell(trial, values=values, state=state, skip_if_finished=True)
            frozen = study._storage.get_trial(trial._trial_id)
        elif frozen.state == optuna.trial.TrialState.FAIL and ret.status == JobStatus.FAILED:
            log.warning(f"trial {trial.number} FAIL: {_short_error(ret)}")
        return frozen.state.name

    @staticmethod
    def _outcome(frozen: Any, ret: JobReturn, directions: list[str]) -> tuple[Any, list[float] | None, str]:
        import optuna

        TrialState = optuna.trial.TrialState
        if ret.status != JobStatus.COMPLETED:
            return TrialState.FAIL, None, _short_error(ret)
        if PRUNED_AT_STEP in frozen.user_attrs:
            return TrialState.PRUNED, None, ""
        value = ret._return_value
        try:
            values = [float(v) for v in value] if len(directions) > 1 else [float(value)]
        except (TypeError, ValueError):
            return TrialState.FAIL, None, f"the job returned {value!r}, not {len(directions)} number(s)"
        if len(values) != len(directions) or not all(math.isfinite(v) for v in values):
            return TrialState.FAIL, None, f"the job returned {value!r}"
        return TrialState.COMPLETE, values, ""

    def _save_results(self, study: Any, directions: list[str]) -> None:
        import optuna

        assert self.config is not None
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if not complete:
            log.warning("no trial completed: no best parameters")
            return
        if len(directions) == 1:
            best = study.best_trial
            results = {
                "name": "optuna",
                "study_name": study.study_name,
                "best_trial": best.number,
                "best_params": best.params,
                "best_value": best.value,
                "n_trials": len(study.trials),
            }
            log.info(f"Best trial {best.number}: value {best.value}, parameters {best.params}")
        else:
            results = {
                "name": "optuna",
                "study_name": study.study_name,
                "solutions": [{"trial": t.number, "params": t.params, "values": t.values} for t in study.best_trials],
            }
        OmegaConf.save(OmegaConf.create(results), f"{self.config.hydra.sweep.dir}/optimization_results.yaml")


def _short_error(ret: JobReturn) -> str:
    error = ret._return_value
    return f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else repr(error)
