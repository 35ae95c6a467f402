"""Module names and tensors in the kohya/LyCORIS single-file form.

A module is named by its part's prefix (``lora_unet_``, ``lora_te_``; SDXL's
``lora_te1_`` / ``lora_te2_``) and its diffusers module name with dots
turned into underscores, as kohya's scripts and LyCORIS name them and as
ComfyUI and AUTOMATIC1111 map them onto their own model. Text-encoder
modules are named under ``text_model`` (``lora_te_text_model_encoder_...``)
even where transformers 5.x leaves that level out.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from diffengine.adapters.base import TEXT_MODEL, AdapterPart

# The frozen weight of (part, module), for kinds whose file form needs it.
BaseWeights = Callable[[str, str], torch.Tensor]


def kohya_name(prefix: str, module: str) -> str:
    """``lora_unet_down_blocks_0_...`` for ``down_blocks.0....``."""
    return prefix + module.replace(".", "_")


def is_text_encoder(part: str) -> bool:
    return part.startswith("text_encoder")


def canonical_name(part: str, name: str) -> str:
    """A module's name as kohya files and older transformers know it."""
    if is_text_encoder(part) and not name.startswith(TEXT_MODEL):
        return TEXT_MODEL + name
    return name


def canonical_text_encoder_keys(state_dict: Mapping) -> dict:
    """Name text-encoder keys as ``text_model.encoder.layers.N...``.

    transformers 5.x ``CLIPTextModel`` has no ``text_model`` submodule; every
    other stack (transformers 4.x, A1111, ComfyUI) names the layers under it,
    and diffusers loads that form on both.
    """
    return {canonical_name("text_encoder", k): v for k, v in state_dict.items()}


def module_path(module: nn.Module, name: str) -> str:
    """The name of a canonically named submodule inside ``module``."""
    if name.startswith(TEXT_MODEL) and not hasattr(module, "text_model"):
        return name[len(TEXT_MODEL):]
    return name


def kohya_names(part: str, module: nn.Module, prefix: str) -> dict[str, str]:
    """kohya name → name inside ``module`` of each of its submodules."""
    return {kohya_name(prefix, canonical_name(part, name)): name
            for name, _ in module.named_modules() if name}


def kohya_modules(state_dict: Mapping[str, torch.Tensor]
                  ) -> dict[str, dict[str, torch.Tensor]]:
    """A kohya file's tensors by module: ``{name: {"alpha": ..., ...}}``."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        name, tensor = key.split(".", 1)
        modules.setdefault(name, {})[tensor] = value
    return modules


def kohya_state_dict(parts: Mapping[str, AdapterPart],
                     prefixes: Mapping[str, str],
                     base_weights: BaseWeights | None = None
                     ) -> dict[str, torch.Tensor]:
    """The adapters of ``parts`` as one kohya/LyCORIS state dict.

    Args:
        parts (Mapping[str, AdapterPart]): The adapter of each part.
        prefixes (Mapping[str, str]): The kohya prefix of each part.
        base_weights (BaseWeights, optional): The frozen weights, for kinds
            whose file form depends on them (DoRA's ``dora_scale``).

    Returns:
        dict[str, Tensor]: ``<kohya name>.<tensor>`` for every module, each
        with a float32 scalar ``.alpha``.

    Raises:
        ValueError: If a part has no prefix or a tensor belongs to no module
            of its part's kind.
    """
    unknown = [p for p in parts if p not in prefixes]
    if unknown:
        raise ValueError(f"parts {unknown} have no kohya prefix; known: "
                         f"{sorted(prefixes)}.")
    kohya: dict[str, torch.Tensor] = {}
    for part, adapter in parts.items():
        kind = adapter.kind
        for module, tensors in adapter.modules().items():
            rank = kind.module_rank(adapter.config, module, tensors)
            scale = kind.module_scale(adapter.config, module, tensors)
            base = base_weights(part, module) if base_weights else None
            name = kohya_name(prefixes[part], module)
            for key, value in kind.to_kohya(tensors, scale, rank,
                                            base).items():
                kohya[f"{name}.{key}"] = value.contiguous()
    return kohya
