"""Objectives: weighted callbacks that return ``{'loss': ..., other metrics}``."""

from minesweep.objectives.base import MissingLatentError, ObjectiveCallback
from minesweep.objectives.bc import BehaviorCloneCallback
from minesweep.objectives.kl import KLDivergenceCallback, gaussian_kl

__all__ = [
    "ObjectiveCallback",
    "MissingLatentError",
    "BehaviorCloneCallback",
    "KLDivergenceCallback",
    "gaussian_kl",
]
