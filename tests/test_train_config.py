"""Config composition of every group, and the config security boundary."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import get_method
from omegaconf import OmegaConf

from minesweep.train import build
from tests.conftest import CONF_DIR


def compose_train(overrides=(), hydra_config=False):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra_config)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group, option",
    [(g, o) for g in ("policy", "data", "optim", "trainer", "logger") for o in options(g)],
)
def test_every_group_option_composes_and_names_a_real_target(group, option):
    cfg = compose_train([f"{group}={option}"])
    node = cfg[group]
    if "_target_" in node:
        assert get_method(node._target_) is not None


def test_default_composition():
    cfg = compose_train()
    assert list(cfg.objective) == ["bc"]
    assert cfg.policy._target_.endswith("TinyPolicy")
    assert cfg.optimized_metric == "val/loss"


def test_objective_lists_weights_and_append():
    cfg = compose_train(["objective=[bc,kl]"])
    assert list(cfg.objective) == ["bc", "kl"]
    assert cfg.objective.bc.weight == 1.0 and cfg.objective.kl.weight == 0.01
    cfg = compose_train(["objective=[bc,kl]", "objective.kl.weight=0.5"])
    assert cfg.objective.kl.weight == 0.5
    cfg = compose_train(["+objective=kl"])
    assert list(cfg.objective) == ["bc", "kl"]
    for option in options("objective"):
        node = compose_train([f"objective=[{option}]"]).objective[option]
        assert get_method(node._target_) is not None


def test_launch_presets_are_on_the_search_path():
    cfg = compose_train(["hydra/launcher=local"], hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("LocalLauncher")


def test_config_typo_is_a_clear_error():
    with pytest.raises(Exception, match="lerning_rate"):
        compose_train(["optim.lerning_rate=1e-3"])


@pytest.mark.parametrize(
    "key, target",
    [("policy", "collections.OrderedDict"), ("data", "os.system"), ("logger", "subprocess.Popen")],
)
def test_forbidden_target_is_refused(tmp_path: Path, key, target):
    cfg = compose_train(["logger=csv", f"paths.output_dir={tmp_path}", f"data.root={tmp_path}/store"])
    OmegaConf.update(cfg, f"{key}._target_", target, force_add=True)
    with pytest.raises(InstantiationException, match="allow-list") as info:
        build(cfg)
    assert target in str(info.value) and f"'{key}'" in str(info.value)


def test_run_folder_names_are_flat_short_and_distinct():
    from minesweep.train import run_folder_name

    assert run_folder_name("") == "default"
    assert "/" not in run_folder_name("data.root=/tmp/x/store,seed=1")
    long_a, long_b = "x=" + "a" * 300, "x=" + "a" * 299 + "b"
    assert len(run_folder_name(long_a)) <= 120
    assert run_folder_name(long_a) != run_folder_name(long_b)
    assert run_folder_name(long_a) == run_folder_name(long_a)


@pytest.mark.parametrize("option, kind", [("adamw", "AdamW"), ("sgd", "SGD")])
def test_the_optimizer_is_the_one_its_config_names(tmp_path: Path, option, kind):
    cfg = compose_train(
        ["logger=csv", f"paths.output_dir={tmp_path}", f"data.root={tmp_path}/store", f"optim={option}"]
    )
    _, module, _ = build(cfg)
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    assert type(optimizer).__name__ == kind
    assert optimizer.defaults["weight_decay"] == cfg.optim.weight_decay
    assert scheduler.base_lrs == [cfg.optim.learning_rate]  # the warm-up multiplies the configured rate
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.optim.learning_rate / cfg.optim.warmup_steps)
    if kind == "SGD":
        assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["nesterov"]


def test_adamw_settings_with_another_optimizer_are_refused(tmp_path: Path):
    cfg = compose_train(
        [
            "logger=csv",
            f"paths.output_dir={tmp_path}",
            f"data.root={tmp_path}/store",
            "optim=sgd",
            "+optim.betas=[0.8,0.9]",
        ]
    )
    with pytest.raises(ValueError, match="optim.betas"):
        build(cfg)
