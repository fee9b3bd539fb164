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


def idm_lines() -> list[str]:
    """The command lines of the README's first code block under "### Learning from unlabelled video"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Learning from unlabelled video", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]


def test_the_readme_idm_lines_run_as_written(tmp_path: Path):
    """Ingest a few recordings, train an IDM, label videos with it, train BC on both stores (toy scale)."""
    from minesweep.data.recordings.synth import generate_recordings

    lines = idm_lines()
    assert [line.split()[:2] for line in lines] == [
        ["minesweep-data", "ingest"],
        ["python", "train.py"],
        ["minesweep-data", "label"],
        ["python", "train.py"],
        ["python", "train.py"],
    ], lines
    generate_recordings(tmp_path / "labelled", 2, 40, seed=5, width=96, height=64, segmentation=False)
    (tmp_path / "videos").mkdir()
    for mp4 in (tmp_path / "labelled").glob("*.mp4"):
        (tmp_path / "videos" / f"unlabelled-{mp4.name}").write_bytes(mp4.read_bytes())
    env = dict(os.environ, WANDB_MODE="disabled", PWD=str(tmp_path))
    bin_dir = Path(sys.executable).parent
    for n, line in enumerate(lines):
        line = line.replace("$PWD", str(tmp_path)).replace("IDM_RUN", str(tmp_path / "idm_run"))
        args = shlex.split(line)
        if args[0] == "python":
            given = {x.split("=")[0] for x in args} | {"data.demo"}  # data=store has no demo
            toy = [a for a in TOY if a.split("=")[0] not in given]
            run = tmp_path / "idm_run" if n == 1 else tmp_path / f"run{n}"
            command = [sys.executable, str(REPO / "train.py"), *args[2:], *toy, f"hydra.run.dir={run}"]
        else:
            command = [str(bin_dir / args[0]), *args[1:], *(["--no-progress"] if args[1] == "label" else [])]
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{' '.join(command)}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    from minesweep.data.store import EpisodeStore

    assert EpisodeStore(tmp_path / "pseudo_store").labels.startswith("idm:")
    assert (tmp_path / "run4" / "checkpoints" / "last.ckpt").is_file()
