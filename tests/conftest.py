import os
from pathlib import Path

import pytest

# Never talk to wandb servers from tests.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
SHARED = REPO.parent / "shared"


@pytest.fixture
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"reference fixtures not found at {SHARED} (the ../shared folder beside the checkout)")
    return SHARED
