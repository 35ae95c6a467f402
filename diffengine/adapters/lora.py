"""LoRA (Hu et al., 2021): ΔW = B A × alpha / r on linear layers and
convolutions (LoCon: A is a convolution with the layer's kernel, B a 1×1).

Step folders hold diffusers' ``pytorch_lora_weights.safetensors``; the
kohya form is ``lora_down.weight`` (A), ``lora_up.weight`` (B) and
``alpha`` = strength × rank, which ComfyUI and AUTOMATIC1111 divide by the
rank of ``lora_down`` (``up @ down × alpha / rank``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from peft import LoraConfig

from diffengine.adapters.base import (
    DIFFUSERS_WEIGHT_NAME,
    AdapterKind,
    pattern_value,
)


class LoRA(AdapterKind):
    """peft's ``LoraConfig`` without DoRA."""

    name = "LoRA"
    config_class = LoraConfig
    peft_type = "LORA"
    alpha_option = "lora_alpha"
    parameters = ("lora_A.weight", "lora_B.weight")
    kohya_keys = ("lora_down.weight", )
    weight_name = DIFFUSERS_WEIGHT_NAME
    network_module = "networks.lora"
    # kohya's and older diffengine's names for peft's options
    aliases: ClassVar[Mapping[str, str]] = {
        "rank": "r", "alpha": "lora_alpha", "network_dim": "r",
        "network_alpha": "lora_alpha", "dropout": "lora_dropout",
        "target": "target_modules"}
    # as diffusers' LoRA training scripts: A gaussian, B zero
    defaults: ClassVar[Mapping[str, Any]] = {"init_lora_weights": "gaussian"}

    def matches(self, config: Mapping) -> bool:
        return super().matches(config) and not config.get("use_dora")

    def module_scale(self, config, module, tensors):
        if config is None or not config.get("use_rslora"):
            return super().module_scale(config, module, tensors)
        # rsLoRA (Kalajdzievski, 2023): alpha / sqrt(r)
        rank = self.module_rank(config, module, tensors)
        alpha = pattern_value(config.get("alpha_pattern"), module,
                              config["lora_alpha"])
        return alpha / math.sqrt(rank)

    def tensor_rank(self, tensors):
        return tensors["lora_A.weight"].shape[0]

    def to_kohya(self, tensors, scale, rank, base_weight=None):
        down = tensors["lora_A.weight"]
        return {"lora_down.weight": down,
                "lora_up.weight": tensors["lora_B.weight"],
                "alpha": torch.tensor(scale * down.shape[0],
                                      dtype=torch.float32)}

    def kohya_rank(self, tensors):
        return tensors["lora_down.weight"].shape[0]

    def owns_kohya(self, names):
        names = set(names)
        return "lora_down.weight" in names and "dora_scale" not in names

    def network_args(self, config, has_conv):
        # kohya's own networks.lora takes LoCon as conv_dim / conv_alpha
        args = super().network_args(config, has_conv)
        if config.get("use_rslora"):
            args["rs_lora"] = "True"
        return args


LORA = LoRA()
