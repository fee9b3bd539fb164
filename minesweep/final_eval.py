"""A short evaluation at the end of training on the Crafter demo: the trained policy plays a few held-out worlds.

It runs :func:`minesweep.eval.evaluate_policy`, the code behind ``minesweep-eval``, on ``episodes`` worlds from
``first_seed`` next to the random player (whose episodes come from the baseline cache once played), writes
results.json and achievements.png to ``output_dir`` (``RUN/eval_final``) and logs two lines: the policy's mean
return, the random player's, their ratio and the collect_wood success rate; then where the chart is. The figures
are also metrics (``final_eval/return``, ``final_eval/return_vs_random``, ...: loggers, ``trainer.callback_metrics``
and so train()'s result, for benchmarks). Selected in conf/train.yaml (``callbacks/final_eval: crafter``); off with
``callbacks.final_eval=null``. With other data than the Crafter demo (``data.demo`` a
:class:`~minesweep.envs.crafter_record.CrafterRecordings`) it only says so.

Only rank 0 plays; training's RNG state is left as it was. A failure is logged, not raised: the training it
reports on has finished and saved its checkpoints by then.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import OmegaConf

from minesweep.ema import EMA, ema_weights

__all__ = ["FinalEvalCallback"]

log = logging.getLogger("minesweep")


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


class FinalEvalCallback(L.Callback):
    """After the last training step, evaluate the policy on worlds ``first_seed .. first_seed + episodes - 1``.

    ``env`` and ``baselines`` are configs (``_target_``; the callback's own config has ``_recursive_: false``): the
    baseline cache is keyed by them. ``workers``, ``batch_size``, ``deterministic``, ``seed``: as ``eval.*``.
    """

    def __init__(
        self,
        env: Mapping[str, Any],
        episodes: int = 8,
        first_seed: int = 1_000_000,
        baselines: Mapping[str, Mapping[str, Any] | None] | None = None,
        deterministic: bool = False,
        seed: int = 0,
        workers: int | str | None = 1,
        batch_size: int | None = None,
        output_dir: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if int(episodes) <= 0:
            raise ValueError(f"callbacks.final_eval.episodes must be positive, got {episodes}")
        self.env = _plain(env)
        self.baselines = {name: _plain(node) for name, node in (_plain(baselines) or {}).items()}
        self.episodes, self.first_seed, self.deterministic = int(episodes), int(first_seed), bool(deterministic)
        self.seed, self.workers, self.batch_size = int(seed), workers, batch_size
        self.output_dir, self.cache_dir = output_dir, cache_dir
        self.metrics: dict[str, float] = {}  # the last evaluation's figures
        self.report: dict[str, Any] | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from minesweep.envs.crafter_record import CrafterRecordings

        demo = getattr(trainer.datamodule, "demo", None)
        if not isinstance(demo, CrafterRecordings):
            log.info(
                "final eval: skipped, the data is not the Crafter demo (data.demo is %s; "
                "callbacks/final_eval=null turns this off)",
                type(demo).__name__ if demo is not None else None,
            )
            return
        if trainer.global_rank != 0:
            return
        size = self.env.get("size") if isinstance(self.env, Mapping) else None
        if size is not None and int(size) != demo.size:
            log.warning(
                "final eval: the policy trained on %dx%d frames (data.demo.size) and plays at %dx%d (eval.env.size)",
                demo.size,
                demo.size,
                int(size),
                int(size),
            )
        try:
            with ema_weights(trainer, pl_module):
                if any(isinstance(c, EMA) for c in trainer.callbacks):
                    log.info("final eval: the policy plays its EMA weights (callbacks.ema)")
                self.evaluate(pl_module.mine_policy, trainer)
        except Exception:  # noqa: BLE001 - a report on a finished run: its failure must not fail the run
            log.exception("final eval failed (the training itself finished)")

    def evaluate(self, policy: torch.nn.Module, trainer: L.Trainer | None = None) -> dict[str, float]:
        """Play the worlds, write the report, log and return the figures (also into ``trainer``'s metrics)."""
        from minesweep.eval import evaluate_policy

        step = int(trainer.global_step) if trainer is not None else 0
        if self.output_dir:
            out = Path(self.output_dir)
        elif trainer is not None:
            out = Path(trainer.default_root_dir) / "eval_final"
        else:
            raise ValueError("callbacks.final_eval.output_dir is not set and there is no trainer to place it")
        seeds = [self.first_seed + i for i in range(self.episodes)]
        start = time.perf_counter()
        report = evaluate_policy(
            policy,
            self.env,
            seeds,
            out,
            baselines=self.baselines,
            cache_dir=self.cache_dir,
            deterministic=self.deterministic,
            eval_seed=self.seed,
            workers=self.workers,
            batch_size=self.batch_size,
            title=f"Crafter: {len(seeds)} held-out worlds after step {step}",
            key="callbacks.final_eval",
            header={"global_step": step},
        )
        seconds = time.perf_counter() - start
        self.report = report
        policy_s = report["players"]["policy"]
        random_s = report["players"].get("random")
        ratio = report["return_vs_random"]
        metrics = {
            "final_eval/return": policy_s["mean_return"],
            "final_eval/return_stderr": policy_s["stderr_return"],
            "final_eval/collect_wood": policy_s["success_rates"]["collect_wood"],
            "final_eval/random_return": random_s["mean_return"] if random_s else math.nan,
            "final_eval/return_vs_random": ratio if ratio is not None else math.nan,
        }
        self.metrics = metrics
        if trainer is not None:
            for name, value in metrics.items():  # train() returns callback_metrics: benchmarks read them there
                trainer.callback_metrics[name] = torch.tensor(value)
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=step)
        if random_s:
            cached = " (cached)" if random_s.get("from_cache") else ""
            versus = f", random {random_s['mean_return']:.2f}{cached}, policy/random " + (
                f"{ratio:.2f}" if ratio is not None else "n/a (random return 0)"
            )
        else:
            versus = " (no random baseline)"
        log.info(
            "final eval, %d worlds from seed %d (%.1f s): policy return %.2f ± %.2f%s; collect_wood %.2f",
            len(seeds),
            seeds[0],
            seconds,
            policy_s["mean_return"],
            policy_s["stderr_return"],
            versus,
            policy_s["success_rates"]["collect_wood"],
        )
        log.info("final eval: achievements chart %s", out / "achievements.png")
        return metrics
