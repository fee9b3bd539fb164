"""KL warm-up schedule and the entropy bonus."""

import pytest
import torch
from torch.distributions import Categorical

from minesweep.objectives import BehaviorCloneCallback, EntropyBonusCallback, KLWarmupCallback, gaussian_kl
from minesweep.policies.tiny import TinyPolicy
from minesweep.trainer import MineLightning
from tests.helpers import random_batch


def dists(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        name: {"mu": torch.randn(3, 4, generator=g), "log_var": torch.randn(3, 4, generator=g)}
        for name in ("posterior_dist", "prior_dist")
    }


def test_kl_warmup_is_linear_then_constant():
    kl = KLWarmupCallback(weight=0.02, warmup_steps=10, start_weight=0.0)
    assert [kl.weight_at(s) for s in (0, 5, 10, 50)] == pytest.approx([0.0, 0.01, 0.02, 0.02])
    assert KLWarmupCallback(weight=0.02, warmup_steps=0).weight_at(0) == 0.02
    assert KLWarmupCallback(weight=0.02, warmup_steps=4, start_weight=0.01).weight_at(2) == pytest.approx(0.015)
    with pytest.raises(ValueError, match="warmup_steps"):
        KLWarmupCallback(warmup_steps=-1)


def test_kl_warmup_loss_follows_the_step_it_is_told():
    latents = dists()
    q, p = latents["posterior_dist"], latents["prior_dist"]
    kl_value = gaussian_kl(q["mu"], q["log_var"], p["mu"], p["log_var"]).mean()
    kl = KLWarmupCallback(weight=0.02, warmup_steps=10)
    for step in (0, 3, 10, 20):
        kl.on_step(step)
        out = kl({}, 0, "train", latents, TinyPolicy(8))
        assert out["kl_div"].item() == pytest.approx(kl_value.item())
        assert out["loss"].item() == pytest.approx(kl.weight_at(step) * kl_value.item())
        assert out["weight"].item() == pytest.approx(kl.weight_at(step))


def test_mine_lightning_passes_its_global_step_to_scheduled_objectives():
    seen = []

    class Recorder(BehaviorCloneCallback):
        def on_step(self, global_step: int) -> None:
            seen.append(global_step)

    module = MineLightning(TinyPolicy(16), {"bc": Recorder()})
    module._objective_step(random_batch(B=1, T=2, size=64), 0, "train")
    assert seen == [0]  # no trainer attached: step 0 (with one, Lightning's restored global_step)


def test_entropy_bonus_matches_categorical_entropy_and_raises_it():
    torch.manual_seed(0)
    policy = TinyPolicy(16)
    batch = random_batch(B=2, T=3, size=64)
    batch["mask"][1, 2] = 0.0  # padding frame: not counted
    latents, _ = policy(batch)
    out = EntropyBonusCallback(weight=0.1)(batch, 0, "train", latents, policy)

    pi = latents["pi_logits"]
    per_frame = (
        Categorical(logits=pi["buttons"][:, :, 0]).entropy() + Categorical(logits=pi["camera"][:, :, 0]).entropy()
    )
    expected = (per_frame * batch["mask"]).sum() / batch["mask"].sum()
    assert out["entropy"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(-0.1 * expected.item(), rel=1e-5)

    # One gradient step on the bonus alone makes the policy less certain.
    optimizer = torch.optim.SGD(policy.parameters(), lr=0.5)
    optimizer.zero_grad()
    out["loss"].backward()
    optimizer.step()
    after = EntropyBonusCallback(weight=0.1)(batch, 0, "train", policy(batch)[0], policy)["entropy"]
    assert after.item() > out["entropy"].item()
