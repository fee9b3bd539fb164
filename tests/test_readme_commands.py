"""The README's "Using it" lines run as written with the default config (at a toy scale: a small store, a few
steps): the commands a newcomer copies first must not fail for half their jobs."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from minesweep.data.loading.datamodule import MineDataModule
from tests.conftest import REPO

pytestmark = pytest.mark.slow

# Toy scale: what each README line is run with, appended after its own arguments.
TOY = [
    "data.demo=null",
    "data.win_len=8",
    "data.batch_size=2",
    "data.num_workers=0",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "callbacks.progress_bar=null",
    "logger=csv",
]
FORCED = {"trainer.max_steps"}  # the line's own value is replaced by the toy one


def using_it_lines() -> list[str]:
    """The ``python train.py``/``minesweep-train`` lines of the README's first code block under "## Using it"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Using it", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [line.split("#", 1)[0].strip() if " #" in line else line.strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith("python train.py")]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readme") / "store"
    MineDataModule(
        root=str(root), demo={"episodes": 4, "frames": 48, "width": 96, "height": 64, "seed": 3, "resolution": 64}
    ).prepare_data()
    return root


def test_the_readme_has_the_lines_we_test():
    lines = using_it_lines()
    assert any("'objective=[bc,kl]'" in line for line in lines), lines
    assert any(" -m " in f" {line} " for line in lines), lines
    assert len(lines) >= 4


@pytest.mark.parametrize("line", using_it_lines())
def test_readme_line_runs_with_the_defaults(line: str, store: Path, tmp_path: Path):
    args = shlex.split(line)[2:]  # after "python train.py"
    if "ckpt_path=last" in args:  # resuming needs a run to resume: the same command without it first
        first = [a for a in args if a != "ckpt_path=last"]
        _run(first, store, tmp_path)
    result = _run(args, store, tmp_path)
    multirun = "-m" in args
    ran = list(
        tmp_path.glob("demo/multirun/*/*/checkpoints/last.ckpt" if multirun else "demo/runs/*/checkpoints/last.ckpt")
    )
    assert ran, result.stdout[-2000:]
    if multirun:  # every job of the sweep trained: none failed for want of a latent
        assert len(ran) == len(list(tmp_path.glob("demo/multirun/*/*/config.yaml"))) >= 2
    assert "MissingLatentError" not in result.stdout + result.stderr


def _run(args: list[str], store: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    args = [a for a in args if a.split("=")[0] not in FORCED]
    toy = [a for a in TOY if a.split("=")[0] not in {x.split("=")[0] for x in args}]
    env = dict(os.environ, WANDB_MODE="disabled")
    command = [sys.executable, "train.py", *args, *toy, f"data.root={store}", f"paths.output_root={tmp_path}"]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr[-4000:]}"
    return result
