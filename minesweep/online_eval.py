"""Online evaluation during training: the policy plays a few Crafter episodes every K optimizer steps.

Logged (as the module's own metrics, so loggers, ``trainer.callback_metrics``, ``optimized_metric`` and Optuna
pruning all see them): ``eval/return`` (mean over the episodes), ``eval/return_stderr``, ``eval/length`` and
``eval/achievements`` (mean number unlocked). The same worlds are played every time, so values are comparable
across steps and runs. Select it with ``callbacks/online_eval=crafter`` (conf/callbacks/online_eval/crafter.yaml).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from minesweep.ema import ema_weights
from minesweep.eval import rng_untouched, summarize
from minesweep.eval_parallel import PolicyJob, play_jobs

__all__ = ["OnlineEvalCallback"]

log = logging.getLogger("minesweep")


class OnlineEvalCallback(L.Callback):
    """Every ``every_n_steps`` optimizer steps (and after the last one) play worlds ``first_seed .. +episodes-1``.

    ``env``: a factory called with ``seed=`` (``CrafterEnv`` with ``_partial_: true`` in the config). The policy
    plays in eval mode, its worlds batched (minesweep.eval_batch), each world with its memory carried step by step
    and its own sampling generator (from ``seed`` and the world seed); training's RNG state is left untouched.
    Under DDP the worlds are dealt out across ranks (rank r plays worlds r, r + world_size, ...) and the episodes
    gathered, so every rank logs the same figures over all the worlds, in 1/world_size of the time.
    """

    def __init__(
        self,
        env: Callable[..., Any],
        every_n_steps: int = 100,
        episodes: int = 4,
        first_seed: int = 2_000_000,
        deterministic: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if every_n_steps <= 0 or episodes <= 0:
            raise ValueError(f"every_n_steps and episodes must be positive, got {every_n_steps}, {episodes}")
        self.env, self.every_n_steps, self.episodes = env, int(every_n_steps), int(episodes)
        self.first_seed, self.deterministic, self.seed = int(first_seed), bool(deterministic), int(seed)
        self._last_step: int | None = None
        self.played_seeds: list[int] = []  # the worlds this process played in the last evaluation

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # eval.env.size null (data other than the demo): play at the frame size the policy trains on.
        keywords = getattr(self.env, "keywords", None)
        store = getattr(trainer.datamodule, "store", None) if trainer.datamodule is not None else None
        if isinstance(self.env, functools.partial) and keywords.get("size") is None and store is not None:
            height, width = store.resolution
            if height != width:
                raise ValueError(
                    f"callbacks.online_eval: Crafter's frames are square, the training store's {height}x{width}"
                )
            self.env = functools.partial(self.env, size=int(height))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        last = 0 < trainer.max_steps <= step
        if step == self._last_step or step == 0 or not (step % self.every_n_steps == 0 or last):
            return
        self._last_step = step
        with ema_weights(trainer, pl_module):  # with callbacks.ema: the weights that are validated and kept
            metrics = self.evaluate(pl_module.mine_policy, rank=trainer.global_rank, world_size=trainer.world_size)
        for name, value in metrics.items():  # callback_metrics: for optimized_metric, pruning, checkpoint monitors
            pl_module.log(name, value, on_step=True, on_epoch=False, batch_size=1, logger=False)
        for logger in trainer.loggers:  # every evaluation, whatever log_every_n_steps says
            logger.log_metrics(metrics, step=step)
        log.info("step %d: eval/return %.2f ± %.2f", step, metrics["eval/return"], metrics["eval/return_stderr"])

    def evaluate(self, policy: torch.nn.Module, rank: int = 0, world_size: int = 1) -> dict[str, float]:
        """Play this rank's share of the worlds; with ``world_size > 1`` (an initialised process group) the
        episodes of all ranks are gathered, so every rank returns the figures over all ``episodes`` worlds."""
        seeds = [self.first_seed + i for i in range(self.episodes)][rank::world_size]
        was_training = policy.training
        policy.eval()
        try:
            with rng_untouched():  # the episodes must not shift training's RNG
                job = PolicyJob(policy, self.env, self.deterministic, eval_seed=self.seed)
                results = play_jobs([(job, seeds)], workers=1)
        finally:
            policy.train(was_training)
        self.played_seeds = seeds
        episodes = results["policy"]
        if world_size > 1:
            parts: list[Any] = [None] * world_size
            torch.distributed.all_gather_object(parts, episodes)
            episodes = sorted((e for part in parts for e in part), key=lambda e: e.seed)
        s = summarize(episodes)
        return {
            "eval/return": s["mean_return"],
            "eval/return_stderr": s["stderr_return"],
            "eval/length": s["mean_length"],
            "eval/achievements": s["mean_achievements"],
        }
