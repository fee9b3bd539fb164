import torch

from minesweep.policies.tiny import TinyPolicy
from tests.helpers import random_batch


def test_forward_shapes_and_latents():
    policy = TinyPolicy(hidsize=32)
    batch = random_batch(B=2, T=5)
    latents, state = policy(batch, None)
    assert latents["pi_logits"]["buttons"].shape == (2, 5, 1, 8641)
    assert latents["pi_logits"]["camera"].shape == (2, 5, 1, 121)
    assert latents["vpred"].shape == (2, 5, 1)
    assert state[0].shape == (2, 32)
    # log-softmax: each distribution sums to one
    probs = latents["pi_logits"]["camera"].exp().sum(-1)
    torch.testing.assert_close(probs, torch.ones_like(probs))


def test_memory_is_carried_and_reset_by_first():
    torch.manual_seed(0)
    policy = TinyPolicy(hidsize=32).eval()
    batch = random_batch(B=2, T=8)
    whole, _ = policy(batch, None)

    first_half = {k: (v[:, :4] if k in ("image", "first") else v) for k, v in batch.items()}
    second_half = {k: (v[:, 4:] if k in ("image", "first") else v) for k, v in batch.items()}
    _, state = policy(first_half, None)
    carried, _ = policy(second_half, state)
    torch.testing.assert_close(carried["pi_logits"]["buttons"], whole["pi_logits"]["buttons"][:, 4:])

    fresh, _ = policy(second_half, None)
    assert not torch.allclose(fresh["pi_logits"]["buttons"], carried["pi_logits"]["buttons"])

    # an episode start in the second window wipes the carried state for that slot only
    second_half["first"] = second_half["first"].clone()
    second_half["first"][0, 0] = True
    reset, _ = policy(second_half, state)
    torch.testing.assert_close(reset["pi_logits"]["buttons"][0], fresh["pi_logits"]["buttons"][0])
    torch.testing.assert_close(reset["pi_logits"]["buttons"][1], carried["pi_logits"]["buttons"][1])


def test_head_logprob_entropy_sample_agree():
    torch.manual_seed(0)
    policy = TinyPolicy(hidsize=16)
    latents, _ = policy(random_batch(B=1, T=3), None)
    pi = latents["pi_logits"]
    mode = policy.pi_head.sample(pi, deterministic=True)
    assert mode["buttons"].shape == (1, 3, 1)
    lp = policy.pi_head.logprob(mode, pi, return_dict=True)
    torch.testing.assert_close(lp["camera"], pi["camera"].max(-1).values.squeeze(-1))
    total = policy.pi_head.logprob(mode, pi)
    torch.testing.assert_close(total, lp["camera"] + lp["buttons"])
    ent = policy.pi_head.entropy(pi, return_dict=True)
    expected = -(pi["buttons"].exp() * pi["buttons"]).sum(-1).squeeze(-1)
    torch.testing.assert_close(ent["buttons"], expected)
    # sampling follows the distribution: a near-deterministic camera logit is always picked
    peaked = {"buttons": pi["buttons"], "camera": torch.full((1, 3, 1, 121), -1e4)}
    peaked["camera"][..., 7] = 0.0
    assert (policy.pi_head.sample(peaked)["camera"] == 7).all()


def test_bottleneck_gives_the_kl_latents_samples_in_training_and_acts_on_the_mean():
    torch.manual_seed(0)
    policy = TinyPolicy(hidsize=32, bottleneck=True, latent_dim=8)
    batch = random_batch(B=2, T=5)
    latents, _ = policy(batch, None)
    q, p = latents["posterior_dist"], latents["prior_dist"]
    assert q["mu"].shape == q["log_var"].shape == (2, 5, 8)
    assert torch.equal(p["mu"], torch.zeros_like(q["mu"])) and torch.equal(p["log_var"], torch.zeros_like(q["mu"]))
    again, _ = policy(batch, None)  # training mode: a fresh sample each call
    assert not torch.equal(again["pi_logits"]["buttons"], latents["pi_logits"]["buttons"])
    policy.eval()  # eval mode: the posterior mean, deterministic
    a, _ = policy(batch, None)
    b, _ = policy(batch, None)
    torch.testing.assert_close(a["pi_logits"]["buttons"], b["pi_logits"]["buttons"])


def test_without_bottleneck_there_are_no_kl_latents_and_old_state_dicts_load():
    plain = TinyPolicy(hidsize=32)
    latents, _ = plain(random_batch(B=1, T=2), None)
    assert "posterior_dist" not in latents
    TinyPolicy(hidsize=32, bottleneck=False).load_state_dict(plain.state_dict())  # strict: same keys as before


def test_sampling_with_one_generator_per_row_ignores_the_other_rows():
    """get_action(generator=[g0, g1, ...]): row i's sample depends only on its own generator (batched evaluation)."""
    import pytest

    torch.manual_seed(0)
    policy = TinyPolicy(hidsize=16).eval()
    batch = random_batch(B=3, T=1)
    obs = {"image": batch["image"], "first": batch["first"]}
    latents, _ = policy(obs, None)

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    together, _ = policy.get_action(obs, None, generator=gens(1, 2, 3))
    alone, _ = policy.get_action({k: v[1:2] for k, v in obs.items()}, None, generator=gens(2))
    assert together["buttons"][1].item() == alone["buttons"][0].item()
    assert together["camera"][1].item() == alone["camera"][0].item()
    again, _ = policy.get_action(obs, None, generator=gens(1, 2, 3))
    assert all(torch.equal(together[k], again[k]) for k in together)  # the generators, not the global RNG
    one = policy.pi_head.sample(latents["pi_logits"], generator=torch.Generator().manual_seed(4))
    assert one["buttons"].shape == (3, 1, 1)
    with pytest.raises(ValueError, match="2 generators for a batch of 3"):
        policy.get_action(obs, None, generator=gens(1, 2))
