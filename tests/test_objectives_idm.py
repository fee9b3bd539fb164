"""objective=idm: the inverse dynamics loss and its edge masks against brute force. (A real training run through
train.py, to 90% of frames right on held-out windows: tests/test_data_label.py's IDM.)"""

from __future__ import annotations

import itertools

import pytest
import torch

from minesweep.actions.space import camera_to_bins
from minesweep.objectives import InverseDynamicsCallback
from minesweep.objectives.idm import visible_frames
from minesweep.policies.idm import IDMPolicy
from minesweep.policies.vpt import VPTPolicy
from tests.test_policies_idm import SMALL, frames


def brute_visible(mask: torch.Tensor, future: int) -> torch.Tensor:
    B, T = mask.shape
    out = torch.zeros_like(mask)
    for b, t in itertools.product(range(B), range(T)):
        out[b, t] = float(all(t + k < T and mask[b, t + k] == 1 for k in range(future + 1)))
    return out


@pytest.mark.parametrize("future", [0, 1, 2, 3])
def test_visible_frames_match_brute_force(future):
    g = torch.Generator().manual_seed(future)
    mask = (torch.rand(64, 10, generator=g) < 0.8).float()
    mask[:8, 6:] = 0  # padded tails, as the data module makes them
    torch.testing.assert_close(visible_frames(mask, future), brute_visible(mask, future))


def batch(B: int = 2, T: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    camera = torch.randn(B, T, 2, generator=g) * 5
    return {
        "image": frames(B, T, seed),
        "env_action": {
            "buttons": (torch.rand(B, T, 20, generator=g) < 0.2).to(torch.uint8),
            "camera": camera,
            "camera_bins": torch.from_numpy(camera_to_bins(camera.numpy())),
        },
        "mask": torch.ones(B, T),
    }


def test_loss_is_the_factored_nll_of_the_counted_frames():
    policy = IDMPolicy(**SMALL)
    b = batch()
    b["mask"][1, 6:] = 0
    latents, _ = policy(b)
    out = InverseDynamicsCallback(weight=2.0)(b, 0, "train", latents, policy)
    lp = latents["pi_logits"]
    pressed = b["env_action"]["buttons"].long()
    expected = torch.zeros(2)
    for i, t in itertools.product(range(2), range(8)):
        if t == 7 or (i == 1 and t >= 5):  # the window's last frame; row 1's last valid frame and padding
            continue
        for k in range(20):
            expected[i] -= lp["buttons"][i, t, k, pressed[i, t, k]]
        for axis in range(2):
            expected[i] -= lp["camera"][i, t, axis, b["env_action"]["camera_bins"][i, t, axis]]
    torch.testing.assert_close(out["loss"], 2.0 * expected.mean())
    assert 0.0 <= out["buttons_exact"] <= 1.0 and 0.0 <= out["camera_exact"] <= 1.0


def test_targets_at_frames_it_cannot_see_do_not_count():
    policy = IDMPolicy(**SMALL)
    b = batch()
    b["mask"][:, 6:] = 0
    latents, _ = policy(b)
    loss = InverseDynamicsCallback()(b, 0, "train", latents, policy)["loss"]
    for t in (5, 6, 7):  # the last valid frame (its next frame is padding) and the padding
        b["env_action"]["buttons"][:, t] = 1 - b["env_action"]["buttons"][:, t]
        b["env_action"]["camera_bins"][:, t] = 10 - b["env_action"]["camera_bins"][:, t]
    torch.testing.assert_close(InverseDynamicsCallback()(b, 0, "train", latents, policy)["loss"], loss)
    b["env_action"]["buttons"][:, 4] = 1 - b["env_action"]["buttons"][:, 4]  # a counted frame: the loss moves
    assert not torch.allclose(InverseDynamicsCallback()(b, 0, "train", latents, policy)["loss"], loss)


def test_a_policy_without_the_factored_head_is_refused_by_name():
    policy = VPTPolicy(**{**SMALL, "attention_memory_size": 16, "img_shape": [16, 16, 3], "conv3d_params": None})
    b = batch()
    latents, _ = policy(b)
    with pytest.raises(TypeError, match="policy=idm_tiny"):
        InverseDynamicsCallback()(b, 0, "train", latents, policy)
