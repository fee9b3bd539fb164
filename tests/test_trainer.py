import math

import pytest
import torch

from minesweep.objectives import BehaviorCloneCallback, KLDivergenceCallback, MissingLatentError, ObjectiveCallback
from minesweep.policies.tiny import TinyPolicy
from minesweep.trainer import MineLightning, clip_grad_norm, warmup_schedule
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


def test_training_metrics_are_logged_on_the_written_steps_and_the_last_one(store, tmp_path):
    """Each written row holds that very step's loss; steps no logger writes are not logged (each self.log costs
    Python time); the final metrics are the last step's."""
    import csv

    import lightning as L
    from hydra import compose, initialize_config_dir

    from minesweep.train import build
    from tests.conftest import CONF_DIR
    from tests.helpers import SMALL_RUN

    class Losses(L.Callback):
        def __init__(self) -> None:
            self.by_step: dict[int, float] = {}

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.by_step[trainer.global_step] = float(outputs["loss"])

    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            overrides=[
                *SMALL_RUN,
                f"data.root={store}",
                f"paths.output_dir={tmp_path}",
                "logger=csv",
                "trainer.max_steps=8",
                "trainer.limit_val_batches=0",
                "log_freq=3",
            ],
        )
    trainer, module, datamodule = build(cfg)
    losses = Losses()
    trainer.callbacks.append(losses)
    calls = []
    log = module.log
    module.log = lambda name, *a, **k: (calls.append((trainer.global_step, name)), log(name, *a, **k))[1]
    trainer.fit(module, datamodule=datamodule)

    rows = [r for path in tmp_path.glob("csv/version_*/metrics.csv") for r in csv.DictReader(open(path))]
    written = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
    # Lightning writes after the 3rd and 6th optimizer steps (steps 2 and 5 in its rows)
    assert sorted(written) == [2, 5], written
    for step, value in written.items():
        assert value == pytest.approx(losses.by_step[step + 1], rel=1e-6), step
    # global_step before each logged step's optimizer step; the 8th step is logged too, for the final metrics
    assert {step for step, _ in calls} == {2, 5, 7}
    assert float(trainer.callback_metrics["train/loss"]) == pytest.approx(losses.by_step[8], rel=1e-6)


@pytest.mark.parametrize("factor", [1e-3, 1.0, 1e3], ids=["clips", "at-the-norm", "within"])
def test_clip_grad_norm_equals_torch_bit_for_bit(factor):
    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(n)) for n in (7, 300, 4096)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, theirs, strict=True):
        a.grad = torch.randn_like(a) * 0.01
        b.grad = a.grad.clone()
    # at the norm itself torch still scales, by max_norm / (norm + 1e-6): just below 1
    max_norm = factor * float(torch.nn.utils.get_total_norm([p.grad for p in ours]))
    norm = clip_grad_norm(ours, max_norm)
    assert torch.equal(norm, torch.nn.utils.clip_grad_norm_(theirs, max_norm))
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a.grad, b.grad)
    assert (torch.nn.utils.get_total_norm([p.grad for p in ours]) < norm) == (factor <= 1.0)
