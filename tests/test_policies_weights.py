"""Loading weights: reference state dicts, released .model kwargs files, our own checkpoints."""

import json
import os
import pickle

import pytest
import torch
from omegaconf import OmegaConf

from minesweep.policies.tiny import TinyPolicy
from minesweep.policies.vpt import VPTPolicy, read_model_file
from minesweep.policies.weights import load_policy_weights, read_policy_state_dict
from minesweep.train import build_policy


def test_own_lightning_checkpoint_round_trips(tmp_path):
    torch.manual_seed(0)
    trained = TinyPolicy(hidsize=16)
    ckpt = {"state_dict": {f"mine_policy.{k}": v for k, v in trained.state_dict().items()}, "global_step": 3}
    torch.save(ckpt, tmp_path / "last.ckpt")
    cfg = OmegaConf.create(
        {"_target_": "minesweep.policies.tiny.TinyPolicy", "hidsize": 16, "weights": str(tmp_path / "last.ckpt")}
    )
    loaded = build_policy(cfg)
    for k, v in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_strict_loading_names_offending_keys(tmp_path):
    sd = TinyPolicy(hidsize=16).state_dict()
    sd.pop("norm.weight")
    sd["extra.bias"] = torch.zeros(1)
    sd["memory.bias_hh"] = torch.zeros(3)
    with pytest.raises(ValueError) as info:
        load_policy_weights(TinyPolicy(hidsize=16), sd)
    message = str(info.value)
    assert "missing keys: norm.weight" in message
    assert "unexpected keys: extra.bias" in message
    assert "memory.bias_hh: checkpoint (3,)" in message


def test_weights_file_that_is_not_tensors_is_refused(tmp_path):
    path = tmp_path / "evil.weights"
    torch.save({"w": torch.zeros(1), "obj": object()}, path)
    with pytest.raises(ValueError, match="evil.weights"):
        read_policy_state_dict(path)
    with pytest.raises(FileNotFoundError, match="nothing.weights"):
        read_policy_state_dict(tmp_path / "nothing.weights")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_model_file_is_read_as_plain_data(shared_dir, tmp_path):
    config = json.loads((shared_dir / "fixtures/vpt/vpt_policy/config.json").read_text())
    model_file = tmp_path / "tiny.model"
    params = {"model": {"args": {"net": {"args": config["policy_kwargs"]}, "pi_head_opts": config["pi_head_kwargs"]}}}
    model_file.write_bytes(pickle.dumps(params))
    policy_kwargs, pi_head_kwargs = read_model_file(model_file)
    assert policy_kwargs == config["policy_kwargs"] and pi_head_kwargs == {"temperature": 2.0}

    cfg = OmegaConf.create(
        {
            "_target_": "minesweep.policies.vpt.VPTPolicy.from_model_file",
            "model_file": str(model_file),
            "weights": str(shared_dir / "fixtures/vpt/vpt_policy/state_dict.pt"),
        }
    )
    policy = build_policy(cfg)
    reference = torch.load(shared_dir / "fixtures/vpt/vpt_policy/state_dict.pt", weights_only=True)
    assert isinstance(policy, VPTPolicy)
    assert all(torch.equal(policy.state_dict()[k], v) for k, v in reference.items())

    evil = tmp_path / "evil.model"
    evil.write_bytes(pickle.dumps({"model": _RunsCode()}))
    with pytest.raises(ValueError, match="refusing to load posix.system"):
        read_model_file(evil)
    (tmp_path / "garbage.model").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="garbage.model"):
        read_model_file(tmp_path / "garbage.model")
