"""Real runs: exact mid-epoch resume (continuous and random batches), and 2-process DDP with whole episodes per rank
in continuous mode."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir

from minesweep.train import build
from tests.conftest import CONF_DIR
from tests.test_train_run import SMALL

pytestmark = pytest.mark.slow


class BatchRecorder(L.Callback):
    """Writes, per rank, each training batch's episodes, first timesteps and loss to a jsonl file."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        record = {
            "step": trainer.global_step,
            "episode": batch["episode"].tolist(),
            "start": batch["timestep"][:, 0].tolist(),
            "loss": float(outputs["loss"]),
        }
        with open(Path(self.folder) / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def run(store, output_dir: Path, record_dir: Path, *overrides, ckpt_path=None):
    record_dir.mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            overrides=[
                *SMALL,
                f"data.root={store}",
                f"paths.output_dir={output_dir}",
                "~logger",
                "data.win_len=8",
                "data.batch_size=2",
                "trainer.limit_val_batches=0",
                "callbacks.lr_monitor=null",
                "optim.learning_rate=1e-3",
                "optim.warmup_steps=0",
                *overrides,
            ],
        )
    L.seed_everything(cfg.seed)
    trainer, module, datamodule = build(cfg)
    trainer.callbacks.append(BatchRecorder(str(record_dir)))
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return trainer, module


def records(folder: Path, rank: int = 0) -> list[dict]:
    return [json.loads(line) for line in open(folder / f"rank{rank}.jsonl")]


CONTINUOUS = "data.episode_continuous_batch=true"


@pytest.mark.parametrize("batches", [CONTINUOUS, "data.sampling=grid", "data.sampling=frames"])
def test_resume_mid_epoch_continues_with_the_exact_next_batch(store, tmp_path, batches):
    run(store, tmp_path / "straight", tmp_path / "rec_straight", "trainer.max_steps=8", batches)
    run(store, tmp_path / "cut", tmp_path / "rec_cut", "trainer.max_steps=4", batches)
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 4 and ("minesweep_train_memory" in saved) == (batches == CONTINUOUS)
    run(store, tmp_path / "cut", tmp_path / "rec_resumed", "trainer.max_steps=8", batches, ckpt_path=str(last))

    straight = records(tmp_path / "rec_straight")
    resumed = records(tmp_path / "rec_resumed")
    assert [r["step"] for r in resumed] == [5, 6, 7, 8]
    for expected, got in zip(straight[4:], resumed, strict=False):
        assert (got["episode"], got["start"]) == (expected["episode"], expected["start"])
        # same weights, optimizer state (and carried memory) -> the same loss
        assert got["loss"] == pytest.approx(expected["loss"], rel=1e-5, abs=1e-5)


def test_ddp_two_processes_each_rank_keeps_its_own_episodes(store, tmp_path):
    trainer, module = run(
        store,
        tmp_path / "out",
        tmp_path / "rec",
        "trainer.max_steps=4",
        "trainer.strategy=ddp_spawn_find_unused_parameters_true",
        "trainer.devices=2",
        CONTINUOUS,
    )
    rank0, rank1 = records(tmp_path / "rec", 0), records(tmp_path / "rec", 1)
    assert len(rank0) == len(rank1) == 4
    episodes0 = {e for r in rank0 for e in r["episode"] if e >= 0}
    episodes1 = {e for r in rank1 for e in r["episode"] if e >= 0}
    assert episodes0 and episodes1 and not episodes0 & episodes1
    # each slot continues its episode from one batch to the next (8-frame windows)
    for rank in (rank0, rank1):
        for before, after in zip(rank, rank[1:], strict=False):
            for slot in range(2):
                if after["episode"][slot] == before["episode"][slot] >= 0:
                    assert after["start"][slot] == before["start"][slot] + 8
    # last.ckpt is written in the ranks at train end, not overwritten by the (step-0) parent process
    assert torch.load(tmp_path / "out" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
