"""Objectives: weighted callbacks that return ``{'loss': ..., other metrics}``."""

from minesweep.objectives.base import MissingLatentError, ObjectiveCallback
from minesweep.objectives.bc import BehaviorCloneCallback
from minesweep.objectives.entropy import EntropyBonusCallback
from minesweep.objectives.idm import InverseDynamicsCallback
from minesweep.objectives.kl import KLDivergenceCallback, KLWarmupCallback, gaussian_kl

__all__ = [
    "ObjectiveCallback",
    "MissingLatentError",
    "BehaviorCloneCallback",
    "KLDivergenceCallback",
    "KLWarmupCallback",
    "EntropyBonusCallback",
    "InverseDynamicsCallback",
    "gaussian_kl",
]
