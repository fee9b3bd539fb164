"""``minesweep-eval``: let a trained policy play Crafter, next to a random and the scripted player.

    minesweep-eval eval.checkpoint=outputs/demo/runs/default/checkpoints/last.ckpt [eval.episodes=30 ...]
    minesweep-eval -m eval.checkpoint=RUN_A/checkpoints/last.ckpt,RUN_B/checkpoints/last.ckpt
    minesweep-eval --cfg job | --help

A Hydra app over ``conf/evaluate.yaml`` (the ``eval`` group, ``conf/eval/crafter.yaml``): Hydra's flags, multirun
and tab completion work as for ``train.py``. What it does is :func:`minesweep.eval.evaluate_checkpoint`; it writes
``results.json``, ``achievements.png`` and ``episode.mp4`` to ``eval.output_dir`` (default: ``eval/`` in the
checkpoint's run folder) and prints the table. A bad checkpoint or setting ends it with exit code 1 and one line.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from minesweep import allowed_targets
from minesweep.allowed_targets import RefusedTarget
from minesweep.eval import evaluate_checkpoint, print_report
from minesweep.searchpath import CONF_DIR


@hydra.main(config_path=str(CONF_DIR), config_name="evaluate", execution_whitelist=allowed_targets.hydra_whitelist())
def main(cfg: DictConfig) -> float | None:
    try:
        report = evaluate_checkpoint(cfg)
    except (FileNotFoundError, ValueError, KeyError, RefusedTarget) as err:
        raise SystemExit(f"minesweep-eval: {err}") from None
    print_report(report)
    return report["players"]["policy"]["mean_return"]  # what a sweep over checkpoints or eval settings would rank


if __name__ == "__main__":
    main()
