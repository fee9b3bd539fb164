"""MineStudio's side of ``benchmarks/minestudio_side_by_side.py``: run with the Python of a MineStudio environment
(``benchmarks/minestudio_venv.sh`` makes one), not ours.

    MINESTUDIO_PYTHON benchmarks/minestudio_loop.py --hidsize 256 --impala-width 1 --layers 2 --timesteps 32 \
        --batch-size 2 --heads 4 --memory 64 [--warmup 5 --steps 30]

Trains MineStudio 1.1.6's own ``VPTPolicy`` with its own ``MineLightning`` and ``BehaviorCloneCallback`` in a
Lightning ``Trainer`` (fp32, AdamW, gradient clipping at norm 1.0 as ours), on batches held in memory: consecutive
windows of ``batch_size`` episodes, so the memory is carried from window to window as in episode-continuous
training. Each step is timed from Lightning's ``on_train_batch_start`` to ``on_train_batch_end``: the forward,
objectives, backward, clipping and optimizer step, without any data loading. Prints one line,
``minestudio: F frames/s (S ms a step)``.
"""

from __future__ import annotations

import argparse
import importlib
import pathlib
import sys
import time
import types


def import_minestudio():
    """MineStudio's trainer, VPT policy and BC objective, without ``minestudio.models.__init__``: it imports every
    backbone, and GROOT's needs torchvision, which does not import beside a CPU build of torch from another index."""
    import minestudio

    models = types.ModuleType("minestudio.models")
    models.__path__ = [str(pathlib.Path(minestudio.__file__).parent / "models")]
    sys.modules["minestudio.models"] = models
    base = importlib.import_module("minestudio.models.base_policy")
    models.MinePolicy = base.MinePolicy
    vpt = importlib.import_module("minestudio.models.vpt.body")
    from minestudio.offline.mine_callbacks.behavior_clone import BehaviorCloneCallback
    from minestudio.offline.trainer import MineLightning

    return vpt.VPTPolicy, MineLightning, BehaviorCloneCallback


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidsize", type=int, required=True)
    parser.add_argument("--impala-width", type=int, required=True)
    parser.add_argument("--layers", type=int, required=True)
    parser.add_argument("--timesteps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--heads", type=int, required=True)
    parser.add_argument("--memory", type=int, required=True)
    parser.add_argument("--size", type=int, default=128, help="frame height and width")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    return parser


def main() -> None:
    args = parser().parse_args()

    import lightning as L
    import torch

    VPTPolicy, MineLightning, BehaviorCloneCallback = import_minestudio()
    L.seed_everything(0)
    policy = VPTPolicy(
        policy_kwargs=dict(
            recurrence_type="transformer",
            hidsize=args.hidsize,
            impala_width=args.impala_width,
            impala_chans=[16, 32, 32],
            impala_kwargs={"post_pool_groups": 1},
            init_norm_kwargs={"batch_norm": False, "group_norm_groups": 1},
            img_shape=[args.size, args.size, 3],
            attention_heads=args.heads,
            attention_memory_size=args.memory,
            attention_mask_style="clipped_causal",
            n_recurrence_layers=args.layers,
            timesteps=args.timesteps,
            pointwise_ratio=4,
            use_pointwise_layer=True,
            recurrence_is_residual=True,
            use_pre_lstm_ln=False,
        )
    )
    module = MineLightning(
        policy, callbacks=[BehaviorCloneCallback(weight=1.0)], learning_rate=3e-4, warmup_steps=10, log_freq=20
    )

    B, T, steps = args.batch_size, args.timesteps, args.warmup + args.steps
    frames = torch.randint(0, 256, (B, steps * T, args.size, args.size, 3), dtype=torch.uint8)
    buttons = torch.randint(0, 8641, (B, steps * T, 1))
    camera = torch.randint(0, 121, (B, steps * T, 1))

    class Windows(torch.utils.data.Dataset):
        """Batch ``i``: window ``i`` of each of the ``B`` episodes (timestamps run on, so the memory is carried)."""

        def __len__(self) -> int:
            return steps

        def __getitem__(self, i: int) -> dict:
            window = slice(i * T, (i + 1) * T)
            return {
                "image": frames[:, window],
                "agent_action": {"buttons": buttons[:, window], "camera": camera[:, window]},
                "timestamp": torch.arange(i * T, (i + 1) * T).expand(B, T) + 1,
                "mask": torch.ones(B, T),
            }

    class StepTimer(L.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self.started = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.seconds.append(time.perf_counter() - self.started)

    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=steps,
        gradient_clip_val=1.0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    # batch_size=None: each item already is a batch
    loader = torch.utils.data.DataLoader(Windows(), batch_size=None, num_workers=0)
    trainer.fit(module, train_dataloaders=loader)
    timed = timer.seconds[args.warmup :]
    assert len(timed) == args.steps, (len(timed), args.steps)
    seconds = sum(timed)
    print(f"minestudio: {B * T * args.steps / seconds:.1f} frames/s ({1000 * seconds / args.steps:.1f} ms a step)")


if __name__ == "__main__":
    main()
