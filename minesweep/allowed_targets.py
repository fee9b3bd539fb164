"""What a config may build: an allow-list of constructors, not of packages.

Configs, run folders and checkpoints are data that other people write (a shared ``--config-dir``, a
colleague's run folder, a downloaded checkpoint), so every ``_target_`` we instantiate is checked here
first, with the full config key in the error:

* ``pkg.*`` admits the **classes** under ``pkg`` (a constructor call), never its functions: ``minesweep.*``
  holds loaders and entry points (``minesweep.train.main``, ...) that a config has no business calling.
* an exact name (``lightning.Trainer``, ``minesweep.policies.vpt.VPTPolicy.from_model_file``) admits that one
  callable, class or not.
* :data:`REFUSED_TARGETS` is refused whatever admits it: what loads pickles, imports modules or runs code.

A researcher's own classes are admitted from trusted places only, never from a config key: the environment
variable :data:`ENV_VAR` (``MINESWEEP_ALLOWED_TARGETS="myproject.*"``) and entry points in the group
:data:`ENTRY_POINT_GROUP` of an installed package (``myproject = "myproject"`` admits ``myproject.*``,
``mine = "myproject.losses:MyBC"`` that one name).

Hydra's own execution whitelist stays on as the second lock (it rechecks what a dotted name resolves to);
:func:`hydra_whitelist` is what ``@hydra.main`` gets, so Hydra's callbacks (``hydra.callbacks``) and logging
factories, which Hydra builds before our code runs, admit only the user's trusted extensions. Hydra builds its
callbacks in their config order and ours is first (conf/train.yaml): :class:`HydraCallbacksChecked` checks the
others while it is built, so that a refusal names our allow-list, not only Hydra's whitelist.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import execution_whitelist
from omegaconf import OmegaConf

__all__ = [
    "ALLOWED_TARGETS",
    "REFUSED_TARGETS",
    "ENV_VAR",
    "ENTRY_POINT_GROUP",
    "RefusedTarget",
    "allowed_targets",
    "extension_targets",
    "check_target",
    "check_targets",
    "only_allowed",
    "hydra_whitelist",
    "describe_allow_list",
    "HydraCallbacksChecked",
]

ENV_VAR = "MINESWEEP_ALLOWED_TARGETS"
ENTRY_POINT_GROUP = "minesweep.allowed_targets"

#: What our configs (conf/, launch/) build. ``pkg.*``: the classes under pkg; an exact name: that callable.
ALLOWED_TARGETS: tuple[str, ...] = (
    "minesweep.*",  # policies, objectives, data modules, envs, players, callbacks
    "minesweep.policies.vpt.VPTPolicy.from_model_file",  # a released VPT's architecture (plain-data reader)
    "minesweep.policies.vpt.VPTPolicy.from_reference",  # reference weights (weights_only loader)
    "minesweep.policies.idm.IDMPolicy.from_model_file",  # the released IDM's architecture (plain-data reader)
    "minesweep.cluster.slurm_environment",  # trainer plugin: Lightning's SLURM environment, or none off SLURM
    "torch.optim.*",  # optimizers, and schedulers in torch.optim.lr_scheduler
    "lightning.pytorch.callbacks.*",
    "lightning.pytorch.loggers.*",
    "lightning.Trainer",
    "lightning.pytorch.Trainer",
)

#: Never built from a config, whatever admits it: each loads pickles or code, imports modules or runs programs.
#: A name is refused when it is one of these or lies under one (``torch.hub`` refuses ``torch.hub.load``);
#: checked on the name in the config and on what it resolves to (``torch.load`` is ``torch.serialization.load``).
REFUSED_TARGETS: tuple[str, ...] = (
    "torch.load",
    "torch.serialization",
    "torch.hub",
    "torch.jit",
    "torch.package",
    "torch.utils.model_zoo",
    "torch.utils.cpp_extension",
    "torch.ops",
    "torch.classes",
    "torch.library",
    "torch._C",
    "torch.export",
    "numpy.load",
    "numpy.lib",
    "pandas.read_pickle",
    "pickle",
    "_pickle",
    "copyreg",
    "marshal",
    "shelve",
    "dill",
    "cloudpickle",
    "joblib",
    "importlib",
    "pkgutil",
    "zipimport",
    "runpy",
    "code",
    "codeop",
    "builtins",
    "ctypes",
    "os",
    "posix",
    "nt",
    "sys",
    "subprocess",
    "multiprocessing",
    "pty",
    "shutil",
    "signal",
    "hydra.utils",
    "hydra._internal",
)
#: Methods refused on any class: they load a checkpoint file (and its pickled hyperparameters).
REFUSED_ATTRIBUTES = frozenset({"load_from_checkpoint"})

_PATTERN = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*(\.\*)?$")


class RefusedTarget(InstantiationException):
    """A config names a ``_target_`` that minesweep does not build; says the key, the target and the allow-list."""

    def __init__(self, key: str, target: str, reason: str, allow_list: str | None = None) -> None:
        self.key, self.target, self.reason = key, target, reason
        super().__init__(
            f"config key '{key or '<root>'}': _target_ '{target}' is refused: {reason}.\n"
            f"{allow_list or describe_allow_list()}"
        )


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _refused(name: str) -> str | None:
    for prefix in REFUSED_TARGETS:
        if _under(name, prefix):
            return prefix
    if name.rsplit(".", 1)[-1] in REFUSED_ATTRIBUTES:
        return name.rsplit(".", 1)[-1]
    return None


def _validate_extension(pattern: str, source: str) -> str:
    """A trusted extension names the user's own package or constructor, never a namespace holding a refused name."""
    if not _PATTERN.match(pattern):
        raise ValueError(f"{source}: '{pattern}' is not a dotted name or 'package.*'")
    prefix = pattern[:-2] if pattern.endswith(".*") else pattern
    for refused in REFUSED_TARGETS:
        if _under(refused, prefix) or _under(prefix, refused):
            raise ValueError(
                f"{source}: '{pattern}' would admit '{refused}', which loads or runs code; "
                f"name your own package (e.g. 'myproject.*') or single classes instead"
            )
    return pattern


def _env_extensions() -> list[str]:
    raw = os.environ.get(ENV_VAR, "")
    return [_validate_extension(p, f"${ENV_VAR}") for p in re.split(r"[,\s]+", raw) if p]


def _entry_point_extensions() -> list[str]:
    patterns = []
    # Read the values only: nothing is imported until a config names the target.
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        value = ep.value.strip()
        pattern = value.replace(":", ".") if ":" in value else f"{value}.*"
        patterns.append(_validate_extension(pattern, f"entry point '{ep.name}' ({ENTRY_POINT_GROUP})"))
    return patterns


def extension_targets() -> tuple[str, ...]:
    """The user's trusted additions: ``$MINESWEEP_ALLOWED_TARGETS`` and ``minesweep.allowed_targets`` entry points."""
    return tuple(dict.fromkeys(_env_extensions() + _entry_point_extensions()))


def allowed_targets() -> tuple[str, ...]:
    """Our allow-list plus the user's trusted extensions (read now: the environment may change between calls)."""
    return tuple(dict.fromkeys(ALLOWED_TARGETS + extension_targets()))


def hydra_whitelist() -> tuple[str, ...]:
    """For ``@hydra.main(execution_whitelist=...)``: what Hydra may build before our code runs (``hydra.callbacks``,
    logging factories): the user's own extensions, and :class:`HydraCallbacksChecked`, which checks them."""
    return (f"{__name__}.HydraCallbacksChecked", "minesweep.sweeps.jobs.JobRecord", *extension_targets())


def describe_allow_list(patterns: Sequence[str] | None = None) -> str:
    patterns = allowed_targets() if patterns is None else patterns
    listed = ", ".join(f"{p} (classes)" if p.endswith(".*") else p for p in patterns)
    return (
        f"minesweep's allow-list: a config may build {listed}. Refused whatever admits them: names that load files, "
        f"import modules or run code (minesweep.allowed_targets.REFUSED_TARGETS: torch.load, torch.hub, pickle, "
        f"importlib, os, subprocess, ...). To allow a package of your own, set {ENV_VAR}='myproject.*' (or name single "
        f"classes) or declare an entry point in the group '{ENTRY_POINT_GROUP}'; a config cannot extend this list."
    )


def _match(name: str, patterns: Sequence[str]) -> str | None:
    """The pattern admitting ``name``: an exact entry first (it admits any callable), then a ``pkg.*`` one."""
    if name in patterns:
        return name
    for pattern in patterns:
        if pattern.endswith(".*") and name.startswith(pattern[:-1]):
            return pattern
    return None


def _resolved_name(obj: Any) -> str | None:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    return f"{module}.{qualname}" if isinstance(module, str) and isinstance(qualname, str) else None


def check_target(
    target: str, key: str = "", patterns: Sequence[str] | None = None, allow_list: str | None = None
) -> None:
    """Raise :class:`RefusedTarget` unless the allow-list admits ``target``. Only names the allow-list admits are
    imported (to see what they resolve to), so a refused name never runs its module's code. ``allow_list``: the
    description of ``patterns`` the refusal ends with (default: :func:`describe_allow_list`)."""
    reason = _refusal(target, allowed_targets() if patterns is None else tuple(patterns))
    if reason:
        raise RefusedTarget(key, target if isinstance(target, str) else repr(target), reason, allow_list)


def _refusal(target: Any, patterns: tuple[str, ...]) -> str | None:
    """Why ``target`` is refused, or None when ``patterns`` admit it."""
    if not isinstance(target, str):
        return "a _target_ in a config must be a dotted name"
    refused = _refused(target)
    if refused:
        return f"'{refused}' can load files, import modules or run code"
    admitted_by = _match(target, patterns)
    if admitted_by is None:
        return "it is not on the allow-list"
    from hydra._internal.utils import _locate  # the resolver instantiate() itself uses

    try:
        obj = _locate(target)
    except ImportError as error:
        return f"it cannot be imported ({error})"
    resolved = _resolved_name(obj)
    if resolved:
        refused = _refused(resolved)
        if refused:
            return f"it is '{resolved}', and '{refused}' can load files, import modules or run code"
    if admitted_by.endswith(".*"):
        if not isinstance(obj, type):
            return (
                f"'{admitted_by}' admits classes only and this is a {type(obj).__name__}; "
                "a function or alternative constructor must be listed by its exact name"
            )
        # An alias (a class imported into an admitted module) is judged by where it really lives.
        if resolved and _match(resolved, patterns) is None:
            return f"it is '{resolved}', which is not on the allow-list"
    return None


def _walk(node: Any, key: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield key, node["_target_"]
        for k, v in node.items():
            yield from _walk(v, f"{key}.{k}" if key else str(k))
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _walk(v, f"{key}[{i}]")


def check_targets(
    node: Any, key: str = "", patterns: Sequence[str] | None = None, allow_list: str | None = None
) -> None:
    """Check every ``_target_`` in ``node`` (a config, dict or list; interpolations resolved, nested nodes included).

    A whole composed config's ``hydra`` node is left to Hydra: its launcher and sweeper are registered plugins,
    and Hydra builds its callbacks under :func:`hydra_whitelist`."""
    patterns = allowed_targets() if patterns is None else tuple(patterns)
    if not key and isinstance(node, Mapping) and "hydra" in node:
        for k in node:
            if k != "hydra":  # each child resolved in place: interpolations still see the whole config
                check_targets(node[k], str(k), patterns, allow_list)
        return
    if OmegaConf.is_config(node):
        node = OmegaConf.to_container(node, resolve=True)
    for where, target in _walk(node, key):
        check_target(target, where, patterns, allow_list)


@contextmanager
def only_allowed(node: Any = None, key: str = "") -> Iterator[None]:
    """Check ``node``'s targets, then instantiate inside Hydra's whitelist set to the same patterns (the second lock:
    it also covers instantiate() calls on nodes not checked here and rechecks resolved aliases)."""
    patterns = allowed_targets()
    if node is not None:
        check_targets(node, key, patterns)
    with execution_whitelist(patterns, reset=True):
        yield


_HYDRA_CALLBACKS_RESOLVER = "minesweep.hydra_callbacks_checked"


def _check_hydra_callbacks(*, _root_: Any) -> bool:
    """Check every ``hydra.callbacks`` entry but ours against :func:`hydra_whitelist`, in our words."""
    callbacks = OmegaConf.select(_root_, "hydra.callbacks") or {}
    patterns = hydra_whitelist()
    allowed = (
        ", ".join(extension_targets())
        or f"nothing, as {ENV_VAR} is unset and no installed package declares entry points"
    )
    allow_list = (
        "Hydra builds hydra.callbacks before minesweep runs, so they may be only your own trusted extensions: "
        f"{allowed}. To allow a package of your own, set {ENV_VAR}='myproject.*' or declare an entry point in the "
        f"group '{ENTRY_POINT_GROUP}'; a config cannot extend this list."
    )
    ours = (f"{__name__}.{HydraCallbacksChecked.__qualname__}", "minesweep.sweeps.jobs.JobRecord")
    for name in callbacks:
        node = callbacks[name]
        if isinstance(node, Mapping) and node.get("_target_") in ours:
            continue
        check_targets(node, f"hydra.callbacks.{name}", patterns, allow_list)
    return True


class HydraCallbacksChecked(Callback):
    """The first entry of ``hydra.callbacks`` (conf/train.yaml): building it resolves ``checked``, which checks the
    other entries before Hydra builds them (a Hydra callback that does nothing else)."""

    def __init__(self, checked: bool) -> None:
        self.checked = checked


OmegaConf.register_resolver(_HYDRA_CALLBACKS_RESOLVER, _check_hydra_callbacks, replace=True)
