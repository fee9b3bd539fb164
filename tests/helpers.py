"""Small builders shared by tests."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback

from minesweep.actions.space import N_BUTTON_COMBINATIONS, N_CAMERA_INDICES


def random_batch(B: int = 2, T: int = 6, size: int = 64, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    return {
        "image": torch.randint(0, 256, (B, T, size, size, 3), generator=g, dtype=torch.uint8),
        "agent_action": {
            "buttons": torch.randint(0, N_BUTTON_COMBINATIONS, (B, T, 1), generator=g),
            "camera": torch.randint(0, N_CAMERA_INDICES, (B, T, 1), generator=g),
        },
        "mask": torch.ones(B, T),
        "first": first,
        "episode": torch.arange(B),
        "timestep": torch.arange(T).repeat(B, 1),
    }


#: Overrides that make a real training run small enough for a test on 2 CPU cores.
SMALL_RUN = [
    # the data group's own defaults, not the Crafter demo's (continuous batches, 5% validation): tests set them
    "data.episode_continuous_batch=false",
    "data.val_fraction=0.125",
    "data.win_len=16",
    "data.batch_size=4",
    "data.num_workers=0",
    "data.demo=null",
    "policy.hidsize=64",
    "trainer.accelerator=cpu",
    "trainer.limit_val_batches=2",
    "callbacks.progress_bar=null",
]


def run_eval_cli(args: list[str]) -> int:
    """``minesweep-eval ARGS`` as its console script runs it (Hydra reads sys.argv): the exit code, and a refusal's
    one line on stderr, as the interpreter prints a SystemExit message."""
    import sys

    from minesweep.eval_cli import main

    argv = sys.argv
    sys.argv = ["minesweep-eval", *args]
    try:
        main()
    except SystemExit as exit:
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
            return 1
        return int(exit.code or 0)
    finally:
        sys.argv = argv
    return 0


class DieAtStep(Callback):
    """A Lightning callback that SIGKILLs its own process at optimizer step ``at_step`` (never when negative): a job
    killed without a word, as the out-of-memory killer or a lost node would."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import os
        import signal

        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGKILL)
