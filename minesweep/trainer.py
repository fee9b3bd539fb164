"""``MineLightning``: the Lightning module that trains a ``MinePolicy`` with weighted objectives."""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import lightning as L
import torch

from minesweep.objectives.base import ObjectiveCallback, missing_latent
from minesweep.policies.base import MinePolicy
from minesweep.policies.build import FRAME_SIZE_KEY, POLICY_CONFIG_KEY

log = logging.getLogger(__name__)


class SlotMemory(NamedTuple):
    """The policy state of each batch slot after a batch, and which window each slot held."""

    state: list[torch.Tensor]  # batch-first tensors, as the policy returned them
    episode: torch.Tensor  # (B,) episode index per slot (-1: padding)
    window_index: torch.Tensor  # (B,) window index in that episode


def warmup_schedule(warmup_steps: int, total_steps: int | None, lr_schedule: str, min_lr_ratio: float):
    """LR multiplier per optimizer step: linear warm-up, then constant or cosine decay."""
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"optim.lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}")

    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        if lr_schedule == "constant" or not total_steps or total_steps <= warmup_steps:
            return 1.0
        progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def clip_grad_norm(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_``, bit for bit, without scaling every gradient by exactly 1.0 when their norm
    is within ``max_norm`` and they are in host memory. torch always scales, to spare devices a synchronisation to
    read the norm; on the CPU there is none to spare, and the scaling is half of clipping's time. Returns the norm."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or any(g.device.type != "cpu" for g in grads):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    total = torch.nn.utils.get_total_norm(grads)
    if bool(max_norm / (total + 1e-6) < 1.0):  # torch's own coefficient; at >= 1 it is clamped to 1
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
    return total


class MineLightning(L.LightningModule):
    """Trains ``mine_policy`` on the sum of the objectives' ``'loss'`` entries.

    Arguments keep the names of MineStudio's ``MineLightning``: ``callbacks`` are the objective
    callbacks (a list, or a dict whose keys name them in logs), ``hyperparameters`` a dict logged
    to every logger, ``log_freq`` the step interval of training logs.
    """

    def __init__(
        self,
        mine_policy: MinePolicy,
        callbacks: Sequence[ObjectiveCallback] | Mapping[str, ObjectiveCallback] = (),
        hyperparameters: Mapping[str, Any] | None = None,
        log_freq: int = 20,
        learning_rate: float = 1e-5,
        weight_decay: float = 1e-5,
        warmup_steps: int = 1000,
        lr_schedule: str = "constant",
        min_lr_ratio: float = 0.0,
        betas: Sequence[float] = (0.9, 0.999),
        episode_continuous_batch: bool | None = None,
        fused_optimizer: bool | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
    ) -> None:
        super().__init__()
        self.mine_policy = mine_policy
        if isinstance(callbacks, Mapping):
            named = dict(callbacks)
        else:
            named = {getattr(cb, "name", type(cb).__name__): cb for cb in callbacks}
        if not named:
            raise ValueError("MineLightning needs at least one objective callback (e.g. objective=[bc])")
        for name, callback in named.items():
            callback.name = name
        self.objectives = named
        self.hyperparameters = dict(hyperparameters or {})
        self.log_freq = log_freq
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps
        self.lr_schedule = lr_schedule
        self.min_lr_ratio = min_lr_ratio
        # None: the fused AdamW kernel wherever torch has one (CPU, CUDA); it is ~7% of a VPT-1x CPU step
        # faster than the per-tensor loop because it reads each parameter's state once.
        self.fused_optimizer = fused_optimizer
        self.betas = tuple(betas)
        # Another optimizer than AdamW: a factory (a Hydra ``_partial_``) called with the parameters, lr and
        # weight_decay; betas and fused_optimizer are AdamW's, so they must not be set for it.
        if optimizer is not None and (fused_optimizer is not None or tuple(betas) != (0.9, 0.999)):
            raise ValueError(
                "optim.betas and optim.fused_optimizer are AdamW's settings; with optim.optimizer (another optimizer) "
                "set that optimizer's own arguments in optim.optimizer instead"
            )
        self.optimizer_factory = optimizer
        warmup_schedule(warmup_steps, None, lr_schedule, min_lr_ratio)  # validate early
        self.episode_continuous_batch = episode_continuous_batch
        self._checked_latents = False
        # Carried policy state, one memory per stage ('train', 'val/0', 'val/1', ...): validation
        # must never see (or overwrite) the training slots' memory.
        self._memory: dict[str, SlotMemory] = {}
        self.last_validated_step: int | None = None

    # -- memory carried across consecutive windows of an episode -----------------------------------
    def setup(self, stage: str) -> None:
        if self.episode_continuous_batch is None:
            # As in MineStudio: the data module's episode_continuous_batch switches memory carrying on.
            datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            self.episode_continuous_batch = bool(getattr(datamodule, "episode_continuous_batch", False))

    @property
    def carries_memory(self) -> bool:
        return bool(self.episode_continuous_batch) and getattr(self.mine_policy, "is_stateful", False)

    def state_in(self, batch: dict[str, Any], memory_key: str) -> Any:
        """Per slot: the previous batch's state_out where this window continues that slot's episode
        (same episode, next window), else the initial state. ``None`` when nothing is carried."""
        if not self.carries_memory:
            return None
        if "window_index" not in batch:
            raise KeyError("episode-continuous training needs batch['window_index'] (with batch['episode'])")
        B = batch["image"].shape[0]
        initial = self.mine_policy.initial_state(B)
        memory = self._memory.get(memory_key)
        if memory is None or initial is None:
            return initial
        n = min(B, memory.episode.shape[0])
        episode, window = batch["episode"][:n], batch["window_index"][:n]
        carry = torch.zeros(B, dtype=torch.bool, device=self.device)
        carry[:n] = (episode >= 0) & (episode == memory.episode[:n]) & (window == memory.window_index[:n] + 1)
        state = []
        for init, old in zip(initial, memory.state, strict=False):
            if old.shape[0] != B:  # the batch size changed (e.g. a smaller last batch): keep what fits
                resized = init.clone()
                resized[:n] = old[:n]
                old = resized
            state.append(torch.where(carry.view(B, *[1] * (init.dim() - 1)), old.to(init.dtype), init))
        return state

    def remember(self, batch: dict[str, Any], state_out: Any, memory_key: str) -> None:
        if self.carries_memory and state_out is not None:
            # Detached: gradients stop at the window boundary (truncated BPTT).
            self._memory[memory_key] = SlotMemory(
                [s.detach() for s in state_out],
                batch["episode"].detach().clone(),
                batch["window_index"].detach().clone(),
            )

    def on_validation_epoch_start(self) -> None:
        # Every validation walks the held-out episodes from their start.
        for key in [k for k in self._memory if k.startswith("val")]:
            del self._memory[key]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Set by minesweep.train.build_policy: plain data, so the checkpoint still loads with weights_only=True.
        policy_config = getattr(self.mine_policy, POLICY_CONFIG_KEY, None)
        if policy_config is not None:
            checkpoint[POLICY_CONFIG_KEY] = copy.deepcopy(policy_config)
        resolution = getattr(getattr(getattr(self._trainer, "datamodule", None), "store", None), "resolution", None)
        if resolution is not None:  # the frame size the policy learnt from: an evaluation plays at it
            checkpoint[FRAME_SIZE_KEY] = [int(resolution[0]), int(resolution[1])]
        # Every DDP rank carries the memory of its own slots, and rank 0 writes the checkpoint: gather them all
        # (saving is collective, so every rank is here) and keep them by rank.
        memory = self._memory.get("train")
        if memory is not None:
            world = self.trainer.world_size if self._trainer is not None else 1

            def by_rank(tensor: torch.Tensor) -> torch.Tensor:
                if world == 1:
                    return tensor.unsqueeze(0)
                return self.trainer.strategy.all_gather(tensor).cpu()

            checkpoint["minesweep_train_memory"] = {
                "ranks": world,
                "state": [by_rank(s) for s in memory.state],
                "episode": by_rank(memory.episode),
                "window_index": by_rank(memory.window_index),
            }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("minesweep_train_memory")
        if saved is None:
            return
        if "ranks" not in saved:  # written before memory was kept per rank: one process
            self._memory["train"] = SlotMemory(list(saved["state"]), saved["episode"], saved["window_index"])
            return
        world = self.trainer.world_size if self._trainer is not None else 1
        if saved["ranks"] != world:
            raise ValueError(
                f"the checkpoint carries the memory of {saved['ranks']} rank(s), this run has {world}: "
                f"resume with the same number of devices (trainer.devices x trainer.num_nodes)"
            )
        rank = self.trainer.global_rank if self._trainer is not None else 0
        self._memory["train"] = SlotMemory(
            [s[rank] for s in saved["state"]], saved["episode"][rank], saved["window_index"][rank]
        )

    def on_train_end(self) -> None:
        # Lightning refreshes last.ckpt only after a validation; make it hold the final step, so a
        # resumed (or requeued) run continues from where this one stopped. Runs in every rank,
        # including ddp_spawn's child processes (saving is collective; rank 0 writes).
        callback = self.trainer.checkpoint_callback
        if callback is not None and getattr(callback, "save_last", False) and callback.dirpath:
            name = f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
            self.trainer.save_checkpoint(os.path.join(callback.dirpath, name))

    def on_fit_start(self) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(self.hyperparameters)

    # -- the step shared by training and validation -------------------------------------------
    def _objective_step(
        self, batch: dict[str, Any], batch_idx: int, step_name: str, memory_key: str | None = None
    ) -> torch.Tensor:
        memory_key = memory_key or step_name
        latents, state_out = self.mine_policy(batch, state_in=self.state_in(batch, memory_key))
        self.remember(batch, state_out, memory_key)
        if not self._checked_latents:
            for objective in self.objectives.values():
                if hasattr(objective, "check_latents"):
                    objective.check_latents(latents, self.mine_policy)
            self._checked_latents = True

        total = torch.zeros((), device=self.device)
        logs: dict[str, torch.Tensor] = {}
        for name, objective in self.objectives.items():
            if hasattr(objective, "on_step"):  # scheduled weights (callbacks not derived from ours may lack it)
                objective.on_step(self.global_step)
            try:
                result = objective(batch, batch_idx, step_name, latents, self.mine_policy)
            except KeyError as error:
                # A user's callback that indexes a latent the policy lacks: say who needs what.
                key = error.args[0] if error.args else None
                if isinstance(key, str) and key not in latents and key in str(error):
                    raise missing_latent(name, key, self.mine_policy, latents) from error
                raise
            if "loss" in result:
                total = total + result["loss"]
            for key, value in result.items():
                logs[f"{step_name}/{name}/{key}"] = torch.as_tensor(value, dtype=torch.float32).detach()
        if not torch.isfinite(total):
            parts = {k: v.item() for k, v in logs.items() if k.endswith("/loss")}
            raise FloatingPointError(
                f"non-finite {step_name} loss {total.item()} at global step {self.global_step}, "
                f"batch {batch_idx} (episodes {batch.get('episode')}); per objective: {parts}"
            )
        on_step = step_name == "train"
        if on_step and not self._writes_training_logs():
            return total
        batch_size = batch["image"].shape[0]
        self.log(
            f"{step_name}/loss", total, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=batch_size
        )
        self.log_dict(logs, on_step=on_step, on_epoch=not on_step, batch_size=batch_size)
        return total

    def _writes_training_logs(self) -> bool:
        """Whether this training step's metrics reach the loggers: on the steps Lightning writes
        (``trainer.log_every_n_steps``, set to ``log_freq`` by the configs) and on the last step, so that the final
        metrics are the last step's. Each ``self.log`` is about a millisecond of Python, so logging every step cost
        several percent of a small model's step for values no logger kept."""
        if self._trainer is None:
            return True
        trainer = self.trainer
        connector = getattr(trainer, "_logger_connector", None)
        if connector is None or not trainer.training:
            return True
        last_step = trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step + 1
        return last_step or bool(connector.should_update_logs)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._objective_step(batch, batch_idx, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return self._objective_step(batch, batch_idx, "val", memory_key=f"val/{dataloader_idx}")

    def on_validation_epoch_end(self) -> None:
        self.last_validated_step = self.global_step

    def on_train_epoch_end(self) -> None:
        # data.on_corrupt=skip: windows whose data failed its checksum were trained on as padding; say how many
        # per epoch (the datasets count across their loader workers).
        datamodule = getattr(self.trainer, "datamodule", None)
        total = sum(getattr(getattr(datamodule, name, None), "corrupt_windows", 0) for name in ("train_set", "val_set"))
        new = total - getattr(self, "_corrupt_windows_seen", 0)
        self._corrupt_windows_seen = total
        if new > 0:
            log.warning(
                "epoch %d: %d window(s) with corrupt data were replaced by masked padding "
                "(data.on_corrupt=skip); run `minesweep-data verify STORE` to list the damaged episodes",
                self.current_epoch,
                new,
            )
            self.log("data/corrupt_windows", float(new), on_epoch=True, on_step=False)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # Lightning refuses to clip for a fused optimizer under any mixed precision, for fp16's loss scaling;
        # bf16 has no scaling (configure_optimizers never fuses under a scaler), so plain clipping is right.
        if (
            gradient_clip_val
            and optimizer.defaults.get("fused")
            and getattr(self.trainer.precision_plugin, "scaler", None) is None
        ):
            params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                clip_grad_norm(params, gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.mine_policy.parameters() if p.requires_grad]
        if self.optimizer_factory is not None:
            optimizer = self.optimizer_factory(params, lr=self.learning_rate, weight_decay=self.weight_decay)
            return {"optimizer": optimizer, "lr_scheduler": self._warmup_scheduler(optimizer)}
        # fp16 mixed precision scales the loss; a fused AdamW unscales inside its step, after clipping would have
        # seen the scaled gradients, so that combination keeps the per-tensor loop.
        scaler = getattr(self._trainer.precision_plugin, "scaler", None) if self._trainer is not None else None
        fused = self.fused_optimizer
        if fused is None:
            fused = scaler is None and all(
                p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params
            )
        elif fused and scaler is not None and self._trainer.gradient_clip_val:
            raise ValueError(
                "optim.fused_optimizer=true cannot clip gradients under 16-mixed precision (the fused step unscales "
                "them itself); set optim.fused_optimizer=null, or trainer.gradient_clip_val=null"
            )
        optimizer = torch.optim.AdamW(
            params,
            lr=self.learning_rate,
            weight_decay=self.weight_decay,
            betas=self.betas,
            fused=fused or None,
        )
        return {"optimizer": optimizer, "lr_scheduler": self._warmup_scheduler(optimizer)}

    def _warmup_scheduler(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Linear warm-up, then constant or cosine (optim.lr_schedule), stepped every optimizer step."""
        total_steps = None
        if self.lr_schedule == "cosine":
            total_steps = int(self.trainer.estimated_stepping_batches)
        schedule = warmup_schedule(self.warmup_steps, total_steps, self.lr_schedule, self.min_lr_ratio)
        return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, schedule), "interval": "step"}
