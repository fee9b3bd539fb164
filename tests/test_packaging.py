"""`pip install .` (not editable): the wheel carries conf/ and launch/, and its console scripts find them from any
folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def source_copy(destination: Path) -> Path:
    """The checkout's files (tracked and new, not ignored): no build/ folder left by an earlier build."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    for name in listed:
        if (REPO / name).is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, destination / name)
    return destination


def test_a_wheel_install_finds_its_configs_from_any_folder(tmp_path: Path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    source = source_copy(tmp_path / "source")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
        check=True,
        cwd=tmp_path,
    )
    (wheel,) = wheels.glob("minesweep-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        cwd=tmp_path,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "disabled"}

    def printed_by(code: str) -> list[str]:
        """What ``code`` prints, run by the installed wheel from a folder with no checkout."""
        done = subprocess.run(
            [sys.executable, "-c", code], check=True, cwd=elsewhere, env=env, capture_output=True, text=True
        )
        return done.stdout.split()

    where = printed_by("import minesweep.searchpath as s; print(s.CONF_DIR, s.LAUNCH_DIR)")
    assert where == [str(target / "minesweep" / "conf"), str(target / "minesweep" / "launch")]
    assert (target / "minesweep" / "conf" / "train.yaml").is_file()
    # the default evaluation's baseline episodes (package data), found where eval_cache looks for them
    shipped = printed_by("from minesweep.eval_cache import shipped_episodes as s; print(len(s()))")
    assert shipped == ["60"]

    # the console script, run from a folder with no conf/: the experiment and a launcher preset of launch/ compose
    script = target / "bin" / "minesweep-train"
    job = subprocess.run(
        [sys.executable, str(script), "--cfg", "job"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert "_target_: minesweep.policies.tiny.TinyPolicy" in job.stdout
    hydra = subprocess.run(
        [sys.executable, str(script), "hydra/launcher=slurm", "--cfg", "hydra"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert hydra.returncode == 0, hydra.stderr[-3000:]
    assert "minesweep.sweeps.launcher.SlurmLauncher" in hydra.stdout
