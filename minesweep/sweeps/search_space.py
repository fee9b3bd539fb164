"""``custom_search_space`` for the Optuna sweeper: the weights of the objectives a trial trains with.

The preset lists a weight range per objective under ``hydra.sweeper.objective_weights`` (Hydra's sweep
syntax, like ``hydra.sweeper.params``)::

    objective_weights:
      kl: tag(log, interval(1e-4, 1.0))

A trial suggests ``objective.<name>.weight`` only for the objectives it trains with, so a range for
an objective that is not selected never becomes an override for a key that does not exist (which
would fail every trial). The selection is the composed ``objective`` group, or, when the group itself
is searched (``hydra.sweeper.params.objective: choice([bc],[bc,kl])``), the trial's choice.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

log = logging.getLogger(__name__)


def selected_objectives(cfg: DictConfig, trial: Any) -> list[str]:
    """The objectives this trial trains with: its own choice of the group if searched, else the config's."""
    chosen = trial.params.get("objective") if trial is not None else None
    if chosen is None:
        chosen = trial.user_attrs.get("objective") if trial is not None else None  # a fixed override
    if chosen is not None:
        return parse_objective_choice(chosen)
    return list(cfg.get("objective") or {})


def parse_objective_choice(value: Any) -> list[str]:
    """``"[bc,kl]"`` / ``["bc", "kl"]`` / ``"bc"`` -> ``["bc", "kl"]`` / ``["bc"]``."""
    if isinstance(value, (list, tuple, ListConfig)):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return [name.strip().strip("'\"") for name in text.split(",") if name.strip()]


def objective_weights(cfg: DictConfig, trial: Any) -> None:
    """Suggest ``objective.<name>.weight`` for each selected objective that has a range configured."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    ranges = OmegaConf.select(cfg, "hydra.sweeper.objective_weights", default=None) or {}
    selected = selected_objectives(cfg, trial)
    parser = OverridesParser.create()
    for name in selected:
        spec = ranges.get(name)
        if spec is None:
            continue
        key = f"objective.{name}.weight"
        if key in trial.params or key in trial.user_attrs:
            continue  # searched or fixed explicitly: that wins
        override = parser.parse_override(f"{key}={spec}")
        distribution = create_optuna_distribution_from_override(override)
        if isinstance(distribution, str):  # a fixed value, not a range
            trial.suggest_categorical(key, [distribution])
        else:
            trial._suggest(key, distribution)
    skipped = sorted(set(ranges) - set(selected))
    if skipped:
        log.debug("trial %s: objectives not selected, weights not searched: %s", trial.number, skipped)
