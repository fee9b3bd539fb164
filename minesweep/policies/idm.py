"""An inverse dynamics model (IDM): VPT's ``InverseActionPolicy``, re-implemented.

An IDM labels video with actions: it sees a window of frames, past *and future*, and predicts the action taken at
every frame (the action at ``t`` shows in frame ``t + 1``). Same architecture and state-dict names as the
reference, so the released IDM's weights load strictly:

    image uint8 (B,T,H,W,3) -> /255
      -> 3D convolution over (frames, height, width), ReLU            net.conv3d_layer   (5 frames: t-2..t+2)
      -> ImpalaCNN (its first conv normalised too) -> dense -> linear    net.img_process
      -> transformer blocks, every frame attending to every frame        net.recurrent_layer (no memory)
      -> ReLU -> final LayerNorm                                          net.final_ln
      -> factored action head: 20 buttons x 2, camera 2 axes x 11 bins  pi_head

(reference) ``InverseActionNet`` computes ``lastlayer`` and discards it (``pi_latent = final_ln(x)``): the layer is
kept, for the state dict, frozen and unused. The reference has no value head. Windows are independent: nothing is
carried between them (``is_stateful = False``); frames that are padding (``input['mask']`` False) are not
attended to. The VPT image encoder, transformer and kwargs checks are :class:`~minesweep.policies.vpt.VPTPolicy`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from minesweep.actions.space import bins_to_camera
from minesweep.policies.base import Latents, State
from minesweep.policies.heads import FactoredActionHead
from minesweep.policies.vpt import VPTPolicy


class IDMPolicy(VPTPolicy):
    """VPT's inverse dynamics model. Takes the released IDM's network kwargs (``idm_net_kwargs``, read from its
    ``.model`` with :meth:`from_model_file`) plus ``temperature``; ``get_action`` gives factored actions
    (:class:`~minesweep.policies.heads.FactoredActionHead`), :meth:`to_env` turns them into env actions."""

    is_stateful = False
    action_head = FactoredActionHead

    def __init__(
        self,
        *,
        conv3d_params: Mapping[str, Any] | None = None,
        attention_mask_style: str = "none",
        name: str = "idm",
        **kwargs: Any,
    ) -> None:
        if "first_conv_norm" in kwargs:  # the reference's InverseActionNet sets it itself (a TypeError there)
            raise TypeError("IDMPolicy: first_conv_norm is set by conv3d_params (normalised iff there is a 3D conv)")
        super().__init__(
            conv3d_params=conv3d_params,
            attention_mask_style=attention_mask_style,
            # (reference) the whole CNN is normalised when a 3D conv comes first (pixels otherwise)
            first_conv_norm=conv3d_params is not None,
            name=name,
            **kwargs,
        )
        self.value_head = None  # (reference) an IDM has no value head
        self.net.use_lastlayer = False
        self.net.lastlayer.requires_grad_(False)  # in the state dict, never used: no gradient, no optimizer state

    def initial_state(self, batch_size: int | None = None) -> State:
        return None

    def forward(self, input: dict[str, Any], state_in: State = None, **kwargs: Any) -> tuple[Latents, State]:
        image = input["image"]
        B, T, H, W, _ = image.shape
        if (H, W) != self.img_shape[:2]:
            raise ValueError(f"IDMPolicy: image is {H}x{W}, the model expects {self.img_shape[:2]}")
        # No memory: the transformer's state is empty (maxlen 0), and `first` plays no part without one.
        empty = super().initial_state(B)
        first = torch.zeros(B, T, dtype=torch.bool, device=image.device)
        h, _ = self.net(image, first, empty, key_valid=input.get("mask"))
        return {"pi_logits": self.pi_head(h), "pi_h": h}, None

    def denormalize_value(self, vpred: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("an IDM has no value head")

    @staticmethod
    def to_env(action: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        """A factored action (``get_action``'s) -> env ``buttons`` (..., 20) uint8 and ``camera`` (..., 2) float32
        degrees (each axis its bin's centre)."""
        buttons = action["buttons"].detach().cpu().numpy().astype(np.uint8)
        camera = bins_to_camera(action["camera"].detach().cpu().numpy()).astype(np.float32)
        return buttons, camera
