"""Policies: the ``MinePolicy`` interface, shared heads, and concrete models."""

from minesweep.policies.base import MinePolicy
from minesweep.policies.heads import MineActionHead, ValueHead

__all__ = ["MinePolicy", "MineActionHead", "ValueHead"]
