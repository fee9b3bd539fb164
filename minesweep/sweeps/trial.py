"""The job's side of an Optuna trial.

The sweeper asks the study for a trial and launches a Hydra job with the trial's parameters as
overrides and its number in ``hydra.job.env_set.MINESWEEP_OPTUNA_TRIAL``. The job finds the study
through its own Hydra config (``hydra.sweeper.storage`` / ``study_name``), reports validation loss to
the trial (``pruning``), and tells the trial's outcome itself when it ends (``jobs``): complete with
the optimised metric, pruned, or failed. A trial's state therefore survives the sweeper process; the
sweeper only fills in outcomes of jobs that died without telling.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from omegaconf import DictConfig, OmegaConf

from minesweep.sweeps.storage import open_storage

log = logging.getLogger(__name__)

TRIAL_ENV = "MINESWEEP_OPTUNA_TRIAL"
#: user attribute set on a trial that a pruner stopped, with the step it stopped at
PRUNED_AT_STEP = "pruned_at_step"
#: user attribute: the job folder that trained the trial
JOB_DIR = "job_dir"


def trial_number(hydra_cfg: DictConfig | None = None) -> int | None:
    """This job's trial number, from the environment or the job's Hydra config; None outside Optuna."""
    value = os.environ.get(TRIAL_ENV)
    if value is None and hydra_cfg is not None:
        value = OmegaConf.select(hydra_cfg, f"job.env_set.{TRIAL_ENV}", default=None)
    return int(value) if value not in (None, "") else None


class JobTrial:
    """The Optuna trial this job trains, opened lazily from the study's storage (picklable)."""

    def __init__(self, storage: Any, study_name: str, number: int, pruner: Any = None) -> None:
        self.storage_spec = storage
        self.study_name = study_name
        self.number = number
        self.pruner_cfg = pruner
        self._study = None
        self._trial_id: int | None = None

    @classmethod
    def from_hydra(cls, hydra_cfg: DictConfig | None = None) -> JobTrial | None:
        """The trial of this job (``hydra_cfg``: the ``hydra`` node, default the running job's), or None
        when the job is not an Optuna trial with a persistent storage."""
        if hydra_cfg is None:
            from hydra.core.hydra_config import HydraConfig

            if not HydraConfig.initialized():
                return None
            hydra_cfg = HydraConfig.get()
        sweeper = hydra_cfg.get("sweeper")
        number = trial_number(hydra_cfg)
        if sweeper is None or number is None or not sweeper.get("storage"):
            return None
        pruner = sweeper.get("pruner")
        pruner = OmegaConf.to_container(pruner, resolve=True) if OmegaConf.is_config(pruner) else pruner
        return cls(str(sweeper.storage), str(sweeper.get("study_name")), number, pruner)

    def __getstate__(self) -> dict[str, Any]:  # ddp_spawn pickles callbacks: reopen there
        state = self.__dict__.copy()
        state["_study"] = None
        return state

    # -- opening ------------------------------------------------------------------------------
    def _pruner(self) -> Any:
        import optuna

        if not self.pruner_cfg:
            return optuna.pruners.NopPruner()  # load_study(pruner=None) would mean MedianPruner
        from hydra.utils import instantiate

        return instantiate(self.pruner_cfg, _execution_whitelist_=("optuna.pruners.*",))

    @property
    def study(self) -> Any:
        if self._study is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._study = optuna.load_study(
                study_name=self.study_name, storage=open_storage(self.storage_spec), pruner=self._pruner()
            )
        return self._study

    @property
    def trial_id(self) -> int:
        if self._trial_id is None:
            self._trial_id = self.study._storage.get_trial_id_from_study_id_trial_number(
                self.study._study_id, self.number
            )
        return self._trial_id

    def frozen(self) -> Any:
        return self.study._storage.get_trial(self.trial_id)

    def is_finished(self) -> bool:
        return self.frozen().state.is_finished()

    def handle(self) -> Any:
        """An ``optuna.Trial`` for report/should_prune (only while the trial is running)."""
        import optuna

        return optuna.trial.Trial(self.study, self.trial_id)

    # -- writing ------------------------------------------------------------------------------
    def set_user_attr(self, key: str, value: Any) -> None:
        if not self.is_finished():
            self.study._storage.set_trial_user_attr(self.trial_id, key, value)

    def report(self, value: float, step: int) -> bool:
        """Report an intermediate value; True when the pruner says stop. A finished trial is left alone."""
        if self.is_finished():
            return False
        trial = self.handle()
        if step in self.frozen().intermediate_values:
            # A requeued job validates again at a step it already reported: keep the first report.
            return trial.should_prune()
        trial.report(value, step)
        return trial.should_prune()

    def tell(self, state: str, value: float | None = None) -> None:
        """Finish the trial: ``complete`` (with value), ``pruned`` or ``fail``; no-op if already finished."""
        import optuna

        states = {
            "complete": optuna.trial.TrialState.COMPLETE,
            "pruned": optuna.trial.TrialState.PRUNED,
            "fail": optuna.trial.TrialState.FAIL,
        }
        if state == "complete" and (value is None or math.isnan(value)):
            state = "fail"
        values = [value] if state == "complete" else None
        self.study.tell(self.number, values=values, state=states[state], skip_if_finished=True)
