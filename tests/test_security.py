"""Configs, run folders and checkpoints must not run code: each door attacked with a payload that writes a marker file.

Every attack test asserts that the marker does NOT appear and that the refusal names the config key and the target.
Mutation-checked: restoring the old allow-list in minesweep.allowed_targets (``torch.*`` admitted, REFUSED_TARGETS
empty, ``pkg.*`` admitting functions) turns the door-1 and door-3 tests red with the marker written; ``hydra_whitelist``
returning None (no whitelist on @hydra.main) turns the Hydra callback and logging tests red. Adding ``torch.*`` alone
does not: REFUSED_TARGETS and the classes-only rule each still refuse ``torch.load``.
"""

from __future__ import annotations

import csv
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from minesweep import allowed_targets
from minesweep.allowed_targets import ENV_VAR, RefusedTarget, check_target, check_targets
from minesweep.data.loading.datamodule import MineDataModule
from minesweep.eval import load_policy
from minesweep.train import build, build_policy, train
from minesweep.trainer import POLICY_CONFIG_KEY
from tests.conftest import CONF_DIR, REPO
from tests.helpers import SMALL_RUN
from tests.helpers import run_eval_cli as eval_main


class _WritesMarker:
    """Unpickling this creates the file at ``path``: what a malicious pickle would do instead."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture
def evil_pickle(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_WritesMarker(marker)))
    return path


@pytest.fixture
def evil_hub(tmp_path: Path, marker: Path) -> Path:
    """A folder whose hubconf.py writes the marker when torch.hub.load(source='local') imports it."""
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "hubconf.py").write_text(
        f"open({str(marker)!r}, 'w').close()\ndependencies = []\n\ndef x():\n    return None\n"
    )
    return hub


def test_the_payloads_work(evil_pickle: Path, evil_hub: Path, marker: Path):
    """The attack tests below are only meaningful if these payloads really run when loaded."""
    with pytest.raises(Exception):  # noqa: B017 - whatever torch says of a non-torch file: the payload ran before
        torch.load(evil_pickle, weights_only=False)  # not a torch file, but unpickled first
    assert marker.exists()
    marker.unlink()
    torch.hub.load(str(evil_hub), "x", source="local", trust_repo=True)
    assert marker.exists()


def run_train(
    *overrides: str, env: dict[str, str] | None = None, pythonpath: str = str(REPO)
) -> subprocess.CompletedProcess:
    """``python train.py`` from this checkout (its code, not an installed copy)."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONPATH=pythonpath, **(env or {}))
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


# -- door 1: torch.* on the allow-list ----------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_override_torch_load_is_refused(tmp_path: Path, evil_pickle: Path, marker: Path):
    result = run_train(
        "+callbacks.x._target_=torch.load",
        f"+callbacks.x.f={evil_pickle}",
        "+callbacks.x.weights_only=false",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode != 0
    assert "config key 'callbacks.x'" in result.stderr and "'torch.load'" in result.stderr, result.stderr[-3000:]
    assert "allow-list" in result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_config_dir_yaml_naming_torch_load_is_refused(tmp_path: Path, evil_pickle: Path, marker: Path):
    conf = tmp_path / "their_conf"
    (conf / "policy").mkdir(parents=True)
    (conf / "policy" / "evil.yaml").write_text(f"_target_: torch.load\nf: {evil_pickle}\nweights_only: false\n")
    result = run_train("--config-dir", str(conf), "policy=evil", "logger=csv", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "config key 'policy'" in result.stderr and "'torch.load'" in result.stderr, result.stderr[-3000:]
    assert not marker.exists()


def compose_train(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose(
            "train", overrides=["logger=csv", f"paths.output_dir={tmp_path}", f"data.root={tmp_path}/store", *overrides]
        )


@pytest.mark.parametrize("target", ["torch.hub.load", "torch.hub._load_local", "minesweep.train.torch.hub.load"])
def test_torch_hub_local_hubconf_is_refused(tmp_path: Path, evil_hub: Path, marker: Path, target: str):
    cfg = compose_train(tmp_path)
    OmegaConf.update(
        cfg,
        "callbacks.hub",
        {"_target_": target, "repo_or_dir": str(evil_hub), "model": "x", "source": "local", "trust_repo": True},
        force_add=True,
    )
    with pytest.raises(RefusedTarget, match="callbacks.hub") as info:
        build(cfg)
    assert target in str(info.value)
    assert not marker.exists()


def test_nested_target_and_alias_are_refused(tmp_path: Path, evil_pickle: Path, marker: Path):
    """A payload one level down (an argument of an allowed class), and torch.load reached through our own module."""
    cfg = compose_train(tmp_path)
    OmegaConf.update(
        cfg,
        "objective.bc.weight",
        {"_target_": "minesweep.train.torch.load", "f": str(evil_pickle), "weights_only": False},
    )
    with pytest.raises(RefusedTarget, match=r"objective\.bc\.weight") as info:
        build(cfg)
    assert "torch.serialization.load" in str(info.value)
    assert not marker.exists()


def test_build_policy_refuses_outside_build(evil_pickle: Path, marker: Path):
    with pytest.raises(RefusedTarget, match="'policy'"):
        build_policy({"_target_": "torch.load", "f": str(evil_pickle), "weights_only": False})
    assert not marker.exists()


# -- door 2: Hydra's own callbacks ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_hydra_callback_is_refused_before_anything_runs(tmp_path: Path, evil_pickle: Path, marker: Path):
    run_dir = tmp_path / "run"
    result = run_train(
        "+hydra.callbacks.x._target_=torch.load",
        f"+hydra.callbacks.x.f={evil_pickle}",
        "+hydra.callbacks.x.weights_only=false",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode != 0
    assert "config key 'hydra.callbacks.x': _target_ 'torch.load' is refused" in result.stderr, result.stderr[-3000:]
    assert "MINESWEEP_ALLOWED_TARGETS" in result.stderr  # the refusal says what is allowed and how to extend it
    assert not marker.exists()
    assert not run_dir.exists()  # refused before Hydra made the job folder: nothing of the run started


@pytest.mark.slow
def test_hydra_callback_is_refused_without_our_check(tmp_path: Path, evil_pickle: Path, marker: Path):
    """Removing our checking callback leaves Hydra's whitelist (the second lock), set by @hydra.main."""
    run_dir = tmp_path / "run"
    result = run_train(
        "~hydra.callbacks.allow_list",
        "+hydra.callbacks.x._target_=torch.load",
        f"+hydra.callbacks.x.f={evil_pickle}",
        "+hydra.callbacks.x.weights_only=false",
        "logger=csv",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode != 0
    assert "hydra.callbacks.x" in result.stderr and "'torch.load'" in result.stderr, result.stderr[-3000:]
    assert not marker.exists()


@pytest.mark.slow
def test_hydra_logging_factory_is_refused(tmp_path: Path, evil_pickle: Path, marker: Path):
    """Hydra's logging config (dictConfig 'class'/'()' factories) is built under the same @hydra.main whitelist."""
    result = run_train(
        f"+hydra.job_logging.handlers.evil={{class:torch.load,f:{evil_pickle},weights_only:false}}",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode != 0
    assert "'torch.load'" in result.stderr and "hydra.logging" in result.stderr, result.stderr[-3000:]
    assert not marker.exists()


# -- door 3: a run folder's config.yaml, a checkpoint's stored config ------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "store"
    MineDataModule(
        root=str(root), demo={"episodes": 4, "frames": 48, "width": 160, "height": 90, "seed": 1}
    ).prepare_data()
    return root


@pytest.fixture(scope="module")
def trained_run(store: Path, tmp_path_factory) -> Path:
    """A real (tiny) training run: its folder holds config.yaml and checkpoints/last.ckpt."""
    run = tmp_path_factory.mktemp("run")
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            overrides=[
                *SMALL_RUN,
                f"data.root={store}",
                f"paths.output_dir={run}",
                "logger=csv",
                "policy.hidsize=24",
                "trainer.max_steps=2",
                "trainer.val_check_interval=2",
            ],
        )
    train(cfg)
    return run


def poison_run_config(run: Path, evil_pickle: Path) -> None:
    saved = OmegaConf.load(run / "config.yaml")
    saved.policy = {"_target_": "torch.load", "f": str(evil_pickle), "weights_only": False}
    OmegaConf.save(saved, run / "config.yaml")


def eval_cfg():
    from minesweep.eval import compose_config

    return compose_config(["eval.baselines=null"], config="train")


@pytest.mark.slow
def test_checkpoint_carries_its_policy_config_and_eval_ignores_the_side_file(
    trained_run: Path, evil_pickle: Path, marker: Path, tmp_path: Path
):
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True, map_location="cpu")[POLICY_CONFIG_KEY]
    assert stored["_target_"] == "minesweep.policies.tiny.TinyPolicy" and stored["hidsize"] == 24
    assert "weights" not in stored
    # A shared run folder whose config.yaml was edited next to a safe checkpoint: eval never reads it.
    run = tmp_path / "shared_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(ckpt.read_bytes())
    (run / "config.yaml").write_text((trained_run / "config.yaml").read_text())
    poison_run_config(run, evil_pickle)
    policy = load_policy(eval_cfg(), run / "checkpoints" / "last.ckpt")
    assert type(policy).__name__ == "TinyPolicy" and policy.hidsize == 24  # not the composed default (64/128)
    assert not marker.exists()
    assert load_policy(None, ckpt).hidsize == 24  # the checkpoint alone is enough


def test_an_older_checkpoint_alone_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ValueError, match="holds no policy config"):
        load_policy(None, legacy_checkpoint(tmp_path / "run"))


def legacy_checkpoint(run: Path) -> Path:
    """A checkpoint as minesweep wrote them before the policy config moved inside: weights only."""
    from minesweep.policies.tiny import TinyPolicy

    policy = TinyPolicy(hidsize=24)
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"mine_policy.{k}": v for k, v in policy.state_dict().items()}, "global_step": 2}, ckpt)
    return ckpt


@pytest.mark.slow
def test_eval_of_an_older_checkpoint_checks_the_run_config(
    tmp_path: Path, evil_pickle: Path, marker: Path, trained_run: Path, capsys
):
    run = tmp_path / "old_run"
    ckpt = legacy_checkpoint(run)
    (run / "config.yaml").write_text((trained_run / "config.yaml").read_text())
    poison_run_config(run, evil_pickle)
    assert eval_main([f"eval.checkpoint={ckpt}", "eval.baselines=null", "eval.episodes=1"]) == 1
    err = capsys.readouterr().err
    assert "config.yaml: policy" in err and "'torch.load'" in err and "allow-list" in err, err
    assert not marker.exists()
    assert not (run / "eval").exists()


def test_a_checkpoint_naming_torch_load_is_refused(tmp_path: Path, evil_pickle: Path, marker: Path):
    """The stored config is data from whoever wrote the checkpoint: checked like any config."""
    run = tmp_path / "crafted"
    ckpt = legacy_checkpoint(run)
    saved = torch.load(ckpt, weights_only=True)
    saved[POLICY_CONFIG_KEY] = {"_target_": "torch.load", "f": str(evil_pickle), "weights_only": False}
    torch.save(saved, ckpt)
    with pytest.raises(RefusedTarget, match=POLICY_CONFIG_KEY) as info:
        load_policy(eval_cfg(), ckpt)
    assert "torch.load" in str(info.value)
    assert not marker.exists()


def test_eval_env_and_baselines_are_checked(tmp_path: Path, evil_pickle: Path, marker: Path):
    from minesweep.eval import evaluate_checkpoint

    cfg = eval_cfg()
    ckpt = legacy_checkpoint(tmp_path / "run")
    cfg.eval.checkpoint = str(ckpt)
    cfg.policy.hidsize = 24
    cfg.policy.bottleneck = False  # the legacy checkpoint predates the bottleneck
    # ... and the tile encoder: TinyPolicy's class defaults, the Atari encoder
    cfg.policy.update(channels=[16, 32, 32], kernels=[8, 4, 3], strides=[4, 2, 2], padding=[0, 0, 0], pool=4)
    cfg.eval.env = {"_target_": "torch.load", "f": str(evil_pickle), "weights_only": False}
    with pytest.raises(RefusedTarget, match="'eval.env'"):
        evaluate_checkpoint(cfg)
    assert not marker.exists()


# -- door 6: the user's own package, admitted from a trusted place ---------------------------------------------------

MY_LOSSES = '''
import torch

from minesweep.objectives import ObjectiveCallback


class MyBC(ObjectiveCallback):
    """Behaviour cloning of the buttons only, as a researcher's own objective."""

    required_latents = ("pi_logits",)

    def __call__(self, batch, batch_idx, step_name, latents, mine_policy):
        log_prob = mine_policy.pi_head.logprob(batch["agent_action"], latents["pi_logits"], return_dict=True)
        mask = batch["mask"].to(log_prob["buttons"].dtype)
        nll = -(log_prob["buttons"] * mask).sum() / mask.sum().clamp_min(1.0)
        return {"loss": self.weight * nll, "buttons_nll": nll.detach()}
'''

MY_POLICIES = '''
from minesweep.policies.tiny import TinyPolicy


class MyPolicy(TinyPolicy):
    """TinyPolicy with a narrower encoder: a researcher's own architecture."""

    def __init__(self, hidsize: int = 32, name: str = "mine", **kwargs):
        super().__init__(hidsize=hidsize, channels=(8, 16, 16), name=name, **kwargs)
'''


@pytest.fixture
def my_project(tmp_path: Path) -> Path:
    """myproject/ (losses.py, policies.py) and its conf/ (objective/mine.yaml, policy/mine.yaml), as in the README."""
    root = tmp_path / "src"
    pkg = root / "myproject"
    (pkg / "conf" / "objective").mkdir(parents=True)
    (pkg / "conf" / "policy").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "losses.py").write_text(MY_LOSSES)
    (pkg / "policies.py").write_text(MY_POLICIES)
    (pkg / "conf" / "objective" / "mine.yaml").write_text("mine:\n  _target_: myproject.losses.MyBC\n  weight: 0.5\n")
    (pkg / "conf" / "policy" / "mine.yaml").write_text(
        "_target_: myproject.policies.MyPolicy\nhidsize: 32\nname: mine\nweights: null\n"
    )
    return root


@pytest.mark.slow
def test_own_objective_and_policy_train_when_allowed_from_the_environment(
    my_project: Path, store: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    args = [
        "--config-dir",
        str(my_project / "myproject" / "conf"),
        "objective=[bc,mine]",
        "policy=mine",
        *[o for o in SMALL_RUN if not o.startswith("policy.")],
        f"data.root={store}",
        "logger=csv",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "log_freq=1",
        f"hydra.run.dir={run_dir}",
    ]
    pythonpath = f"{my_project}{os.pathsep}{REPO}"

    refused = run_train(*args, pythonpath=pythonpath)  # without the trusted setting: not on the allow-list
    assert refused.returncode != 0
    assert "'myproject." in refused.stderr and ENV_VAR in refused.stderr, refused.stderr[-3000:]

    result = run_train(*args, env={ENV_VAR: "myproject.*"}, pythonpath=pythonpath)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for p in run_dir.glob("csv/version_*/metrics.csv") for r in csv.DictReader(open(p))]
    assert any(r.get("train/mine/buttons_nll") for r in rows), "the user's objective did not log"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt[POLICY_CONFIG_KEY]["_target_"] == "myproject.policies.MyPolicy"
    assert ckpt["global_step"] == 3


# -- the allow-list itself -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "torch.load",
        "torch.hub.load",
        "torch.jit.load",
        "torch.package.PackageImporter",
        "torch.serialization.load",
        "importlib.import_module",
        "pickle.loads",
        "numpy.load",
        "os.system",
        "subprocess.Popen",
        "builtins.exec",
        "runpy.run_path",
        "minesweep.train.main",
        "minesweep.train.train",
        "minesweep.policies.weights.read_policy_state_dict",
        "minesweep.trainer.MineLightning.load_from_checkpoint",
        "minesweep.train.Path",
        "minesweep.policies",
        "torch.optim.AdamW.load_state_dict",
        "torch.nn.Linear",
        "collections.OrderedDict",
    ],
)
def test_refused(target: str):
    with pytest.raises(RefusedTarget) as info:
        check_target(target, "some.key")
    assert "config key 'some.key'" in str(info.value) and f"'{target}'" in str(info.value)
    assert "minesweep.* (classes)" in str(info.value)  # the allow-list is named


@pytest.mark.parametrize(
    "target",
    [
        "minesweep.policies.tiny.TinyPolicy",
        "minesweep.objectives.BehaviorCloneCallback",
        "minesweep.policies.vpt.VPTPolicy.from_model_file",
        "torch.optim.AdamW",
        "torch.optim.lr_scheduler.CosineAnnealingLR",
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "lightning.pytorch.loggers.CSVLogger",
        "lightning.Trainer",
        "lightning.pytorch.Trainer",
    ],
)
def test_admitted(target: str):
    check_target(target, "k")


def test_every_target_in_conf_and_launch_is_admitted():
    """Each config group option, and every _target_ written in conf/ (launch/ holds Hydra plugins: Hydra's side)."""
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        for group in (
            "policy",
            "data",
            "logger",
            "trainer",
            "optim",
            "objective",
            "callbacks/online_eval",
            "callbacks/final_eval",
        ):
            for option in sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")):
                choice = f"[{option}]" if group == "objective" else option
                cfg = compose("train", overrides=["paths.output_dir=.", f"{group}={choice}"])
                check_targets(cfg)


def test_a_config_cannot_extend_the_allow_list(tmp_path: Path):
    cfg = compose_train(tmp_path)
    for key in ("allowed_targets", ENV_VAR):
        OmegaConf.update(cfg, key, ["collections.*"], force_add=True)
    OmegaConf.update(
        cfg,
        "callbacks.x",
        {"_target_": "collections.OrderedDict", "_execution_whitelist_": ["collections.*"]},
        force_add=True,
    )
    with pytest.raises(InstantiationException, match="callbacks.x"):
        build(cfg)


def test_environment_extends_with_packages_and_exact_names(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "collections.*, json.dumps")
    assert allowed_targets.allowed_targets()[-2:] == ("collections.*", "json.dumps")
    check_target("collections.OrderedDict", "k")
    check_target("json.dumps", "k")  # an exact name admits a function
    with pytest.raises(RefusedTarget, match="classes only"):
        check_target("collections.namedtuple", "k")  # a pattern admits classes only
    assert allowed_targets.hydra_whitelist() == (
        "minesweep.allowed_targets.HydraCallbacksChecked",
        "minesweep.sweeps.jobs.JobRecord",
        "collections.*",
        "json.dumps",
    )


@pytest.mark.parametrize("pattern", ["torch.*", "os.path.*", "numpy.*", "*", "pickle", "importlib.*"])
def test_environment_cannot_admit_a_refused_name(monkeypatch, pattern: str):
    monkeypatch.setenv(ENV_VAR, pattern)
    with pytest.raises(ValueError, match=ENV_VAR):
        allowed_targets.allowed_targets()


def test_entry_points_extend_the_allow_list(tmp_path: Path, monkeypatch):
    """An installed package declares its own targets: [project.entry-points."minesweep.allowed_targets"]."""
    dist = tmp_path / "myproject-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: myproject\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[minesweep.allowed_targets]\nmyproject = myproject\nodict = collections:OrderedDict\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    extensions = allowed_targets.extension_targets()
    assert "myproject.*" in extensions and "collections.OrderedDict" in extensions
    check_target("collections.OrderedDict", "k")
    with pytest.raises(RefusedTarget):
        check_target("collections.Counter", "k")


def test_optuna_custom_search_space_is_a_search_space_function():
    from minesweep.sweeps.optuna_sweeper import OptunaSweeper

    sweeper = OptunaSweeper(sampler=None, custom_search_space="minesweep.sweeps.search_space.objective_weights")
    assert sweeper.custom_search_space_extender is not None  # upstream's attribute
    with pytest.raises(InstantiationException, match="whitelist"):
        OptunaSweeper(sampler=None, custom_search_space="minesweep.train.train")


def test_own_conf_joins_through_hydra_searchpath(my_project: Path):
    conf = my_project / "myproject" / "conf"
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose("train", overrides=[f"hydra.searchpath=[file://{conf}]", "objective=[bc,mine]", "policy=mine"])
    assert cfg.objective.mine._target_ == "myproject.losses.MyBC"
    assert cfg.policy._target_ == "myproject.policies.MyPolicy"
