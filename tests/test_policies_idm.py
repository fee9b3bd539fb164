"""IDMPolicy: the reference's numbers, its state-dict layout, a window that sees the future, reference kwargs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from minesweep.policies.heads import FactoredActionHead
from minesweep.policies.idm import IDMPolicy
from minesweep.policies.vpt import VPTPolicy
from minesweep.policies.weights import load_policy_weights
from minesweep.train import build_policy
from tests.conftest import CONF_DIR

#: Golden data from openai/Video-Pre-Training's InverseActionPolicy (commit 095519f), built with a small version of
#: the released IDM's kwargs, every parameter perturbed from its init, run on a (2, 12, 16, 16, 3) window on CPU
#: in float32: ``kwargs``, ``state_dict`` (reference names), ``image`` and the action head's ``log_probs``.
REFERENCE = Path(__file__).parent / "fixtures" / "idm_reference.pt"

SMALL = dict(
    hidsize=32,
    attention_heads=2,
    n_recurrence_layers=2,
    attention_memory_size=8,
    timesteps=8,
    conv3d_params={"inchan": 3, "outchan": 4, "kernel_size": [5, 1, 1], "padding": [2, 0, 0]},
    impala_chans=[4, 8, 8],
    img_shape=[16, 16, 4],
)


def small_idm(**overrides) -> IDMPolicy:
    torch.manual_seed(0)
    return IDMPolicy(**{**SMALL, **overrides})


def frames(B: int = 2, T: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (B, T, 16, 16, 3), generator=g, dtype=torch.uint8)


def test_matches_the_reference_inverse_action_policy():
    golden = torch.load(REFERENCE, weights_only=True)
    policy = IDMPolicy(**golden["kwargs"], temperature=1.0)
    load_policy_weights(policy, golden["state_dict"])  # strict: every reference name, nothing else
    latents, state = policy({"image": golden["image"]})
    assert state is None
    for name in ("buttons", "camera"):
        torch.testing.assert_close(latents["pi_logits"][name], golden["log_probs"][name], atol=1e-4, rtol=1e-4)


def test_the_released_idm_architecture_has_its_parameter_shapes():
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=["policy=vpt_idm_4x"])
    kwargs = OmegaConf.to_container(cfg.policy)
    kwargs.pop("weights")
    kwargs.pop("_target_")
    with torch.device("meta"):
        policy = IDMPolicy(**kwargs)
    shapes = {k: tuple(v.shape) for k, v in policy.state_dict().items()}
    # (reference, counted from InverseActionPolicy built with 4x_idm's kwargs): 100 tensors, ~482M parameters
    assert len(shapes) == 100
    assert 480e6 < sum(p.numel() for p in policy.state_dict().values()) < 485e6
    assert shapes["net.conv3d_layer.layer.weight"] == (128, 3, 5, 1, 1)
    assert shapes["net.img_process.cnn.stacks.0.firstconv.norm.weight"] == (128,)  # first conv normalised
    assert "net.img_process.cnn.stacks.0.firstconv.layer.bias" not in shapes
    assert shapes["net.img_process.cnn.dense.layer.weight"] == (256, 512 * 16 * 16)
    assert shapes["net.recurrent_layer.blocks.1.r.orc_block.b_nd"] == (10, 0)  # no memory, no relative band
    assert shapes["net.recurrent_layer.blocks.0.mlp0.layer.weight"] == (4 * 4096, 4096)
    assert shapes["net.lastlayer.layer.weight"] == (4096, 4096)
    assert shapes["pi_head.buttons.linear_layer.weight"] == (40, 4096)  # 20 buttons x 2
    assert shapes["pi_head.camera.linear_layer.weight"] == (22, 4096)  # 2 axes x 11 bins
    assert not any(k.startswith("value_head") for k in shapes)


def test_a_prediction_depends_on_the_next_frame_and_a_causal_policys_does_not():
    idm = small_idm().eval()
    vpt = VPTPolicy(**{**SMALL, "attention_memory_size": 16, "img_shape": [16, 16, 3], "conv3d_params": None}).eval()
    image = frames()
    changed = image.clone()
    changed[:, 5] = 255 - changed[:, 5]  # frame 5 changes: the action at 4 shows in it
    with torch.no_grad():
        idm_before, idm_after = idm({"image": image})[0], idm({"image": changed})[0]
        vpt_before, vpt_after = vpt({"image": image})[0], vpt({"image": changed})[0]
    for name in ("buttons", "camera"):
        assert not torch.allclose(idm_before["pi_logits"][name][:, 4], idm_after["pi_logits"][name][:, 4])
        torch.testing.assert_close(vpt_before["pi_logits"][name][:, :5], vpt_after["pi_logits"][name][:, :5])
        assert not torch.allclose(vpt_before["pi_logits"][name][:, 5], vpt_after["pi_logits"][name][:, 5])


def test_padding_frames_are_not_attended_to():
    idm = small_idm().eval()
    image = frames()
    mask = torch.ones(2, 8)
    mask[:, 4:] = 0  # the episode ended after frame 3
    other = image.clone()
    other[:, 7] = 255 - other[:, 7]  # frame 7 is padding: only the 3D conv (frames t-2..t+2) may see it
    with torch.no_grad():
        a = idm({"image": image, "mask": mask})[0]["pi_logits"]["buttons"]
        b = idm({"image": other, "mask": mask})[0]["pi_logits"]["buttons"]
        c = idm({"image": other})[0]["pi_logits"]["buttons"]
    # frames 0..3 neither attend to frames 4..7 nor convolve frame 7 (frame 3's 3D conv sees frames 1..5)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(b[:, :4], c[:, :4])  # unmasked, every frame attends to frame 7's neighbours


def test_lastlayer_is_in_the_state_dict_but_not_in_the_output():
    idm = small_idm().eval()
    assert not any(p.requires_grad for p in idm.net.lastlayer.parameters())
    image = frames()
    with torch.no_grad():
        before = idm({"image": image})[0]["pi_logits"]["buttons"]
        idm.net.lastlayer.layer.weight.mul_(3.0)
        after = idm({"image": image})[0]["pi_logits"]["buttons"]
        idm.net.use_lastlayer = True  # the VPT policy's path: the output moves
        moved = idm({"image": image})[0]["pi_logits"]["buttons"]
    torch.testing.assert_close(before, after)
    assert not torch.allclose(before, moved)


def test_actions_are_factored_and_turn_into_env_actions():
    idm = small_idm()
    assert isinstance(idm.pi_head, FactoredActionHead)
    action, state = idm.get_action({"image": frames(B=1, T=8)}, deterministic=True)
    assert state is None
    assert action["buttons"].shape == (1, 8, 20) and action["camera"].shape == (1, 8, 2)
    buttons, camera = IDMPolicy.to_env({"buttons": torch.tensor([[1] + [0] * 19]), "camera": torch.tensor([[5, 10]])})
    assert buttons.dtype.name == "uint8" and buttons[0, 0] == 1 and buttons[0, 1:].sum() == 0
    assert camera[0, 0] == 0.0 and camera[0, 1] == pytest.approx(10.0)


def test_weights_saved_by_us_load_strictly_and_a_wrong_name_is_refused(tmp_path):
    idm = small_idm()
    torch.save(idm.state_dict(), tmp_path / "idm.weights")
    fresh = IDMPolicy(**SMALL)
    load_policy_weights(fresh, tmp_path / "idm.weights")
    image = frames()
    with torch.no_grad():
        torch.testing.assert_close(fresh({"image": image})[0]["pi_logits"], idm({"image": image})[0]["pi_logits"])
    broken = dict(idm.state_dict())
    broken["net.conv3d_layer.weight"] = broken.pop("net.conv3d_layer.layer.weight")
    with pytest.raises(ValueError, match="conv3d_layer"):
        load_policy_weights(IDMPolicy(**SMALL), broken)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"attention_memory_size": 12}, "attention_memory_size == timesteps"),
        (
            {"conv3d_params": {"inchan": 3, "outchan": 4, "kernel_size": [5, 1, 1], "padding": [2, 0, 0], "stride": 2}},
            "stride",
        ),
        ({"img_shape": [16, 16, 3]}, r"img_shape must be \(H, W, 4\)"),
        ({"first_conv_norm": True}, "first_conv_norm"),
        ({"attention_mask_style": "causal"}, "attention_mask_style"),
        ({"attention_mask_style": "clipped_causal", "attention_memory_size": 16}, "needs attention_mask_style='none'"),
    ],
)
def test_reference_kwargs_it_cannot_honour_are_refused_by_name(overrides, message):
    with pytest.raises((ValueError, TypeError), match=message):
        IDMPolicy(**{**SMALL, **overrides})


def test_the_configs_build_through_the_allow_list():
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=["policy=idm_tiny", "objective=[idm]"])
    policy = build_policy(cfg.policy)
    assert isinstance(policy, IDMPolicy) and policy.img_shape == (64, 64, 16)
    assert cfg.objective.idm.future_frames == 1
