import math

import torch

from minesweep.objectives import BehaviorCloneCallback
from minesweep.policies.tiny import TinyPolicy


def hand_computed_bc(pi, action, mask):
    """Loop-by-loop reference of the BC loss: per window sum of masked -log p, mean over windows."""
    B, T = mask.shape
    per_window = []
    camera_terms, button_terms = [], []
    for b in range(B):
        cam, but = 0.0, 0.0
        for t in range(T):
            if mask[b, t] == 0:
                continue
            but -= pi["buttons"][b, t, 0, action["buttons"][b, t, 0]].item()
            if action["camera"][b, t, 0] != 60:
                cam -= pi["camera"][b, t, 0, action["camera"][b, t, 0]].item()
        per_window.append(cam + but)
        camera_terms.append(cam)
        button_terms.append(but)
    return sum(per_window) / B, sum(camera_terms) / B, sum(button_terms) / B, sum(per_window) / mask.sum().item()


def test_bc_matches_hand_computation_with_masks():
    torch.manual_seed(0)
    B, T = 3, 4
    pi = {
        "buttons": torch.log_softmax(torch.randn(B, T, 1, 8641), -1),
        "camera": torch.log_softmax(torch.randn(B, T, 1, 121), -1),
    }
    action = {
        "buttons": torch.randint(0, 8641, (B, T, 1)),
        "camera": torch.tensor([[60, 3, 60, 100], [5, 60, 60, 60], [0, 1, 2, 60]]).unsqueeze(-1),
    }
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float32)
    policy = TinyPolicy(hidsize=8)
    out = BehaviorCloneCallback(weight=0.5)(
        {"agent_action": action, "mask": mask}, 0, "train", {"pi_logits": pi}, policy
    )
    loss, cam, but, per_frame = hand_computed_bc(pi, action, mask)
    assert math.isclose(out["loss"].item(), 0.5 * loss, rel_tol=1e-5)
    assert math.isclose(out["camera_loss"].item(), cam, rel_tol=1e-5)
    assert math.isclose(out["button_loss"].item(), but, rel_tol=1e-5)
    assert math.isclose(out["loss_per_frame"].item(), per_frame, rel_tol=1e-5)


def test_bc_of_a_uniform_policy_is_log_of_the_action_space():
    B, T = 2, 3
    pi = {
        "buttons": torch.full((B, T, 1, 8641), -math.log(8641)),
        "camera": torch.full((B, T, 1, 121), -math.log(121)),
    }
    action = {"buttons": torch.zeros(B, T, 1, dtype=torch.long), "camera": torch.full((B, T, 1), 7)}
    out = BehaviorCloneCallback()({"agent_action": action}, 0, "train", {"pi_logits": pi}, TinyPolicy(hidsize=8))
    assert math.isclose(out["loss"].item(), T * (math.log(8641) + math.log(121)), rel_tol=1e-5)
    assert math.isclose(out["entropy"].item(), T * (math.log(8641) + math.log(121)), rel_tol=1e-5)
    assert math.isclose(out["loss_per_frame"].item(), math.log(8641) + math.log(121), rel_tol=1e-5)
