import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from minesweep.objectives import KLDivergenceCallback, gaussian_kl
from minesweep.policies.tiny import TinyPolicy


def test_kl_hand_computed():
    # dim 1: same variance, means 1 apart -> 0.5; dim 2: variance 2 vs 1, same mean -> 0.5*(2-1-ln 2)
    q_mu, q_log_var = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(2.0)]])
    p_mu, p_log_var = torch.zeros(1, 2), torch.zeros(1, 2)
    expected = 0.5 + 0.5 * (1.0 - math.log(2.0))
    assert math.isclose(gaussian_kl(q_mu, q_log_var, p_mu, p_log_var).item(), expected, rel_tol=1e-6)


def test_kl_callback_matches_torch_distributions_and_weight():
    torch.manual_seed(0)
    q = {"mu": torch.randn(4, 8), "log_var": torch.randn(4, 8)}
    p = {"mu": torch.randn(4, 8), "log_var": torch.randn(4, 8)}
    out = KLDivergenceCallback(weight=0.01)({}, 0, "train", {"posterior_dist": q, "prior_dist": p}, TinyPolicy(8))
    reference = (
        kl_divergence(Normal(q["mu"], (0.5 * q["log_var"]).exp()), Normal(p["mu"], (0.5 * p["log_var"]).exp()))
        .sum(-1)
        .mean()
    )
    assert out["kl_div"].item() == pytest.approx(reference.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.01 * reference.item(), rel=1e-5)


def test_kl_of_per_frame_latents_sums_the_real_frames_of_each_window():
    torch.manual_seed(0)
    q = {"mu": torch.randn(2, 5, 3), "log_var": torch.randn(2, 5, 3)}
    p = {"mu": torch.zeros(2, 5, 3), "log_var": torch.zeros(2, 5, 3)}
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.float32)
    out = KLDivergenceCallback(weight=0.5)(
        {"mask": mask}, 0, "train", {"posterior_dist": q, "prior_dist": p}, TinyPolicy(8)
    )
    per_frame = gaussian_kl(q["mu"], q["log_var"], p["mu"], p["log_var"])  # (2, 5)
    expected = (per_frame[0, :3].sum() + per_frame[1].sum()) / 2  # padding frames of window 0 left out
    assert out["kl_div"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.5 * expected.item(), rel=1e-6)
