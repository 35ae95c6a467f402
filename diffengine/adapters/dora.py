"""DoRA (Liu et al., 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"):
LoRA plus a trained magnitude per output channel,
W' = m ⊙ (W + s B A) / ‖W + s B A‖, the norm taken over each output
channel's row (peft's ``use_dora=True``).

Step folders hold diffusers' ``pytorch_lora_weights.safetensors`` with
peft's ``lora_magnitude_vector``, which ``load_lora_weights`` reads. The
kohya form is LoRA's plus ``dora_scale`` shaped (out, 1[, 1, 1]), the
output-axis layout LyCORIS writes (``wd_on_output``). Readers differ on it:

- ComfyUI (``comfy/weight_adapter/base.py``, ``weight_decompose``) divides
  an output-axis ``dora_scale`` by the norm of the *frozen* weight ‖W‖,
  not of W + ΔW as DoRA and LyCORIS do. With the base weights at hand,
  :meth:`DoRA.to_kohya` writes m · ‖W‖ / ‖W + s B A‖ (plus ComfyUI's
  epsilon), which ComfyUI turns into exactly the trained weight; without
  them it writes m, which LyCORIS' own loader reads exactly.
- AUTOMATIC1111 only reads input-axis magnitudes (one per input column),
  a decomposition peft's DoRA cannot be written as.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from diffengine.adapters.base import AdapterKind
from diffengine.adapters.lora import LoRA
from diffengine.errors import ConfigError

# ComfyUI adds the float32 epsilon to the norm it divides by.
COMFYUI_EPSILON = torch.finfo(torch.float32).eps


def row_norms(weight: torch.Tensor) -> torch.Tensor:
    """The L2 norm of each output channel's weights."""
    return weight.reshape(weight.shape[0], -1).norm(dim=1)


class DoRA(LoRA):
    """peft's ``LoraConfig`` with ``use_dora=True``."""

    name = "DoRA"
    parameters = (*LoRA.parameters, "lora_magnitude_vector")
    kohya_keys = ("dora_scale", )
    network_module = AdapterKind.network_module
    algo = "lora"
    defaults: ClassVar[Mapping[str, Any]] = {**LoRA.defaults, "use_dora": True}

    def matches(self, config):
        return AdapterKind.matches(self, config) and bool(
            config.get("use_dora"))

    def options(self, cfg, name):
        if cfg.get("use_dora") is False:
            raise ConfigError(f"{name}.type='DoRA' with use_dora=False; "
                              "use type='LoRA' for plain LoRA.")
        return super().options(cfg, name)

    def to_kohya(self, tensors, scale, rank, base_weight=None):
        kohya = super().to_kohya(tensors, scale, rank)
        down, up = kohya["lora_down.weight"], kohya["lora_up.weight"]
        magnitude = tensors["lora_magnitude_vector"].reshape(-1)
        if base_weight is not None:
            base = base_weight.double()
            delta = (up.flatten(1).double() @ down.flatten(1).double()
                     ).reshape(base.shape)
            magnitude = magnitude.double() * (
                row_norms(base) + COMFYUI_EPSILON) / row_norms(
                    base + scale * delta)
        kohya["dora_scale"] = magnitude.float().reshape(
            -1, *[1] * (down.ndim - 1))
        return kohya

    def owns_kohya(self, names):
        return AdapterKind.owns_kohya(self, names)

    def network_args(self, config, has_conv):
        return {**super().network_args(config, has_conv), "dora_wd": "True",
                "wd_on_output": "True"}


DORA = DoRA()
