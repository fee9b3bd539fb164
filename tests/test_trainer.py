import math

import pytest
import torch

from minesweep.objectives import BehaviorCloneCallback, KLDivergenceCallback, MissingLatentError, ObjectiveCallback
from minesweep.policies.tiny import TinyPolicy
from minesweep.trainer import MineLightning, warmup_schedule
from tests.helpers import random_batch


class SeedStyleCallback(ObjectiveCallback):
    """A user's objective written against MineStudio's documented API, imports changed only."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def __call__(self, batch, batch_idx, step_name, latents, mine_policy):
        agent_action = batch["agent_action"]
        pi_logits = latents["pi_logits"]
        log_prob = mine_policy.pi_head.logprob(agent_action, pi_logits, return_dict=True)
        entropy = mine_policy.pi_head.entropy(pi_logits, return_dict=True)
        camera_mask = (agent_action["camera"] != 60).float().squeeze(-1)
        global_mask = batch.get("mask", torch.ones_like(camera_mask))
        logp_camera = (log_prob["camera"] * global_mask * camera_mask).sum(-1)
        logp_buttons = (log_prob["buttons"] * global_mask).sum(-1)
        entropy_sum = ((entropy["camera"] * camera_mask + entropy["buttons"]) * global_mask).sum(-1)
        bc_loss = -(logp_camera + logp_buttons)
        return {"loss": bc_loss.mean() * self.weight, "entropy": entropy_sum.mean()}


class NeedsGoal(ObjectiveCallback):
    def __call__(self, batch, batch_idx, step_name, latents, mine_policy):
        return {"loss": latents["goal_embedding"].sum()}


def test_user_callback_runs_unchanged_and_agrees_with_builtin():
    torch.manual_seed(0)
    batch = random_batch()
    batch["mask"][1, 4:] = 0
    batch["agent_action"]["camera"][0, :2] = 60
    policy = TinyPolicy(hidsize=16)
    latents, _ = policy(batch, None)
    user = SeedStyleCallback()(batch, 0, "train", latents, policy)
    ours = BehaviorCloneCallback()(batch, 0, "train", latents, policy)
    torch.testing.assert_close(user["loss"], ours["loss"])
    torch.testing.assert_close(user["entropy"], ours["entropy"])


def test_total_loss_is_sum_of_objective_losses_and_other_keys_only_logged():
    torch.manual_seed(0)
    policy = TinyPolicy(hidsize=16)
    module = MineLightning(policy, {"bc": BehaviorCloneCallback(1.0), "user": SeedStyleCallback(0.5)})
    batch = random_batch()
    total = module._objective_step(batch, 0, "val")
    latents, _ = policy(batch, None)
    bc = BehaviorCloneCallback()(batch, 0, "val", latents, policy)["loss"]
    torch.testing.assert_close(total, 1.5 * bc)


@pytest.mark.parametrize(
    "objective, name, key",
    [(KLDivergenceCallback(0.01), "kl", "posterior_dist"), (NeedsGoal(), "goal", "goal_embedding")],
)
def test_missing_latent_names_objective_key_and_policy(objective, name, key):
    module = MineLightning(TinyPolicy(hidsize=16), {name: objective})
    with pytest.raises(MissingLatentError) as info:
        module._objective_step(random_batch(), 0, "train")
    assert f"{name} needs latents['{key}']; policy 'tiny' does not produce it" in str(info.value)


def test_nan_loss_is_a_clear_error():
    class NaNLoss(ObjectiveCallback):
        def __call__(self, batch, batch_idx, step_name, latents, mine_policy):
            return {"loss": torch.tensor(float("nan"))}

    module = MineLightning(TinyPolicy(hidsize=16), {"bc": BehaviorCloneCallback(), "broken": NaNLoss()})
    with pytest.raises(FloatingPointError, match="non-finite train loss.*broken"):
        module._objective_step(random_batch(), 3, "train")


def test_warmup_then_constant_or_cosine():
    constant = warmup_schedule(10, None, "constant", 0.0)
    assert [constant(s) for s in (0, 4, 9, 10, 1000)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    cosine = warmup_schedule(10, 110, "cosine", 0.1)
    assert cosine(9) == 1.0
    assert math.isclose(cosine(60), 0.1 + 0.9 * 0.5, rel_tol=1e-9)
    assert math.isclose(cosine(110), 0.1, rel_tol=1e-9)
    with pytest.raises(ValueError, match="lr_schedule"):
        warmup_schedule(10, None, "linear-ish", 0.0)


def test_no_objective_is_refused():
    with pytest.raises(ValueError, match="at least one objective"):
        MineLightning(TinyPolicy(hidsize=16), {})


@pytest.mark.parametrize("fused_optimizer, expected", [(None, True), (False, False)])
def test_adamw_uses_the_fused_kernel_unless_told_not_to(fused_optimizer, expected):
    policy = TinyPolicy(hidsize=16)
    module = MineLightning(policy, [BehaviorCloneCallback()], fused_optimizer=fused_optimizer)
    optimizer = module.configure_optimizers()["optimizer"]
    assert bool(optimizer.param_groups[0]["fused"]) is expected
    # Both give the same update (the fused kernel is an implementation detail).
    batch = random_batch()
    loss = module._objective_step(batch, 0, "train")
    loss.backward()
    before = [p.detach().clone() for p in policy.parameters()]
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, policy.parameters(), strict=False))


def test_corrupt_windows_are_logged_once_per_epoch(caplog):
    """data.on_corrupt=skip: MineLightning warns with the number of windows replaced in the epoch just ended."""
    import logging
    from types import SimpleNamespace

    dataset = SimpleNamespace(corrupt_windows=0)
    logged = []
    fake = SimpleNamespace(
        trainer=SimpleNamespace(datamodule=SimpleNamespace(train_set=dataset, val_set=None)),
        current_epoch=0,
        log=lambda name, value, **kw: logged.append((name, value)),
    )
    with caplog.at_level(logging.WARNING, logger="minesweep.trainer"):
        MineLightning.on_train_epoch_end(fake)  # nothing corrupt: silent
        assert caplog.text == "" and logged == []
        dataset.corrupt_windows, fake.current_epoch = 3, 1
        MineLightning.on_train_epoch_end(fake)
        dataset.corrupt_windows, fake.current_epoch = 5, 2
        MineLightning.on_train_epoch_end(fake)
    assert "epoch 1: 3 window(s) with corrupt data" in caplog.text and "epoch 2: 2 window(s)" in caplog.text
    assert logged == [("data/corrupt_windows", 3.0), ("data/corrupt_windows", 2.0)]
