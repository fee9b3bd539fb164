"""Training entry point: ``train(cfg) -> metrics``, and the thin ``@hydra.main`` around it."""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from minesweep import allowed_targets
from minesweep.atomic_file import write_text_atomic
from minesweep.cluster import check_strategy
from minesweep.host_memory import retain_freed_memory
from minesweep.policies.build import build_policy  # noqa: F401 - also minesweep.train.build_policy, as before
from minesweep.run_lock import owns_run_folder, run_lock
from minesweep.searchpath import CONF_DIR
from minesweep.trainer import MineLightning

log = logging.getLogger("minesweep")

METRICS_FILE = "metrics.json"  # the final metrics in the run folder (minesweep.sweeps.jobs reads them)

#: Configs are the security boundary: what a config may build (minesweep.allowed_targets).
ALLOWED_TARGETS = allowed_targets.ALLOWED_TARGETS


def run_folder_name(override_dirname: str, max_length: int = 120) -> str:
    """${minesweep.run_name:${hydra:job.override_dirname}}: one safe folder name per set of overrides.

    Slashes in values (paths) would nest folders and long names break file systems, so slashes
    are replaced and long names are cut and made unique with a hash of the full string.
    """
    if not override_dirname:
        return "default"
    name = override_dirname.replace("/", "|")
    if len(name) > max_length:
        digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
        name = f"{name[: max_length - 11]}-{digest}"
    return name


OmegaConf.register_resolver("minesweep.run_name", run_folder_name, replace=True)


def resolve_checkpoint(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` means this run folder's ``checkpoints/last.ckpt``; anything else is a path."""
    if ckpt_path is None:
        return None
    if ckpt_path == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if not last.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last: no checkpoint at {last}. Resume with the same overrides as the run "
                f"you want to continue (the run folder is derived from them), or pass ckpt_path=/path/to.ckpt"
            )
        return str(last)
    if not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint file at {ckpt_path}")
    return ckpt_path


@contextmanager
def explain_refused_targets() -> Iterator[None]:
    """Hydra's own whitelist (the second lock) refuses in Hydra's words: add what minesweep allows and how to
    extend it."""
    try:
        yield
    except allowed_targets.RefusedTarget:
        raise
    except InstantiationException as error:
        if "whitelist" not in str(error):
            raise
        raise InstantiationException(f"{error}\n{allowed_targets.describe_allow_list()}") from error


def build(cfg: DictConfig) -> tuple[L.Trainer, MineLightning, L.LightningDataModule]:
    """Instantiate data, policy, objectives, module, logger, callbacks and trainer from ``cfg``."""
    output_dir = Path(cfg.paths.output_dir)
    hyperparameters = OmegaConf.to_container(cfg, resolve=True)
    check_strategy(cfg.trainer)  # plain ddp in a local multirun would re-run the sweep in every rank: refused
    if cfg.get("retain_host_memory", True):
        retain_freed_memory()  # a process setting: later CPU steps reuse pages instead of faulting them in
    with allowed_targets.only_allowed(cfg), explain_refused_targets():  # every _target_ in cfg checked first
        datamodule = instantiate(cfg.data)
        policy = build_policy(cfg.policy)
        if cfg.get("compile"):  # true, or torch.compile's options, e.g. {mode: max-autotune}
            options = OmegaConf.to_container(cfg.compile) if OmegaConf.is_dict(cfg.compile) else {}
            policy.compile(**options)  # in place: parameter names, state dicts and checkpoints stay as they are
        if not cfg.get("objective"):
            raise ValueError("no objective selected: choose at least one, e.g. 'objective=[bc]'")
        objectives = {name: instantiate(node) for name, node in cfg.objective.items()}
        optim = dict(cfg.optim)
        if optim.get("optimizer") is not None:  # another optimizer than AdamW: a _partial_ config
            optim["optimizer"] = instantiate(optim["optimizer"])
        module = MineLightning(
            mine_policy=policy,
            callbacks=objectives,
            hyperparameters=hyperparameters,
            log_freq=cfg.log_freq,
            **optim,
        )
        logger = instantiate(cfg.logger) if cfg.get("logger") else False
        callbacks = [instantiate(node) for node in (cfg.get("callbacks") or {}).values() if node]
        # Plugins by name (conf/trainer/default.yaml); one may stand down where it does not apply (None).
        plugins = [instantiate(node) for node in (cfg.trainer.get("plugins") or {}).values() if node]
        trainer = instantiate(
            cfg.trainer,
            logger=logger,
            callbacks=callbacks,
            plugins=[plugin for plugin in plugins if plugin is not None],
            default_root_dir=str(output_dir),
        )
    return trainer, module, datamodule


def train(cfg: DictConfig) -> dict[str, float]:
    """Train once as ``cfg`` says; return the final metrics (train/*, val/* on the final weights)."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # One run per folder: a second run with the same overrides (or another max_steps) is refused by name.
    with run_lock(output_dir) if owns_run_folder() else nullcontext():
        return _train(cfg, output_dir)


def _train(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    # Every run folder holds the composed config, also when train() is called without Hydra.
    OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    L.seed_everything(cfg.seed, workers=True)
    trainer, module, datamodule = build(cfg)
    ckpt_path = resolve_checkpoint(cfg.get("ckpt_path"), output_dir)
    try:
        # weights_only: a checkpoint is data, never code (no arbitrary unpickling).
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        step = final_step(trainer)
        # Report validation on the final weights, unless the last step already validated them.
        if step != getattr(module, "last_validated_step", None):
            trainer.validate(module, datamodule=datamodule, verbose=False)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        metrics["global_step"] = float(step)
    finally:
        finish_wandb()
    return metrics


def final_step(trainer: L.Trainer) -> int:
    """The last optimizer step. Under ``ddp_spawn`` the training ran in child processes and this
    process's trainer still says 0, so read the step from ``last.ckpt`` (written at train end)."""
    if trainer.global_step:
        return trainer.global_step
    callback = trainer.checkpoint_callback
    if callback is not None and callback.dirpath:
        last = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        if last.is_file():
            return int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    return 0


def finish_wandb() -> None:
    """Close this job's wandb run so jobs sharing a process (multirun) never share a run."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


@rank_zero_only  # DDP ranks started by srun or torchrun share the run folder
def save_final_metrics(output_dir: str | Path, metrics: dict[str, float]) -> None:
    """``metrics.json`` in the run folder: what ``train()`` returned (job records and sweep reports read it)."""
    text = json.dumps({k: float(v) for k, v in sorted(metrics.items())}, indent=2) + "\n"
    write_text_atomic(Path(output_dir) / METRICS_FILE, text)


# Hydra builds hydra.callbacks (the job record, the user's trusted extensions) before main runs: see
# minesweep.allowed_targets.hydra_whitelist.
@hydra.main(config_path=str(CONF_DIR), config_name="train", execution_whitelist=allowed_targets.hydra_whitelist())
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    log.info("final metrics: %s", {k: round(v, 4) for k, v in sorted(metrics.items())})
    save_final_metrics(cfg.paths.output_dir, metrics)
    metric = cfg.get("optimized_metric")
    if not metric:
        return None
    if metric not in metrics:
        raise KeyError(f"optimized_metric '{metric}' was not logged; logged metrics: {sorted(metrics)}")
    value = metrics[metric]
    if math.isnan(value):
        raise FloatingPointError(f"optimized_metric '{metric}' is NaN")
    return value


if __name__ == "__main__":
    main()
