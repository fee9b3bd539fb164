"""Building a policy from its config: the one place where policy configs (the experiment's, a checkpoint's, a run
folder's) become modules. Free of Lightning, so that ``minesweep-eval`` starts without importing the trainer."""

from __future__ import annotations

import logging

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from minesweep import allowed_targets
from minesweep.policies.base import MinePolicy
from minesweep.policies.weights import load_policy_weights

__all__ = ["FRAME_SIZE_KEY", "POLICY_CONFIG_KEY", "build_policy"]

log = logging.getLogger("minesweep")

#: Where a checkpoint holds its policy's config (a plain dict): minesweep-eval rebuilds the policy from it alone.
POLICY_CONFIG_KEY = "minesweep_policy_config"
#: Where a checkpoint holds the (height, width) of the frames its policy was trained on: minesweep-eval plays at it.
FRAME_SIZE_KEY = "minesweep_frame_size"


def build_policy(policy_cfg: DictConfig | dict, key: str = "policy") -> MinePolicy:
    """Instantiate the policy; ``weights`` (a state dict or a minesweep checkpoint) loads strictly.

    ``key`` names where the config came from in a refusal (e.g. a checkpoint or a run folder's config.yaml).
    The policy keeps its config (resolved, without ``weights``) as ``minesweep_policy_config``: MineLightning
    stores it in every checkpoint, so minesweep-eval rebuilds the policy from the checkpoint alone."""
    policy_cfg = OmegaConf.create(
        OmegaConf.to_container(policy_cfg, resolve=True) if OmegaConf.is_config(policy_cfg) else dict(policy_cfg)
    )
    weights = policy_cfg.pop("weights", None)
    # Checked also when called outside build(): eval and user code pass configs they did not write.
    with allowed_targets.only_allowed(policy_cfg, key):
        policy = instantiate(policy_cfg)
    setattr(policy, POLICY_CONFIG_KEY, OmegaConf.to_container(policy_cfg))
    if weights:
        load_policy_weights(policy, weights)
        log.info("loaded policy weights from %s", weights)
    return policy
