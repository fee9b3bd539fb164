import os
from pathlib import Path

import pytest

# Never talk to wandb servers from tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED = REPO.parent / "shared"
#: .ci/run sets it where ../shared exists: a test that skips for want of its reference fixtures fails instead.
REQUIRE_SHARED = os.environ.get("MINESWEEP_REQUIRE_SHARED") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if REQUIRE_SHARED and report.skipped:
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
        if "fixture" in reason or "shared" in reason:
            report.outcome = "failed"
            report.longrepr = f"MINESWEEP_REQUIRE_SHARED=1, and this test skipped: {reason}"


@pytest.fixture(scope="session")
def store(tmp_path_factory) -> Path:
    """The demo store of the training and sweep tests: 8 synthetic episodes of 96 frames (with a segmentation
    modality), built once per test session. Read only; a test that needs other data builds its own."""
    from minesweep.data.loading.datamodule import MineDataModule

    root = tmp_path_factory.mktemp("demo") / "store"
    demo = {"episodes": 8, "frames": 96, "width": 160, "height": 90, "seed": 1}
    MineDataModule(root=str(root), demo=demo).prepare_data()
    return root


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"reference fixtures not found at {SHARED} (the ../shared folder beside the checkout)")
    return SHARED
