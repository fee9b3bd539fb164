"""``python -m tests.train_child RECORD -- OVERRIDES...``: ``python train.py OVERRIDES`` (the same Hydra entry point,
run folder, lock, checkpoints) with one callback added that appends every trained batch to the jsonl ``RECORD``: its
step, epoch, episodes, window starts and loss (exact). The fault-injection tests kill this process from outside
and compare the records of an interrupted and resumed run with an uninterrupted one."""

from __future__ import annotations

import json
import os
import sys

import lightning as L

import minesweep.train as train_module


class BatchRecord(L.Callback):
    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        record = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "batch_idx": batch_idx,
            "rank": trainer.global_rank,
            "episode": batch["episode"].tolist(),
            "window": batch["window_index"].tolist(),
            "start": batch["timestep"][:, 0].tolist(),
            "loss": float(outputs["loss"]).hex(),  # exact
        }
        with open(f"{self.path}.rank{trainer.global_rank}", "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())


def limit_file_size(limit: int) -> None:
    """Fault injection: no file written by this process may grow past ``limit`` bytes (EFBIG, as a full disk
    gives ENOSPC: the write fails part way)."""
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write instead of killing the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def main() -> None:
    record, overrides = sys.argv[1], sys.argv[3:]
    if os.environ.get("TEST_FILE_SIZE_LIMIT"):
        limit_file_size(int(os.environ["TEST_FILE_SIZE_LIMIT"]))
    build = train_module.build

    def build_with_record(cfg):
        trainer, module, datamodule = build(cfg)
        trainer.callbacks.append(BatchRecord(record))
        return trainer, module, datamodule

    train_module.build = build_with_record
    sys.argv = ["train.py", *overrides]
    train_module.main()


if __name__ == "__main__":
    main()
