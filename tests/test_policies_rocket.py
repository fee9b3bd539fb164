"""ROCKET-1: shapes, clear errors without segmentation, FiLM conditioning, memory, inference with a condition,
nucleus sampling, and that the predicted camera action follows the object mask after brief training."""

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from minesweep.actions import CAMERA_INDEX_TO_BINS, camera_to_bins
from minesweep.actions.space import N_CAMERA_BINS
from minesweep.data.segmentation import INTERACTION_TYPES
from minesweep.objectives import BehaviorCloneCallback
from minesweep.policies.heads import MineActionHead, nucleus_filter
from minesweep.policies.rocket import RocketPolicy
from minesweep.train import build_policy
from tests.conftest import CONF_DIR
from tests.helpers import random_batch


def small_rocket(**kwargs) -> RocketPolicy:
    torch.manual_seed(0)
    args = dict(hidsize=64, channels=(16, 32, 32), interaction_dim=8, memory_layers=1, memory_heads=4, memory_size=8)
    return RocketPolicy(**{**args, **kwargs})


def with_segmentation(batch: dict, seed: int = 0) -> dict:
    B, T, H, W = batch["image"].shape[:4]
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(B, T, H, W, dtype=torch.bool)
    for b in range(B):
        y, x = torch.randint(0, H - 8, (2,), generator=g).tolist()
        mask[b, :, y : y + 8, x : x + 8] = True
    interaction = torch.full((B, T), INTERACTION_TYPES.index("mine"))
    return {
        **batch,
        "segment_mask": mask,
        "segment_interaction": interaction,
        "segment_valid": torch.ones(B, T, dtype=torch.bool),
    }


def test_latents_and_state():
    policy = small_rocket()
    latents, state = policy(with_segmentation(random_batch(B=2, T=5, size=32)))
    assert latents["pi_logits"]["buttons"].shape == (2, 5, 1, 8641)
    assert latents["pi_logits"]["camera"].shape == (2, 5, 1, 121)
    assert latents["vpred"].shape == (2, 5, 1)
    assert len(state) == 3 and state[1].shape == (2, 8, 64)


@pytest.mark.parametrize("config", ["rocket_tiny", "rocket"])
def test_configs_build(config):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=[f"policy={config}"])
    policy = build_policy(cfg.policy)
    assert isinstance(policy, RocketPolicy) and policy.pi_head.nucleus_prob == cfg.policy.nucleus_prob


def test_missing_segmentation_is_a_clear_error():
    policy = small_rocket()
    with pytest.raises(KeyError, match="segment_mask.*segmentation modality"):
        policy(random_batch(B=1, T=2, size=32))
    batch = with_segmentation(random_batch(B=1, T=2, size=32))
    with pytest.raises(ValueError, match="segment_mask is"):
        policy({**batch, "segment_mask": batch["segment_mask"][..., :16]})


def test_mask_and_interaction_type_both_change_the_output():
    policy = small_rocket()
    # FiLM starts as the identity: give it weights so that the interaction type matters.
    for module in policy.modules():
        if type(module).__name__ == "FiLM":
            torch.nn.init.normal_(module.linear.weight, std=0.5)
    batch = with_segmentation(random_batch(B=2, T=3, size=32))
    base, _ = policy(batch)
    moved, _ = policy({**batch, "segment_mask": batch["segment_mask"].roll(8, dims=-1)})
    other_type, _ = policy({**batch, "segment_interaction": torch.full((2, 3), INTERACTION_TYPES.index("hunt"))})
    invalid, _ = policy({**batch, "segment_valid": torch.zeros(2, 3, dtype=torch.bool)})
    camera = base["pi_logits"]["camera"]
    assert not torch.allclose(camera, moved["pi_logits"]["camera"])
    assert not torch.allclose(camera, other_type["pi_logits"]["camera"])
    assert not torch.allclose(camera, invalid["pi_logits"]["camera"])  # invalid frames: "no interaction"
    # FiLM reaches every conv block and every memory block.
    BehaviorCloneCallback()(batch, 0, "train", base, policy)["loss"].backward()
    films = [m for m in policy.modules() if type(m).__name__ == "FiLM"]
    assert len(films) == 3 + 1
    assert all(f.linear.weight.grad.abs().sum() > 0 for f in films)


def test_memory_carries_across_windows():
    policy = small_rocket().eval()
    batch = with_segmentation(random_batch(B=2, T=6, size=32))
    whole, _ = policy(batch)

    def half(sl: slice) -> dict:
        return {
            k: (v[:, sl] if k != "episode" and torch.is_tensor(v) and v.dim() >= 2 else v)
            for k, v in batch.items()
            if k != "agent_action"
        }

    _, state = policy(half(slice(0, 3)))
    second, _ = policy(half(slice(3, 6)), state)
    torch.testing.assert_close(second["pi_logits"]["camera"], whole["pi_logits"]["camera"][:, 3:], atol=1e-4, rtol=1e-4)


def test_get_action_with_a_condition_and_nucleus_sampling():
    policy = small_rocket(nucleus_prob=0.5).eval()
    seg = with_segmentation(random_batch(B=2, T=1, size=32))
    obs = {"image": seg["image"]}
    condition = {"segment_mask": seg["segment_mask"], "segment_interaction": torch.tensor([1, 1])}
    action, state = policy.get_action(obs, None, condition, deterministic=True)
    assert action["camera"].shape == (2, 1, 1) and len(state) == 3
    latents, _ = policy({**obs, **condition})
    assert torch.equal(action["camera"], latents["pi_logits"]["camera"].argmax(-1))
    # Top-p: the sampled classes lie within the nucleus of the head's default nucleus_prob.
    torch.manual_seed(0)
    many = {k: v.repeat(64, *[1] * (v.dim() - 1)) for k, v in {**obs, **condition}.items()}
    sampled, _ = policy.get_action(many, None)
    kept = torch.isfinite(nucleus_filter(policy(many)[0]["pi_logits"]["camera"], 0.5))
    assert kept.gather(-1, sampled["camera"].unsqueeze(-1)).all()


def test_nucleus_filter_keeps_the_smallest_top_set():
    log_probs = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
    assert torch.isfinite(nucleus_filter(log_probs, 0.45)).tolist() == [True, False, False, False]
    assert torch.isfinite(nucleus_filter(log_probs, 0.6)).tolist() == [True, True, False, False]
    assert torch.isfinite(nucleus_filter(log_probs, 0.97)).tolist() == [True, True, True, True]
    head = MineActionHead(4, nucleus_prob=0.6)
    pi = {
        "buttons": torch.tensor([[0.9, 0.1] + [0.0] * 8639]).log()[:, None],
        "camera": torch.tensor([[0.5, 0.3, 0.2] + [0.0] * 118]).log()[:, None],
    }
    samples = [head.sample(pi) for _ in range(200)]
    assert {int(s["camera"]) for s in samples} == {0, 1}
    assert {int(s["buttons"]) for s in samples} == {0}
    with pytest.raises(ValueError, match="nucleus_prob"):
        MineActionHead(4, nucleus_prob=1.5)


# --------------------------------------------------------------------------- the mask steers the camera

LEFT, RIGHT = (int(camera_to_bins(np.array([0.0, d]))[1]) for d in (-6.0, 6.0))


def two_object_frames(B: int, T: int, size: int, gen: torch.Generator, pick: torch.Tensor) -> dict:
    """Two identical red blocks, one in each half of the frame; the mask marks block ``pick`` (0 left, 1 right)
    and the recorded camera turns toward it. The image alone cannot tell which block to turn to."""
    image = torch.randint(60, 140, (B, T, size, size, 3), generator=gen, dtype=torch.uint8)
    mask = torch.zeros(B, T, size, size, dtype=torch.bool)
    half, block = size // 2, 6
    for b in range(B):
        for side in (0, 1):
            y = int(torch.randint(0, size - block, (), generator=gen))
            x = side * half + int(torch.randint(1, half - block - 1, (), generator=gen))
            image[b, :, y : y + block, x : x + block] = torch.tensor([220, 40, 40], dtype=torch.uint8)
            if side == int(pick[b]):
                mask[b, :, y : y + block, x : x + block] = True
    yaw_bin = torch.where(pick == 0, LEFT, RIGHT)
    camera = (N_CAMERA_BINS // 2) * N_CAMERA_BINS + yaw_bin  # pitch bin 5 (no pitch), yaw toward the mask
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    return {
        "image": image,
        "segment_mask": mask,
        "segment_interaction": torch.full((B, T), INTERACTION_TYPES.index("mine")),
        "segment_valid": torch.ones(B, T, dtype=torch.bool),
        "agent_action": {
            "buttons": torch.zeros(B, T, 1, dtype=torch.long),
            "camera": camera[:, None, None].expand(B, T, 1).clone(),
        },
        "mask": torch.ones(B, T),
        "first": first,
    }


@pytest.mark.slow
def test_shifting_the_mask_moves_the_predicted_camera_toward_it():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    policy = small_rocket()
    bc = BehaviorCloneCallback()
    optimizer = torch.optim.Adam(policy.parameters(), lr=2e-3)
    policy.train()
    for step in range(110):
        batch = two_object_frames(16, 2, 32, gen, torch.randint(0, 2, (16,), generator=gen))
        latents, _ = policy(batch)
        loss = bc(batch, step, "train", latents, policy)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    policy.eval()
    yaw_bins = torch.tensor(np.array(CAMERA_INDEX_TO_BINS[:, 1]), dtype=torch.float32)
    with torch.no_grad():
        batch = two_object_frames(16, 4, 32, gen, torch.zeros(16, dtype=torch.long))  # mask on the left block
        left, _ = policy(batch)
        # The same frames, the mask moved onto the right block.
        image = batch["image"]
        red = (image[..., 0] == 220) & (image[..., 1] == 40)
        right_half = torch.zeros_like(red)
        right_half[..., 16:] = True
        right, _ = policy({**batch, "segment_mask": red & right_half})
        assert not torch.equal(red & right_half, batch["segment_mask"])  # the mask did move
    yaw_left = (left["pi_logits"]["camera"][:, :, 0].exp() @ yaw_bins).mean().item()
    yaw_right = (right["pi_logits"]["camera"][:, :, 0].exp() @ yaw_bins).mean().item()
    centre = N_CAMERA_BINS // 2
    assert yaw_left < centre - 1.5 and yaw_right > centre + 1.5, (yaw_left, yaw_right)
    assert yaw_right - yaw_left > 4, (yaw_left, yaw_right)
