"""The MineStudio side-by-side gives both sides the same shapes (MineStudio itself is not installed here: its side
runs in its own environment, so only the arguments each side gets are checked)."""

import importlib.util

import pytest
from hydra import compose, initialize_config_dir

from tests.conftest import REPO


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["small", "medium"])
def test_both_sides_train_the_shapes_of_the_config(name):
    side_by_side, loop = load("minestudio_side_by_side"), load("minestudio_loop")
    hidsize, width, layers, T, B, heads, memory = side_by_side.CONFIGS[name]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("train", overrides=side_by_side.our_overrides(side_by_side.CONFIGS[name]))
    p, d = cfg.policy, cfg.data
    assert (p.hidsize, p.impala_width, p.n_recurrence_layers, p.timesteps) == (hidsize, width, layers, T)
    assert (p.attention_heads, p.attention_memory_size, d.batch_size, d.win_len) == (heads, memory, B, T)
    assert d.episode_continuous_batch and list(p.img_shape) == [128, 128, 3]
    args = loop.parser().parse_args(side_by_side.minestudio_args(side_by_side.CONFIGS[name]))
    assert (args.hidsize, args.impala_width, args.layers, args.timesteps) == (hidsize, width, layers, T)
    assert (args.heads, args.memory, args.batch_size, args.size) == (heads, memory, B, 128)
    if name == "small":  # our policy takes every override as a real argument (the medium one is slower to build)
        from minesweep.train import build_policy

        policy = build_policy(cfg.policy)
        assert len(policy.net.recurrent_layer.blocks) == layers
