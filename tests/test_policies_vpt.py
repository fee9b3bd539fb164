"""VPTPolicy against the reference fixtures (shared/fixtures/vpt/vpt_policy, see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import execution_whitelist
from omegaconf import OmegaConf

from minesweep.policies.memory import clipped_causal_mask
from minesweep.policies.vpt import VPTPolicy, load_vpt_weights
from minesweep.train import ALLOWED_TARGETS, build_policy
from tests.conftest import CONF_DIR

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "vpt" / "vpt_policy"
TOL = dict(atol=1e-4, rtol=1e-4)  # the fixture README's suggestion for float32

needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"VPT reference fixtures not found at {FIXTURES} (the ../shared folder)"
)


# A very small VPT for the tests that need no reference weights.
SMALL = dict(
    hidsize=32,
    attention_heads=2,
    n_recurrence_layers=2,
    attention_memory_size=12,
    timesteps=4,  # a memory of 8 frames
    impala_chans=[4, 8, 8],
    img_shape=[32, 32, 3],
)


def small_policy(**overrides) -> VPTPolicy:
    return VPTPolicy(**{**SMALL, **overrides})


def random_images(B: int, T: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, T, size, size, 3), generator=g, dtype=torch.uint8)


def assert_state_equal(state: list[torch.Tensor], ref_state: list[dict]) -> None:
    for i, layer in enumerate(ref_state):
        mask, K, V = state[3 * i : 3 * i + 3]
        assert torch.equal(mask, layer["mask"]), f"layer {i} memory mask"
        torch.testing.assert_close(K, layer["K"], **TOL)
        torch.testing.assert_close(V, layer["V"], **TOL)


# --------------------------------------------------------------------------- reference model and run


@pytest.fixture(scope="module")
def cfg() -> dict:
    if not FIXTURES.is_dir():
        pytest.skip(f"VPT reference fixtures not found at {FIXTURES} (the ../shared folder)")
    return json.loads((FIXTURES / "config.json").read_text())


@pytest.fixture(scope="module")
def ref(cfg) -> dict:
    return torch.load(FIXTURES / "reference_run.pt", weights_only=True)


@pytest.fixture(scope="module")
def policy(cfg) -> VPTPolicy:
    torch.manual_seed(0)
    model = VPTPolicy.from_reference(
        FIXTURES / "state_dict.pt", policy_kwargs=cfg["policy_kwargs"], pi_head_kwargs=cfg["pi_head_kwargs"]
    )
    return model.eval()


@pytest.fixture(scope="module")
def chunks(policy, ref) -> list[tuple[dict, list[torch.Tensor], list[torch.Tensor]]]:
    """The three reference chunks run with the state carried: (latents, state_in, state_out)."""
    out, state = [], None
    with torch.no_grad():
        for c in range(len(ref["outputs"])):
            state_in = policy.initial_state(2) if state is None else state
            batch = {"image": ref["inputs"]["img"][c], "first": ref["inputs"]["first"][c]}
            latents, state = policy(batch, state_in)
            out.append((latents, state_in, state))
    return out


def run(policy: VPTPolicy, image: torch.Tensor, first: torch.Tensor, state=None):
    with torch.no_grad():
        return policy({"image": image, "first": first}, state)


# --------------------------------------------------------------------------- (a) chunked run


@needs_fixtures
def test_chunks_match_reference(policy, ref, chunks):
    maxlen, heads = policy.maxlen, ref["outputs"][0]["attn_mask_layer0"].shape[0] // 2
    for c, (latents, state_in, state_out) in enumerate(chunks):
        expected, actions = ref["outputs"][c], ref["actions"][c]
        pi = latents["pi_logits"]
        torch.testing.assert_close(pi["buttons"], expected["pi_logits_buttons"], **TOL)
        torch.testing.assert_close(pi["camera"], expected["pi_logits_camera"], **TOL)
        torch.testing.assert_close(latents["vpred"], expected["vpred_normalized"], **TOL)
        value = policy.denormalize_value(latents["vpred"])
        torch.testing.assert_close(value, expected["vpred_denormalized"], **TOL)
        torch.testing.assert_close(latents["pi_h"], expected["activations"]["final_ln_out"], **TOL)
        assert_state_equal(state_out, expected["state_out"])

        taken = {"buttons": actions["buttons"], "camera": actions["camera"]}
        logprob = policy.pi_head.logprob(taken, pi, return_dict=True)
        entropy = policy.pi_head.entropy(pi, return_dict=True)
        for name in ("buttons", "camera"):
            torch.testing.assert_close(logprob[name], actions[f"logprob_{name}"], **TOL)
            torch.testing.assert_close(entropy[name], actions[f"entropy_{name}"], **TOL)
        torch.testing.assert_close(sum(logprob.values()), actions["logprob"], **TOL)
        torch.testing.assert_close(sum(entropy.values()), actions["entropy"], **TOL)
        mode = policy.pi_head.sample(pi, deterministic=True)
        assert torch.equal(mode["buttons"], actions["mode_buttons"])
        assert torch.equal(mode["camera"], actions["mode_camera"])

        # the attention mask layer 0 used, repeated per head like the reference's (B*heads, T, maxlen+T)
        first = ref["inputs"]["first"][c]
        mask, _ = clipped_causal_mask(first, state_in[0], first.shape[1], maxlen)
        assert torch.equal(mask.repeat_interleave(heads, dim=0), expected["attn_mask_layer0"])


# --------------------------------------------------------------------------- (b) one frame at a time


@needs_fixtures
def test_stepwise_matches_reference(policy, ref):
    step = ref["stepwise"]
    img, first, actions = ref["inputs"]["img"][0], ref["inputs"]["first"][0], ref["actions"][0]
    state, logits, log_prob, values = None, {"buttons": [], "camera": []}, [], []
    for t in range(step["n_steps"]):
        latents, state = run(policy, img[:, t : t + 1], first[:, t : t + 1], state)
        for name in logits:
            logits[name].append(latents["pi_logits"][name])
        taken = {name: actions[name][:, t : t + 1] for name in ("buttons", "camera")}
        log_prob.append(policy.pi_head.logprob(taken, latents["pi_logits"]))
        values.append(policy.denormalize_value(latents["vpred"]))
    torch.testing.assert_close(torch.cat(logits["buttons"], 1), step["pi_logits_buttons"], **TOL)
    torch.testing.assert_close(torch.cat(logits["camera"], 1), step["pi_logits_camera"], **TOL)
    torch.testing.assert_close(torch.cat(log_prob, 1), step["log_prob"], **TOL)
    torch.testing.assert_close(torch.cat(values, 1), step["vpred_denormalized"], **TOL)
    assert_state_equal(state, step["state_out"])


# --------------------------------------------------------------------------- (c) released sizes


@needs_fixtures
@pytest.mark.parametrize("size", ["1x", "2x", "3x"])
def test_foundation_configs_have_the_released_state_dict(size):
    released = json.loads((FIXTURES / "foundation_keys.json").read_text())["models"][size]
    with initialize_config_dir(config_dir=str(CONF_DIR)):  # composed: vpt_2x/3x take the rest from vpt_1x
        conf = compose("train", overrides=[f"policy=vpt_{size}"]).policy
    assert conf.temperature == released["pi_head_kwargs_assumed"]["temperature"]
    for key, value in released["policy_kwargs"].items():
        assert OmegaConf.to_object(conf)[key] == value, key
    with torch.device("meta"), execution_whitelist(ALLOWED_TARGETS, reset=True):
        model = build_policy(conf)  # on the meta device: shapes only, nothing is allocated
    shapes = {k: (list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}
    assert shapes == {name: (shape, dtype) for name, shape, dtype in released["state_dict"]}
    assert sum(v.numel() for v in model.state_dict().values()) == released["n_elements_total"]
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == released["n_trainable_params"]


@needs_fixtures
def test_tiny_config_is_the_fixture_architecture(cfg):
    with execution_whitelist(ALLOWED_TARGETS, reset=True):
        model = build_policy(OmegaConf.load(CONF_DIR / "policy" / "vpt_tiny.yaml"))
    assert model.name == "vpt_tiny" and model.is_stateful
    load_vpt_weights(model, FIXTURES / "state_dict.pt")  # strict: same names and shapes


# --------------------------------------------------------------------------- (d) strict loading


def test_strict_loading_names_the_offending_keys():
    model = small_policy()
    good = model.state_dict()
    bad = dict(good)
    del bad["net.final_ln.bias"]
    bad["net.extra.weight"] = torch.zeros(3)
    bad["net.recurrent_layer.blocks.1.r.orc_block.b_nd"] = torch.zeros(10, 99)
    with pytest.raises(ValueError) as error:
        load_vpt_weights(small_policy(), bad)
    message = str(error.value)
    assert "missing keys: net.final_ln.bias" in message
    assert "unexpected keys: net.extra.weight" in message
    assert "net.recurrent_layer.blocks.1.r.orc_block.b_nd: checkpoint (10, 99) vs model (10, 8)" in message

    clone = VPTPolicy.from_reference({k: v.clone() for k, v in good.items()}, **SMALL)
    for k, v in clone.state_dict().items():
        assert torch.equal(v, good[k]), k


def test_unsupported_reference_kwargs_are_clear_errors():
    with pytest.raises(ValueError, match="recurrence_type"):
        small_policy(recurrence_type="multi_layer_lstm")
    with pytest.raises(ValueError, match="batch_norm"):
        small_policy(init_norm_kwargs={"batch_norm": True, "group_norm_groups": 1})
    with pytest.raises(TypeError, match="hidsise"):
        small_policy(hidsise=64)
    small_policy(single_output=True, active_reward_monitors=None)  # reference kwargs with no effect here
    # the released IDM's network kwargs: the reference swallows both (its final ReLU is unconditional)
    small_policy(final_relu=True, dense_init_norm_kwargs={"layer_norm": True})


def test_recurrence_is_residual_false_drops_the_mlp_residual_as_the_reference_does():
    """reference ResidualRecurrentBlock with is_residual=False: x = mlp1(mlp0(attention)), no '+ residual'."""
    torch.manual_seed(0)
    residual, plain = small_policy().eval(), small_policy(recurrence_is_residual=False).eval()
    plain.load_state_dict(residual.state_dict())  # same weights: only the forward differs
    images, first = random_images(2, 5, 32), torch.zeros(2, 5, dtype=torch.bool)
    block = plain.net.recurrent_layer.blocks[0]
    seen = {}
    block.r.register_forward_hook(lambda module, args, out: seen.update(attention=out[0]))  # update: None
    block.register_forward_hook(lambda module, args, out: seen.update(block=out[0]))
    latents_plain, _ = run(plain, images, first)
    mlp = block.mlp1(block.mlp0(seen["attention"]))
    torch.testing.assert_close(seen["block"], mlp)  # no residual around the MLP
    latents_residual, _ = run(residual, images, first)
    moved = (latents_plain["pi_logits"]["buttons"] - latents_residual["pi_logits"]["buttons"]).abs().max()
    assert moved > 1e-3, "the flag changes the network"


# --------------------------------------------------------------------------- (e) any chunk length


@pytest.mark.parametrize("T", [1, 3, 8, 13])  # timesteps is 4, the memory 8 frames
@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.0])
def test_any_chunk_length_and_temperature(T, temperature):
    torch.manual_seed(0)
    model = small_policy(temperature=temperature).eval()
    latents, state = run(model, random_images(2, T, 32), torch.zeros(2, T, dtype=torch.bool))
    assert latents["pi_logits"]["buttons"].shape == (2, T, 1, 8641)
    assert latents["pi_logits"]["camera"].shape == (2, T, 1, 121)
    assert latents["vpred"].shape == (2, T, 1)
    assert latents["pi_h"].shape == (2, T, 32)
    assert [tuple(x.shape) for x in state] == [(2, 1, 8), (2, 8, 32), (2, 8, 32)] * 2
    probs = latents["pi_logits"]["camera"].exp().sum(-1)
    torch.testing.assert_close(probs, torch.ones_like(probs))

    # temperature only rescales the logits: log_softmax(logp(T=1) / T) == logp(T)
    model.pi_head.buttons.temperature = model.pi_head.camera.temperature = 1.0
    plain, _ = run(model, random_images(2, T, 32), torch.zeros(2, T, dtype=torch.bool))
    rescaled = torch.log_softmax(plain["pi_logits"]["camera"] / temperature, -1)
    torch.testing.assert_close(rescaled, latents["pi_logits"]["camera"], **TOL)


def test_split_chunks_equal_one_chunk_and_train():
    torch.manual_seed(0)
    model = small_policy()
    images, first = random_images(2, 11, 32), torch.zeros(2, 11, dtype=torch.bool)
    first[:, 0] = True
    whole, whole_state = run(model, images, first)
    parts, state = [], None
    for a, b in [(0, 1), (1, 4), (4, 11)]:
        latents, state = run(model, images[:, a:b], first[:, a:b], state)
        parts.append(latents["pi_logits"]["buttons"])
    torch.testing.assert_close(torch.cat(parts, 1), whole["pi_logits"]["buttons"], **TOL)
    for x, y in zip(state, whole_state, strict=False):
        torch.testing.assert_close(x, y, **TOL)

    # trainable through a carried state; the value normaliser's statistics are not parameters
    latents, state = model({"image": images[:, :5], "first": first[:, :5]})
    latents, _ = model({"image": images[:, 5:], "first": first[:, 5:]}, state)
    pi = latents["pi_logits"]
    (pi["buttons"][..., 0].mean() + pi["camera"][..., 0].mean() + latents["vpred"].mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert "value_head.normalizer.running_mean" not in dict(model.named_parameters())


@needs_fixtures
def test_long_chunk_beyond_memory_matches_reference(policy, ref):
    """T=48 > memory (32): for the frames whose episode starts fall on this chunk's start,
    one long chunk equals the reference's three chunks."""
    images = ref["inputs"]["img"].permute(1, 0, 2, 3, 4, 5).reshape(2, 48, 128, 128, 3)
    first = ref["inputs"]["first"].permute(1, 0, 2).reshape(2, 48)
    latents, _ = run(policy, images, first)
    expected = torch.cat([o["pi_logits_buttons"] for o in ref["outputs"]], 1)
    torch.testing.assert_close(latents["pi_logits"]["buttons"][0], expected[0], **TOL)
    # the episode start at (chunk 2, b=1, t=0) is mid-chunk here, hence ignored: compare before it
    torch.testing.assert_close(latents["pi_logits"]["buttons"][1, :32], expected[1, :32], **TOL)


# --------------------------------------------------------------------------- (f) `first` semantics


@needs_fixtures
def test_first_flags_follow_the_reference(policy, ref, chunks):
    img, first = ref["inputs"]["img"], ref["inputs"]["first"]
    assert first[1, 0, 7] and first[2, 1, 0]

    # a mid-chunk episode start (chunk 1, b=0, t=7) is ignored
    no_mid = first[1].clone()
    no_mid[0, 7] = False
    latents, state = run(policy, img[1], no_mid, chunks[1][1])
    assert torch.equal(latents["pi_logits"]["buttons"], chunks[1][0]["pi_logits"]["buttons"])
    assert all(torch.equal(x, y) for x, y in zip(state, chunks[1][2], strict=False))

    # an episode start at a chunk start (chunk 2, b=1) hides the memory of that slot only ...
    no_start = first[2].clone()
    no_start[1, 0] = False
    latents, state = run(policy, img[2], no_start, chunks[2][1])
    carried, masked = latents["pi_logits"]["buttons"], chunks[2][0]["pi_logits"]["buttons"]
    assert torch.equal(carried[0], masked[0])
    assert (carried[1] - masked[1]).abs().max() > 1e-2
    # ... through the mask: the cached K/V are kept, only marked invalid
    mask_out = chunks[2][2][0]
    assert not mask_out[1, 0, :16].any() and mask_out[1, 0, 16:].all() and mask_out[0].all()
    assert torch.equal(chunks[2][2][1][1, :16], chunks[2][1][1][1, 16:])

    # at the very first chunk the memory is empty anyway, so a start flag changes nothing
    no_first = first[0].clone()
    no_first[:, 0] = False
    latents, _ = run(policy, img[0], no_first)
    assert torch.equal(latents["pi_logits"]["buttons"], chunks[0][0]["pi_logits"]["buttons"])
    # and a missing 'first' means no episode starts
    with torch.no_grad():
        latents, _ = policy({"image": img[0]})
    assert torch.equal(latents["pi_logits"]["buttons"], chunks[0][0]["pi_logits"]["buttons"])


def test_the_relu_after_the_max_pool_gives_the_reference_order_s_numbers_and_gradients_bit_for_bit():
    """The down-stack applies its first conv's ReLU after the max-pool (cheaper); the reference pools the ReLU's
    output. Both orders must agree exactly, forward and backward, ties and all-negative windows included."""
    import copy

    from torch.nn import functional as F

    from minesweep.policies.vpt import ImpalaDownStack

    torch.manual_seed(0)
    stack = ImpalaDownStack(3, 16, norm="group", groups=1, post_pool_groups=1, init_scale=1.0, first_conv_norm=False)
    reference = copy.deepcopy(stack)

    def reference_forward(x):
        conv = reference.firstconv
        x = F.max_pool2d(F.relu(conv.layer(x)), 3, 2, 1)
        x = reference.n(x)
        for block in reference.blocks:
            x = block(x)
        return x

    x = torch.randn(4, 3, 33, 32)
    x[0, :, :8, :8] = -5.0  # windows of equal, all-negative values: ties, and ReLU's zero everywhere
    x[1, :, :8, :8] = 2.0  # ties of equal positive values
    x = x.to(memory_format=torch.channels_last)  # as ImpalaCNN hands the first stack its frames
    ours, theirs = stack(x), reference_forward(x)
    assert torch.equal(ours, theirs)
    grad = torch.randn_like(ours)
    ours.backward(grad)
    theirs.backward(grad)
    for (name, p), q in zip(stack.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("first_conv_norm", [False, True])
def test_the_image_encoder_trains_with_a_norm_before_its_first_conv(first_conv_norm):
    """torch 2.13's CPU GroupNorm backward crashed the process (segfault) on the channels-last frames, which need no
    gradient, when ``first_conv_norm`` put a GroupNorm before the first convolution."""
    from minesweep.objectives.bc import BehaviorCloneCallback
    from tests.helpers import random_batch

    policy = VPTPolicy(
        hidsize=64,
        attention_heads=2,
        n_recurrence_layers=1,
        attention_memory_size=8,
        timesteps=4,
        impala_chans=[8, 8, 8],
        img_shape=[32, 32, 3],
        impala_kwargs={"post_pool_groups": 1},
        init_norm_kwargs={"batch_norm": False, "group_norm_groups": 1},
        first_conv_norm=first_conv_norm,
    )
    batch = random_batch(1, 4, size=32)
    latents, _ = policy(batch, policy.initial_state(1))
    BehaviorCloneCallback()(batch, 0, "train", latents, policy)["loss"].backward()
    first = policy.net.img_process.cnn.stacks[0].firstconv
    assert (first.norm is not None) == first_conv_norm
    assert first.layer.weight.grad.abs().sum() > 0
