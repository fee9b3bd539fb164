"""Window-consistent video augmentation of training batches (``data/augment=light``, conf/data/augment/).

One random parameter set per window, applied identically to every frame of it: a memory policy must see one
consistent world within a window (a camera that jumps from frame to frame is another game). Built from kornia's
``VideoSequential`` with ``same_on_frame=True``, on torch tensors: it runs wherever the batch is, the accelerator
included. It is applied after the batch reaches the training device (``MineDataModule.on_after_batch_transfer``),
to training batches only (validation sees the data as stored), with parameters drawn from a generator seeded by
``(seed, global step)``: a resumed run draws the same parameters as the run that was never interrupted, and a rerun
reproduces them. (Albumentations was the alternative: NumPy/OpenCV per frame, on the CPU only.)

Geometric transforms (shift, scale, rotation: a randomly shifted and resized crop) apply to the frames, to the
segmentation masks (nearest neighbour, so masks stay binary) and to the reference video of GROOT-style batches,
with the same parameters; photometric ones (colour jitter, blur) to the frames and the reference video.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["WindowAugment"]


class WindowAugment:
    """``translate``: the largest shift, a fraction of the width/height; ``scale``: (min, max) zoom; ``degrees``: the
    largest rotation; ``brightness``/``contrast``/``saturation``/``hue``: ColorJitter's ranges; ``blur_sigma``:
    (min, max) of a 3x3 Gaussian blur applied with probability ``blur_p``. A zero disables its transform."""

    def __init__(
        self,
        translate: float = 0.0,
        scale: tuple[float, float] = (1.0, 1.0),
        degrees: float = 0.0,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        blur_sigma: tuple[float, float] = (0.1, 1.0),
        blur_p: float = 0.0,
    ) -> None:
        import kornia.augmentation as K  # only where augmentation is configured

        scale = tuple(float(s) for s in scale)
        if not 0.0 <= translate < 1.0 or len(scale) != 2 or not 0.0 < scale[0] <= scale[1] or degrees < 0:
            raise ValueError(
                f"data.augment: translate must be in [0, 1), scale a (min, max) pair of positive numbers and degrees "
                f">= 0; got translate={translate}, scale={scale}, degrees={degrees}"
            )
        self.settings = dict(
            translate=translate,
            scale=scale,
            degrees=degrees,
            brightness=brightness,
            contrast=contrast,
            saturation=saturation,
            hue=hue,
            blur_sigma=tuple(blur_sigma),
            blur_p=blur_p,
        )
        geometric = []
        if translate or degrees or scale != (1.0, 1.0):
            geometric.append(
                K.RandomAffine(
                    degrees=degrees, translate=(translate, translate), scale=scale, p=1.0, padding_mode="border"
                )
            )
        photometric = []
        if brightness or contrast or saturation or hue:
            photometric.append(K.ColorJitter(brightness, contrast, saturation, hue, p=1.0))
        if blur_p:
            photometric.append(K.RandomGaussianBlur((3, 3), tuple(blur_sigma), p=blur_p))
        video = dict(data_format="BTCHW", same_on_frame=True)
        self.geometric = K.VideoSequential(*geometric, **video) if geometric else None
        self.photometric = K.VideoSequential(*photometric, **video) if photometric else None

    def __repr__(self) -> str:
        return f"WindowAugment({', '.join(f'{k}={v}' for k, v in self.settings.items())})"

    def __call__(self, batch: Mapping[str, Any], seed: int, step: int) -> dict[str, Any]:
        """The batch with ``image`` (and ``reference_image``, ``segment_mask`` where present) augmented, one
        parameter set per window, drawn from ``(seed, step)``."""
        out = dict(batch)
        if self.geometric is None and self.photometric is None:
            return out
        image = batch["image"]
        with torch.random.fork_rng(devices=[image.device] if image.device.type == "cuda" else []):
            torch.manual_seed(int(np.random.SeedSequence([int(seed), int(step)]).generate_state(1)[0]))
            frames = _to_float(image)
            geometric_params = photometric_params = None
            if self.geometric is not None:
                frames = self.geometric(frames)
                geometric_params = self.geometric._params
            if self.photometric is not None:
                frames = self.photometric(frames)
                photometric_params = self.photometric._params
        out["image"] = _to_uint8(frames)
        if "reference_image" in batch:  # the goal video: the same camera and colours as the window
            reference = _to_float(batch["reference_image"])
            if geometric_params is not None:
                reference = self.geometric(reference, params=geometric_params)
            if photometric_params is not None:
                reference = self.photometric(reference, params=photometric_params)
            out["reference_image"] = _to_uint8(reference)
        if "segment_mask" in batch and geometric_params is not None:
            from kornia.constants import Resample

            mask = batch["segment_mask"]  # (B, T, H, W): moved with the frames, kept binary
            moved = self.geometric(
                mask.unsqueeze(2).float(), params=geometric_params, extra_args={"resample": Resample.NEAREST}
            )
            out["segment_mask"] = moved.squeeze(2).round().to(mask.dtype)
        return out


def _to_float(image: torch.Tensor) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, T, 3, H, W) in [0, 1]."""
    return image.permute(0, 1, 4, 2, 3).float().div_(255.0)


def _to_uint8(frames: torch.Tensor) -> torch.Tensor:
    return frames.mul(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 1, 3, 4, 2).contiguous()
