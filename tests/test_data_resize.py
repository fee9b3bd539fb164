"""resize_bilinear: bit-exact against OpenCV's INTER_LINEAR reference frames, plus shape/edge properties."""

from pathlib import Path

import numpy as np
import pytest
import torch

from minesweep.data.ingest.resize import resize_bilinear

FIXTURE = (
    Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "vpt" / "preprocess" / "resize_reference.npz"
)


@pytest.fixture(scope="module")
def reference():
    if not FIXTURE.is_file():
        pytest.skip(f"reference fixture {FIXTURE} not found (the shared/ folder next to the checkout is absent)")
    with np.load(FIXTURE) as data:
        return {k: data[k] for k in data.files}


def test_matches_opencv_reference_bit_for_bit(reference):
    out = resize_bilinear(reference["frames_rgb"], (128, 128))
    assert out.dtype == np.uint8 and out.shape == (10, 128, 128, 3)
    diff = np.abs(out.astype(int) - reference["resized_128"])
    per_kind = {str(k): int(d.max()) for k, d in zip(reference["kinds"], diff, strict=False)}
    assert diff.max() == 0, f"max abs diff per frame kind: {per_kind}"


def test_single_frame_equals_batched(reference):
    frames = reference["frames_rgb"][:3]
    batched = resize_bilinear(frames, (128, 128))
    for frame, expected in zip(frames, batched, strict=False):
        np.testing.assert_array_equal(resize_bilinear(frame, (128, 128)), expected)


def test_leading_dims_and_identity():
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, 20, 30, 3), dtype=np.uint8)
    assert resize_bilinear(frames, (10, 16)).shape == (2, 3, 10, 16, 3)
    same = resize_bilinear(frames, (20, 30))
    np.testing.assert_array_equal(same, frames)
    assert same is not frames


def test_exact_half_is_2x2_average():
    frames = np.random.default_rng(1).integers(0, 256, (4, 16, 24, 3), dtype=np.uint8)
    blocks = frames.reshape(4, 8, 2, 12, 2, 3).astype(int).sum(axis=(2, 4))
    np.testing.assert_array_equal(resize_bilinear(frames, (8, 12)), (blocks + 2) >> 2)


@pytest.mark.parametrize("size", [(7, 13), (50, 41), (64, 64), (33, 100)])
def test_close_to_float_bilinear_for_any_scale(size):
    """Down- and up-scaling: within one level of torch's bilinear (align_corners=False, no antialias)."""
    frames = np.random.default_rng(2).integers(0, 256, (2, 30, 40, 3), dtype=np.uint8)
    ours = resize_bilinear(frames, size).astype(int)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).double()
    ref = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=False)
    ref = ref.round().clamp(0, 255).permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(ours - ref).max() <= 1


def test_rejects_non_uint8():
    with pytest.raises(TypeError, match="uint8"):
        resize_bilinear(np.zeros((4, 4, 3), np.float32), (2, 2))
