"""SDXL's second text encoder in OpenCLIP's names, as its original
checkpoint holds it.

Stability AI trained SDXL with OpenCLIP's ViT-bigG text tower; its
checkpoint keeps that model's names under ``conditioner.embedders.1.model.``,
where transformers' ``CLIPTextModelWithProjection`` has other ones:

- each layer's query, key and value projections are one ``in_proj`` of
  ``torch.nn.MultiheadAttention`` (q, k, v stacked along the output rows);
- the position embedding is a bare ``positional_embedding`` tensor;
- ``text_projection`` is a bare matrix applied as ``x @ text_projection``,
  the transpose of the ``nn.Linear`` weight.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from diffengine.errors import ConfigError

# transformers' name → OpenCLIP's, for the weights outside the layers.
OPEN_CLIP_NAMES = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
# Layer modules, transformers' name → OpenCLIP's ``resblocks.<i>`` name.
OPEN_CLIP_LAYER_MODULES = {
    "layer_norm1": "ln_1", "layer_norm2": "ln_2",
    "self_attn.out_proj": "attn.out_proj",
    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
}
PROJECTIONS = ("q_proj", "k_proj", "v_proj")
LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)")


def open_clip_state_dict(
        state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenCLIP's names and shapes for a ``CLIPTextModelWithProjection``.

    Args:
        state_dict (Mapping[str, Tensor]): Its weights as published
            (``text_model.*`` and ``text_projection.weight``).

    Returns:
        dict[str, Tensor]: ``token_embedding.weight``,
        ``positional_embedding``, ``transformer.resblocks.<i>.*``,
        ``ln_final.*`` and ``text_projection``.

    Raises:
        ConfigError: If a weight has no OpenCLIP name.
    """
    converted: dict[str, torch.Tensor] = {}
    # layer → parameter ("weight"/"bias") → q/k/v projection → tensor
    attention: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    unknown = []
    for key, value in state_dict.items():
        if key in OPEN_CLIP_NAMES:
            converted[OPEN_CLIP_NAMES[key]] = value
            continue
        if key == "text_projection.weight":
            converted["text_projection"] = value.T.contiguous()
            continue
        match = LAYER.fullmatch(key)
        if match is None:
            unknown.append(key)
            continue
        index, module, param = match.groups()
        block = f"transformer.resblocks.{index}"
        projection = module.removeprefix("self_attn.")
        if projection in PROJECTIONS:
            attention.setdefault(block, {}).setdefault(param, {})[
                projection] = value
        elif module in OPEN_CLIP_LAYER_MODULES:
            converted[f"{block}.{OPEN_CLIP_LAYER_MODULES[module]}.{param}"] = (
                value)
        else:
            unknown.append(key)
    for block, params in attention.items():
        for param, projections in params.items():
            if set(projections) != set(PROJECTIONS):
                unknown.append(f"{block}.attn: only {sorted(projections)}")
                continue
            converted[f"{block}.attn.in_proj_{param}"] = torch.cat(
                [projections[p] for p in PROJECTIONS])
    if unknown:
        raise ConfigError(
            f"text_encoder_2: {len(unknown)} weights have no name in "
            f"OpenCLIP's layout of SDXL's checkpoint, e.g. {unknown[:3]}; "
            "save this model with --format diffusers.")
    return converted
