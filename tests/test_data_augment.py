"""minesweep.data.loading.augment: one parameter draw per window, the same on all its frames; reproducible from
(seed, step); masks and reference videos moved with their frames; training batches only."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from minesweep.data.loading.augment import WindowAugment
from minesweep.data.loading.datamodule import MineDataModule

STRONG = dict(
    translate=0.1, scale=(0.9, 1.1), degrees=8.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.05, blur_p=0.5
)


def still_windows(B: int = 3, T: int = 5, size: int = 48) -> torch.Tensor:
    """B windows, each one still image repeated over T frames (different per window)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (B, 1, size, size, 3), generator=g, dtype=torch.uint8).expand(B, T, -1, -1, -1)


def test_one_draw_per_window_the_same_on_every_frame():
    batch = {"image": still_windows().contiguous(), "mask": torch.ones(3, 5)}
    out = WindowAugment(**STRONG)(batch, seed=0, step=7)
    image = out["image"]
    assert image.dtype == torch.uint8 and image.shape == batch["image"].shape
    for t in range(1, 5):
        assert torch.equal(image[:, t], image[:, 0])  # the frames of a window: transformed alike
    assert not torch.equal(image, batch["image"])
    assert torch.equal(out["mask"], batch["mask"])  # other keys pass through


def test_the_draw_is_fixed_by_seed_and_step():
    # the same content in two windows: two draws, so they come out different
    image = still_windows(B=1).expand(2, -1, -1, -1, -1).contiguous()
    augment = WindowAugment(**STRONG)
    a = augment({"image": image}, seed=1, step=3)["image"]
    assert torch.equal(a, augment({"image": image}, seed=1, step=3)["image"])  # reproducible (a resumed run)
    assert not torch.equal(a[0], a[1])  # each window its own draw
    assert not torch.equal(a, augment({"image": image}, seed=1, step=4)["image"])
    assert not torch.equal(a, augment({"image": image}, seed=2, step=3)["image"])
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    augment({"image": image}, seed=1, step=3)
    assert torch.equal(torch.rand(1), before)  # the caller's random stream is left as it was


def test_masks_and_reference_videos_move_with_their_frames():
    B, T, size = 4, 3, 64
    image = torch.full((B, T, size, size, 3), 20, dtype=torch.uint8)
    mask = torch.zeros(B, T, size, size, dtype=torch.uint8)
    image[:, :, 24:40, 24:40] = 230  # a bright square, and its mask
    mask[:, :, 24:40, 24:40] = 1
    geometric = WindowAugment(translate=0.15, scale=(0.8, 1.2), degrees=15.0)
    out = geometric({"image": image, "segment_mask": mask, "reference_image": image.clone()}, seed=0, step=0)
    moved_mask, moved = out["segment_mask"], out["image"]
    assert moved_mask.dtype == mask.dtype and set(moved_mask.unique().tolist()) <= {0, 1}  # still binary
    assert not torch.equal(moved_mask, mask)
    bright = moved.float().mean(-1) > 125
    agreement = (bright == moved_mask.bool()).float().mean()
    assert agreement > 0.99, f"the mask no longer covers the square: {agreement:.3f} of pixels agree"
    assert torch.equal(out["reference_image"], moved)  # the same video, the same transform


def test_only_training_batches_are_augmented():
    dm = MineDataModule("unused", augment=WindowAugment(**STRONG), seed=0)
    batch = {"image": still_windows().contiguous()}
    dm.trainer = SimpleNamespace(training=False, global_step=5)
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)["image"], batch["image"])  # validation: as stored
    dm.trainer = SimpleNamespace(training=True, global_step=5)
    augmented = dm.on_after_batch_transfer(batch, 0)["image"]
    assert torch.equal(augmented, WindowAugment(**STRONG)(batch, seed=0, step=5)["image"])


def test_impossible_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="translate"):
        WindowAugment(translate=1.5)
    with pytest.raises(ValueError, match="scale"):
        WindowAugment(scale=(1.2, 0.8))
