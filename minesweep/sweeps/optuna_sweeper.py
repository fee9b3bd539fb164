"""The ``hydra/sweeper=optuna_study`` plugin (launch/hydra/sweeper/optuna_study.yaml): Optuna trials as Hydra jobs.
(``hydra/sweeper=optuna`` stays hydra-optuna-sweeper's own preset.)

A subclass of hydra-optuna-sweeper's sweeper (its search-space parsing, trial configuration, directions), with what a
long search on a cluster needs:

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

Where it differs from upstream, one line each, with the upstream limitation it works around:

- ``__init__``: a pruner, and a storage opened from a spec (upstream has no pruner and takes a URL only); the
  custom search space is built from allow-listed names only (upstream builds any name).
- ``_configure_trials``: each job is also told its trial number (upstream's jobs cannot report to their trial).
- ``sweep``: job numbers are trial numbers (upstream counts from 0 in each invocation, so a resumed study would
  reuse job folders), and jobs tell their own outcome, PRUNED included, the sweeper only what a job could not
  (upstream tells every trial COMPLETE or FAIL itself: it cannot record a pruned trial, and fails on one told
  already).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl, create_params_from_overrides
from omegaconf import DictConfig, OmegaConf

from minesweep.sweeps.storage import open_storage
from minesweep.sweeps.trial import PRUNED_AT_STEP, TRIAL_ENV

log = logging.getLogger(__name__)

SAMPLERS = ("optuna.samplers.*", "hydra_plugins.hydra_optuna_sweeper.*")
PRUNERS = ("optuna.pruners.*",)
# Functions called with (cfg, trial): only those written as search spaces, not any minesweep function. The user's
# own (MINESWEEP_ALLOWED_TARGETS) join through @hydra.main's whitelist, which this one adds to.
SEARCH_SPACES = ("minesweep.sweeps.search_space.*",)


class OptunaSweeper(OptunaSweeperImpl):
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
        if not 0.0 <= float(max_failure_rate) <= 1.0:
            raise ValueError(f"hydra.sweeper.max_failure_rate must be in [0, 1], got {max_failure_rate}")
        super().__init__(
            sampler=instantiate(sampler, _execution_whitelist_=SAMPLERS) if sampler else None,
            direction=direction,
            storage=storage,
            study_name=study_name,
            n_trials=int(n_trials),
            n_jobs=max(1, int(n_jobs)),
            max_failure_rate=float(max_failure_rate),
            custom_search_space=None,  # built below, from allow-listed names only
            params=params,
        )
        if custom_search_space:
            self.custom_search_space_extender = instantiate(
                {"_target_": custom_search_space, "_partial_": True}, _execution_whitelist_=SEARCH_SPACES
            )
        self.pruner = instantiate(pruner, _execution_whitelist_=PRUNERS) if pruner else None

    def _configure_trials(
        self, trials: list[Any], distributions: dict[str, Any], fixed: dict[str, Any], fixed_overrides: list[str]
    ) -> Sequence[Sequence[str]]:
        overrides = super()._configure_trials(trials, distributions, fixed, fixed_overrides)
        return [
            [*job, f"++hydra.job.env_set.{TRIAL_ENV}={trial.number}"]
            for trial, job in zip(trials, overrides, strict=True)
        ]

    # -- the sweep ----------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> None:
        import optuna

        assert self.config is not None and self.launcher is not None
        self._process_searchspace_config()
        distributions, fixed, fixed_overrides = create_params_from_overrides(
            self._parse_sweeper_params_config() + list(arguments)
        )
        for name in fixed:
            distributions.pop(name, None)  # a value on the command line wins over the preset's range
        directions = self._get_directions()
        study = optuna.create_study(
            study_name=self.study_name,
            storage=open_storage(self.storage),
            sampler=self.sampler,
            pruner=self.pruner,
            directions=directions,
            load_if_exists=True,
        )
        before = len(study.trials)
        log.info(f"Study '{study.study_name}' in {self.storage}: {before} trials so far, {self.n_trials} to run")
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
            overrides = self._configure_trials(trials, distributions, fixed, fixed_overrides)
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

        frozen = _trial_now(study, trial.number)
        if not frozen.state.is_finished():
            state, values, why = self._outcome(frozen, ret, directions)
            if why:
                log.warning(f"trial {trial.number} {state.name}: {why}")
            study.tell(trial, values=values, state=state, skip_if_finished=True)
            frozen = _trial_now(study, trial.number)
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


def _trial_now(study: Any, number: int) -> Any:
    """The trial as the storage holds it now (a job may have told it since it was asked)."""
    (frozen,) = [t for t in study.get_trials(deepcopy=False) if t.number == number]
    return frozen
