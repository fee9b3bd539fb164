from pathlib import Path

import pytest
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


def _conf_policy(**overrides):
    """TinyPolicy as conf/policy/tiny.yaml builds it (the default policy)."""
    from omegaconf import OmegaConf

    from minesweep.policies.build import build_policy

    cfg = OmegaConf.load(Path(__file__).parents[1] / "conf" / "policy" / "tiny.yaml")
    return build_policy(OmegaConf.merge(cfg, overrides))


def test_the_default_encoder_embeds_each_crafter_tile_once():
    """A 64x64 Crafter frame is 9x9 tiles of 7x7 pixels (crafter.Env.render: unit = 64 // 9, no border). The default
    encoder's first convolution must see exactly one tile per output cell: changing one tile's pixels changes one
    cell of its output and nothing else, for every tile."""
    policy = _conf_policy()
    first = policy.encoder.convs[0]
    frame = torch.randint(0, 256, (1, 3, 64, 64)).float()
    with torch.no_grad():
        base = first(frame)
        assert base.shape[-2:] == (9, 9)
        for ty in range(9):
            for tx in range(9):
                changed = frame.clone()
                tile = (..., slice(7 * ty, 7 * ty + 7), slice(7 * tx, 7 * tx + 7))
                changed[tile] = 255 - changed[tile]
                moved = (first(changed) - base).abs().sum(1)[0] > 0
                assert moved.nonzero().tolist() == [[ty, tx]]
        # The last row and column of pixels belong to no tile: nothing reads them.
        edge = frame.clone()
        edge[..., 63, :] = 0
        edge[..., :, 63] = 0
        torch.testing.assert_close(first(edge), base)


def test_the_default_encoder_keeps_where_things_are():
    """The projection reads the whole 9x9 map (pooled to 9x9, unchanged): two neighbouring tiles swapped give
    different features (a coarser pooling averages them into one cell and cannot tell)."""
    policy = _conf_policy().eval()
    tiles = torch.randint(0, 256, (9, 9, 7, 7, 3), dtype=torch.uint8)
    frame = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    frame[0, :63, :63] = tiles.permute(0, 2, 1, 3, 4).reshape(63, 63, 3)
    swapped = tiles.clone()
    swapped[0, 0], swapped[0, 1] = tiles[0, 1], tiles[0, 0]  # two neighbours in the top-left corner
    other = frame.clone()
    other[0, :63, :63] = swapped.permute(0, 2, 1, 3, 4).reshape(63, 63, 3)
    with torch.no_grad():
        assert not torch.allclose(policy.encoder(frame), policy.encoder(other))


def test_the_default_encoder_takes_other_frame_sizes():
    """A 128x128 Crafter frame (14-pixel tiles) gives a 18x18 map, pooled to the same 9x9 tiles."""
    policy = _conf_policy()
    for size in [(64, 64), (128, 128), (180, 320)]:
        assert policy.encoder(torch.zeros(2, *size, 3, dtype=torch.uint8)).shape == (2, 128)


def test_the_fused_recurrence_equals_stepping_the_cell_frame_by_frame():
    """Against the plain loop (wipe where `first`, then one GRUCell step per frame), for random episode starts:
    outputs, final state and gradients equal to float rounding."""
    torch.manual_seed(0)
    policy = TinyPolicy(hidsize=16)
    for trial in range(20):
        B, T = int(torch.randint(1, 5, ())), int(torch.randint(1, 12, ()))
        features = torch.randn(B, T, 16, requires_grad=True)
        hidden = torch.randn(B, 16)
        first = torch.rand(B, T) < (0.0 if trial == 0 else 0.15)

        h, expected = hidden, []
        for t in range(T):
            h = h * (~first[:, t]).unsqueeze(-1).float()
            h = policy.memory(features[:, t], h)
            expected.append(h)
        expected = torch.stack(expected, dim=1)
        outputs, last = policy._recur(features, hidden, first)
        torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(last, h, rtol=1e-5, atol=1e-6)
        params = [features, *policy.memory.parameters()]
        weights = torch.randn_like(expected)
        for got, want in zip(
            torch.autograd.grad((outputs * weights).sum(), params),
            torch.autograd.grad((expected * weights).sum(), params),
            strict=True,
        ):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
