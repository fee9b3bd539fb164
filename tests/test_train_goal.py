"""GROOT and ROCKET trained end to end by train.py on demo recordings with a segmentation modality."""

import math

import pytest

from minesweep.objectives import MissingLatentError
from minesweep.train import train

# The run config of the other train tests; the demo store (with a segmentation modality) is conftest.py's.
from tests.test_train_run import config, logged

pytestmark = pytest.mark.slow


def falls(curve: list[float], by: float) -> tuple[bool, float, float]:
    start, end = sum(curve[:3]) / 3, sum(curve[-5:]) / 5
    return end < (1 - by) * start, start, end


LEARN = [
    "trainer.max_steps=50",
    "trainer.val_check_interval=25",
    "log_freq=1",
    "optim.learning_rate=1e-3",
    "optim.warmup_steps=5",
]


def test_groot_tiny_trains_with_bc_and_kl(store, tmp_path):
    metrics = train(config(store, tmp_path, "policy=groot_tiny", "objective=[bc,kl]", *LEARN))
    kl = [v for _, v in logged(tmp_path, "train/kl/kl_div")]
    assert len(kl) >= 45 and all(math.isfinite(v) for v in kl)
    ok, start, end = falls([v for _, v in logged(tmp_path, "train/bc/loss_per_frame")], 0.3)
    assert ok, f"GROOT's BC loss per frame did not fall by 30%: {start:.3f} -> {end:.3f}"
    assert math.isfinite(metrics["val/kl/kl_div"]) and metrics["global_step"] == 50


def test_rocket_tiny_trains_on_the_segmentation_modality(store, tmp_path):
    metrics = train(config(store, tmp_path, "policy=rocket_tiny", *LEARN))
    ok, start, end = falls([v for _, v in logged(tmp_path, "train/bc/loss_per_frame")], 0.3)
    assert ok, f"ROCKET's BC loss per frame did not fall by 30%: {start:.3f} -> {end:.3f}"
    assert metrics["global_step"] == 50 and math.isfinite(metrics["val/loss"])


def test_groot_bc_alone_with_a_reference_from_another_window_and_kl_warmup(store, tmp_path):
    metrics = train(
        config(
            store,
            tmp_path / "bc",
            "policy=groot_tiny",
            "objective=[bc]",
            "data.reference_window=other",
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",
        )
    )
    assert metrics["global_step"] == 3 and math.isfinite(metrics["val/loss"])
    train(
        config(
            store,
            tmp_path / "warm",
            "policy=groot_tiny",
            "objective=[bc,kl_warmup]",
            "objective.kl_warmup.warmup_steps=4",
            "trainer.max_steps=6",
            "trainer.val_check_interval=6",
            "log_freq=1",
        )
    )
    weights = dict(logged(tmp_path / "warm", "train/kl_warmup/weight"))
    assert [round(weights[s], 6) for s in range(6)] == [0.0, 0.0025, 0.005, 0.0075, 0.01, 0.01]


def test_vpt_tiny_with_kl_fails_at_the_first_step_naming_the_latent(store, tmp_path):
    with pytest.raises(MissingLatentError, match=r"kl needs latents\['posterior_dist'\]; policy 'vpt_tiny' does not"):
        train(config(store, tmp_path, "policy=vpt_tiny", "objective=[bc,kl]", "trainer.max_steps=5"))
    assert not logged(tmp_path, "train/loss")  # not one step was trained


def test_rocket_on_a_store_without_segmentation_says_what_is_missing(tmp_path):
    root = tmp_path / "plain" / "store"
    from minesweep.data.ingest.contractor import ingest
    from minesweep.data.recordings.synth import generate_recordings

    generate_recordings(tmp_path / "raw", episodes=2, frames=24, width=64, height=64, segmentation=False)
    ingest(tmp_path / "raw", root, print_summary=False)
    with pytest.raises(KeyError, match="segment_mask.*segmentation modality"):
        train(config(root, tmp_path / "out", "policy=rocket_tiny", "trainer.max_steps=2"))
