"""benchmarks/gpu.sh stays ready for a GPU machine: its --dry-run takes the same path on this CPU."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_gpu_benchmark_dry_run_prints_every_figure(tmp_path: Path):
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        MINESWEEP_CACHE=str(tmp_path),
        WANDB_MODE="disabled",
    )
    result = subprocess.run(
        ["bash", "benchmarks/gpu.sh", "--dry-run", "--compile", "off"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "machine: CPU" in out and "(dry run)" in out and "peak bf16:" in out
    row = re.search(r"^vpt_tiny\s+off\s+([\d.]+)\s+\S+\s+\S+ GiB\s+([\d.]+)\s+([\d.]+)x", out, re.MULTILINE)
    assert row, out
    frames, loader, headroom = (float(g) for g in row.groups())
    assert frames > 0 and loader > 0
    assert headroom == pytest.approx(loader / frames, rel=0.02)
    assert (tmp_path / "gpu-bench-store" / "manifest.json").is_file(), "the synthetic store was made on first use"
