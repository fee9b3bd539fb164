"""GROOT: shapes and latents, the KL objective against its latents, gradients, inference modes, memory,
backbone choice, and that the goal actually conditions behaviour after brief training."""

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch.distributions import Normal, kl_divergence

from minesweep.actions import CAMERA_INDEX_TO_BINS, env_to_agent
from minesweep.objectives import BehaviorCloneCallback, KLDivergenceCallback, KLWarmupCallback
from minesweep.policies.backbones import ImpalaBackbone, SmallCNN
from minesweep.policies.groot import GrootPolicy
from minesweep.train import build_policy
from minesweep.trainer import MineLightning
from tests.conftest import CONF_DIR
from tests.helpers import random_batch


def small_groot(**kwargs) -> GrootPolicy:
    torch.manual_seed(0)
    args = dict(
        hidsize=64, latent_dim=16, encoder_layers=1, encoder_heads=4, decoder_layers=1, decoder_heads=4, memory_size=8
    )
    return GrootPolicy(**{**args, **kwargs})


def test_latents_shapes_and_distributions():
    policy = small_groot()
    latents, state = policy(random_batch(B=3, T=5, size=32))
    assert latents["pi_logits"]["buttons"].shape == (3, 5, 1, 8641)
    assert latents["pi_logits"]["camera"].shape == (3, 5, 1, 121)
    assert latents["vpred"].shape == (3, 5, 1)
    for key in ("posterior_dist", "prior_dist"):
        assert set(latents[key]) == {"mu", "log_var"}
        assert latents[key]["mu"].shape == latents[key]["log_var"].shape == (3, 16)
    assert latents["goal"].shape == (3, 16)
    assert len(state) == 3 and state[1].shape == (3, 8, 64)  # VPT's [mask, K, V] per decoder layer


@pytest.mark.parametrize("config", ["groot_tiny", "groot"])
def test_configs_build(config):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=[f"policy={config}"])
    policy = build_policy(cfg.policy)
    assert isinstance(policy, GrootPolicy)
    expected = SmallCNN if config == "groot_tiny" else ImpalaBackbone
    assert isinstance(policy.backbone, expected)
    if config == "groot_tiny":  # the big one is a GPU model: building it is enough here
        latents, _ = policy(random_batch(B=1, T=2, size=128))
        assert latents["posterior_dist"]["mu"].shape == (1, cfg.policy.latent_dim)


def test_kl_objective_equals_closed_form_and_gradients_reach_both_encoders():
    policy = small_groot()
    batch = random_batch(B=4, T=6, size=32)
    latents, _ = policy(batch)
    out = KLDivergenceCallback(weight=0.1)(batch, 0, "train", latents, policy)

    q, p = latents["posterior_dist"], latents["prior_dist"]
    # Independently: torch.distributions, and the textbook formula per dimension.
    reference = (
        kl_divergence(
            Normal(q["mu"].double(), (0.5 * q["log_var"].double()).exp()),
            Normal(p["mu"].double(), (0.5 * p["log_var"].double()).exp()),
        )
        .sum(-1)
        .mean()
    )
    qv, pv = q["log_var"].double().exp(), p["log_var"].double().exp()
    by_hand = 0.5 * (pv.log() - qv.log()) + (qv + (q["mu"].double() - p["mu"].double()) ** 2) / (2 * pv) - 0.5
    assert out["kl_div"].item() == pytest.approx(reference.item(), rel=1e-5)
    assert out["kl_div"].item() == pytest.approx(by_hand.sum(-1).mean().item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(0.1 * reference.item(), rel=1e-5)
    assert out["kl_div"].item() > 0

    out["loss"].backward()
    for module in (policy.video_encoder, policy.image_encoder):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum().item() for g in grads) > 0, type(module).__name__
    # The video encoder's temporal transformer itself learns from the KL (not just its output layer).
    assert policy.video_encoder.temporal.layers[0].self_attn.in_proj_weight.grad.abs().sum() > 0


def test_bc_gradients_reach_the_video_encoder_through_the_goal():
    policy = small_groot()
    batch = random_batch(B=2, T=4, size=32)
    latents, _ = policy(batch)
    BehaviorCloneCallback()(batch, 0, "train", latents, policy)["loss"].backward()
    assert policy.video_encoder.head.linear.weight.grad.abs().sum() > 0  # reparameterised sample
    assert policy.image_encoder.head.linear.weight.grad is None  # the prior is trained by the KL only


def test_training_samples_eval_takes_the_posterior_mean():
    policy = small_groot()
    batch = random_batch(B=2, T=4, size=32)
    policy.train()
    a, _ = policy(batch)
    b, _ = policy(batch)
    assert not torch.allclose(a["goal"], b["goal"])  # two reparameterised samples
    assert torch.allclose(a["posterior_dist"]["mu"], b["posterior_dist"]["mu"])
    policy.eval()
    c, _ = policy(batch)
    assert torch.allclose(c["goal"], c["posterior_dist"]["mu"])


def test_reference_video_from_the_batch_and_its_padding_mask():
    policy = small_groot().eval()
    batch = random_batch(B=2, T=4, size=32)
    other = random_batch(B=2, T=6, size=32, seed=1)["image"]
    own, _ = policy(batch)
    with_ref, _ = policy({**batch, "reference_image": other})
    assert not torch.allclose(own["goal"], with_ref["goal"])
    assert torch.allclose(with_ref["goal"], policy.encode_goal(other), atol=1e-6)
    # Padding frames of the reference are ignored: whatever they hold, the goal is the same.
    mask = torch.tensor([[1, 1, 1, 0, 0, 0]] * 2, dtype=torch.float32)
    noisy = other.clone()
    noisy[:, 3:] = 255 - noisy[:, 3:]
    g1 = policy.encode_goal(other, mask)
    g2 = policy.encode_goal(noisy, mask)
    assert torch.allclose(g1, g2, atol=1e-5)
    assert not torch.allclose(g1, policy.encode_goal(noisy), atol=1e-3)


def test_get_action_modes():
    policy = small_groot().eval()
    obs = random_batch(B=2, T=1, size=32)
    obs = {"image": obs["image"], "first": obs["first"]}
    reference = random_batch(B=2, T=6, size=32, seed=3)["image"]
    z = policy.encode_goal(reference)

    act_ref, state = policy.get_action(obs, None, {"reference_image": reference}, deterministic=True)
    act_goal, _ = policy.get_action(obs, None, {"goal": z}, deterministic=True)
    assert {k: v.shape for k, v in act_ref.items()} == {"buttons": (2, 1, 1), "camera": (2, 1, 1)}
    for k in act_ref:
        assert torch.equal(act_ref[k], act_goal[k])
    assert len(state) == 3

    # No reference: the prior mean of the first frame is the goal.
    prior = policy.prior_goal(obs["image"][:, 0])
    latents_prior, _ = policy({**obs, "goal": prior})
    act_none, _ = policy.get_action(obs, None, None, deterministic=True)
    expected = policy.pi_head.sample(latents_prior["pi_logits"], deterministic=True)
    for k in act_none:
        assert torch.equal(act_none[k], expected[k])

    # Sampled actions vary; with nucleus_prob -> 0 only the most likely action is left.
    torch.manual_seed(0)
    many = {"image": obs["image"].repeat(32, 1, 1, 1, 1)}
    sampled, _ = policy.get_action(many, None, {"goal": z.repeat(32, 1)})
    assert sampled["buttons"].unique().numel() > 1
    top, _ = policy.get_action(many, None, {"goal": z.repeat(32, 1)}, nucleus_prob=1e-6)
    greedy, _ = policy.get_action(many, None, {"goal": z.repeat(32, 1)}, deterministic=True)
    assert torch.equal(top["buttons"], greedy["buttons"]) and torch.equal(top["camera"], greedy["camera"])


def test_memory_carries_across_windows_and_resets_at_episode_start():
    policy = small_groot().eval()
    batch = random_batch(B=2, T=6, size=32)
    goal = policy.encode_goal(batch["image"])
    whole, _ = policy({"image": batch["image"], "first": batch["first"], "goal": goal})
    _, state = policy({"image": batch["image"][:, :3], "first": batch["first"][:, :3], "goal": goal})
    second, _ = policy({"image": batch["image"][:, 3:], "first": batch["first"][:, 3:], "goal": goal}, state)
    torch.testing.assert_close(second["pi_logits"]["camera"], whole["pi_logits"]["camera"][:, 3:], atol=1e-4, rtol=1e-4)
    # An episode start wipes the carried memory: same output as from the initial state.
    restart = batch["first"][:, 3:].clone()
    restart[:, 0] = True
    fresh, _ = policy({"image": batch["image"][:, 3:], "first": restart, "goal": goal})
    carried, _ = policy({"image": batch["image"][:, 3:], "first": restart, "goal": goal}, state)
    torch.testing.assert_close(carried["pi_logits"]["camera"], fresh["pi_logits"]["camera"])


def test_impala_backbone_starts_from_vpt_weights(tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=["policy=vpt_tiny"])
    vpt = build_policy(cfg.policy)
    torch.save(vpt.state_dict(), tmp_path / "vpt.weights")
    backbone = ImpalaBackbone(
        64, img_shape=(128, 128, 3), chans=(16, 32, 32), vpt_weights=str(tmp_path / "vpt.weights")
    )
    for name, value in backbone.cnn.state_dict().items():
        assert torch.equal(value, vpt.state_dict()[f"net.img_process.cnn.{name}"]), name
    policy = small_groot(backbone=backbone)
    latents, _ = policy(random_batch(B=1, T=2, size=128))
    assert latents["goal"].shape == (1, 16)
    with pytest.raises(ValueError, match="net.img_process.cnn"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "other.weights")
        ImpalaBackbone(64, vpt_weights=str(tmp_path / "other.weights"))
    with pytest.raises(ValueError, match="64x64"):
        backbone(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))


def test_bc_alone_is_valid_and_kl_warmup_runs_through_mine_lightning():
    policy = small_groot()
    module = MineLightning(policy, {"bc": BehaviorCloneCallback(), "kl_warmup": KLWarmupCallback(0.01, 10)})
    loss = module._objective_step(random_batch(B=2, T=4, size=32), 0, "train")
    assert torch.isfinite(loss)
    assert module.objectives["kl_warmup"].weight == 0.0  # step 0 of the warm-up
    bc_only = MineLightning(small_groot(), [BehaviorCloneCallback()])
    assert torch.isfinite(bc_only._objective_step(random_batch(B=2, T=4, size=32), 0, "train"))


# --------------------------------------------------------------------------- the goal conditions behaviour

GOAL_ACTIONS = {  # goal -> (env buttons pressed, camera [pitch, yaw] degrees)
    0: ({"attack"}, (0.0, -6.0)),  # "turn left and attack"
    1: ({"forward"}, (0.0, 6.0)),  # "turn right and walk"
}
CUE = {0: (230, 30, 30), 1: (30, 30, 230)}  # the goal is visible only at the end of the window: red or blue


def goal_agent_actions(goal: int) -> tuple[int, int]:
    from minesweep.actions import BUTTONS

    pressed, camera = GOAL_ACTIONS[goal]
    buttons = np.array([[1 if b in pressed else 0 for b in BUTTONS]])
    b, c = env_to_agent(buttons, np.array([camera]))
    return int(b[0]), int(c[0])


def goal_windows(goals: torch.Tensor, T: int, size: int, gen: torch.Generator, cue_frames: int = 2) -> dict:
    """Windows of noisy grey frames; the last ``cue_frames`` show the outcome, tinted red or blue by the goal, so
    earlier frames can only be acted on through the goal latent. Actions follow the goal throughout."""
    B = len(goals)
    image = torch.randint(60, 140, (B, T, size, size, 3), generator=gen, dtype=torch.uint8)
    for i, g in enumerate(goals.tolist()):
        tint = torch.tensor(CUE[g], dtype=torch.int16)
        image[i, T - cue_frames :] = ((image[i, T - cue_frames :].to(torch.int16) + tint) // 2).to(torch.uint8)
    actions = [goal_agent_actions(g) for g in goals.tolist()]
    first = torch.zeros(B, T, dtype=torch.bool)
    first[:, 0] = True
    return {
        "image": image,
        "agent_action": {
            "buttons": torch.tensor([a[0] for a in actions])[:, None, None].expand(B, T, 1).clone(),
            "camera": torch.tensor([a[1] for a in actions])[:, None, None].expand(B, T, 1).clone(),
        },
        "mask": torch.ones(B, T),
        "first": first,
    }


def camera_distribution(policy: GrootPolicy, obs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(B, T', 121) camera probabilities on ``obs`` with the goal of ``reference``."""
    first = torch.zeros(obs.shape[:2], dtype=torch.bool)
    first[:, 0] = True
    latents, _ = policy({"image": obs, "first": first, "reference_image": reference})
    return latents["pi_logits"]["camera"][:, :, 0].exp()


@pytest.mark.slow
def test_goal_conditions_behaviour_after_brief_training():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    T, size = 6, 32
    policy = small_groot()
    bc, kl = BehaviorCloneCallback(), KLDivergenceCallback(weight=0.01)
    optimizer = torch.optim.Adam(policy.parameters(), lr=2e-3)
    policy.train()
    for step in range(100):
        batch = goal_windows(torch.randint(0, 2, (8,), generator=gen), T, size, gen)
        latents, _ = policy(batch)
        loss = bc(batch, step, "train", latents, policy)["loss"] + kl(batch, step, "train", latents, policy)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    policy.eval()
    with torch.no_grad():
        n = 8
        ref_a = goal_windows(torch.zeros(n, dtype=torch.long), T, size, gen)["image"]
        ref_a2 = goal_windows(torch.zeros(n, dtype=torch.long), T, size, gen)["image"]
        ref_b = goal_windows(torch.ones(n, dtype=torch.long), T, size, gen)["image"]
        # The same observations for every goal: frames without any cue.
        obs = goal_windows(torch.zeros(n, dtype=torch.long), T, size, gen)["image"][:, : T - 2]
        p_a, p_a2, p_b = (camera_distribution(policy, obs, r) for r in (ref_a, ref_a2, ref_b))

    def total_variation(p: torch.Tensor, q: torch.Tensor) -> float:
        return 0.5 * (p - q).abs().sum(-1).mean().item()

    gap, same_goal = total_variation(p_a, p_b), total_variation(p_a, p_a2)
    assert gap > 0.5, f"action distributions barely differ between the two goals (TV {gap:.3f})"
    assert same_goal < gap / 4, f"two references of the same goal differ as much as two goals ({same_goal:.3f})"
    # And each goal's behaviour is the one it was shown: expected yaw bin left of centre for A, right for B.
    yaw_bins = torch.tensor(np.array(CAMERA_INDEX_TO_BINS[:, 1]), dtype=torch.float32)
    yaw_a, yaw_b = (p_a @ yaw_bins).mean().item(), (p_b @ yaw_bins).mean().item()
    assert yaw_a < 5 - 1 and yaw_b > 5 + 1, (yaw_a, yaw_b)
