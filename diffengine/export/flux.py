"""Flux.1's transformer LoRA under Black Forest Labs' original module names.

kohya's sd-scripts (``networks/lora_flux.py``) trains Flux.1 on BFL's
model and names its modules ``lora_unet_`` + the original module
(``double_blocks_0_img_attn_qkv``, ``single_blocks_0_linear1``); ComfyUI
(``comfy/utils.py``: ``flux_to_diffusers``, and ``comfy/lora.py``) maps
``lora_unet_`` + every original weight, and diffusers' Flux loader reads
the same names. diffusers' ``FluxTransformer2DModel`` differs from that
layout in two ways that a LoRA must follow exactly:

- a double block projects queries, keys and values with one ``qkv``
  linear a stream, and a single block its q, k, v and MLP input with one
  ``linear1``; diffusers keeps them apart (``to_q``, ``to_k``, ``to_v``,
  ``add_*_proj``, ``proj_mlp``). Their LoRAs fuse as SD3's do (see
  :mod:`diffengine.export.mmdit`): ``lora_down`` the downs stacked,
  ``lora_up`` the ups block-diagonal, ``.alpha`` the strength × the fused
  rank, a projection not trained as zero blocks;
- the final modulation (``final_layer.adaLN_modulation.1``) emits shift
  then scale, diffusers' ``AdaLayerNormContinuous`` scale then shift: the
  two halves of the up's rows trade places.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from diffengine.export.mmdit import LoRATensors, original_kohya_modules

# Flux's MLP is 4 × the attention width (FluxTransformer2DModel fixes it).
MLP_RATIO = 4
# diffusers module → original module outside the blocks.
TOP_LEVEL = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
    "proj_out": "final_layer.linear",
}
# diffusers module → original module inside a double block.
DOUBLE = {
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.to_out.0": "img_attn.proj",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
# diffusers module → original module inside a single block.
SINGLE = {"proj_out": "linear2", "norm.linear": "modulation.lin"}
# diffusers module → (original fused projection, its slot).
DOUBLE_FUSED = {
    f"attn.{name}": (fused, slot)
    for names, fused in ((("to_q", "to_k", "to_v"), "img_attn.qkv"),
                         (("add_q_proj", "add_k_proj", "add_v_proj"),
                          "txt_attn.qkv"))
    for slot, name in enumerate(names)
}
SINGLE_FUSED = {name: ("linear1", slot) for slot, name in enumerate(
    ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"))}
BLOCK_PATTERN = re.compile(r"(single_)?transformer_blocks\.(\d+)\.(.+)")


def original_module(module: str) -> tuple[str, int | None]:
    """The original Flux module of a diffusers ``FluxTransformer2DModel``
    module, and its slot in a fused ``qkv`` or ``linear1`` (None for the
    others).

    Raises:
        ValueError: If the module has no original counterpart.
    """
    if module in TOP_LEVEL:
        return TOP_LEVEL[module], None
    match = BLOCK_PATTERN.fullmatch(module)
    if match:
        single, index, name = match.groups()
        block = f"{'single' if single else 'double'}_blocks.{index}"
        names, fused = (SINGLE, SINGLE_FUSED) if single else (
            DOUBLE, DOUBLE_FUSED)
        if name in names:
            return f"{block}.{names[name]}", None
        if name in fused:
            original, slot = fused[name]
            return f"{block}.{original}", slot
    raise ValueError(f"transformer module {module!r} has no name in the "
                     "original Flux layout.")


def slot_widths(original: str, slots: Mapping[int, LoRATensors]
                ) -> list[int]:
    """The output rows of each slot of a fused projection: q, k and v the
    attention width, a single block's MLP input :data:`MLP_RATIO` times
    it."""
    slot, tensors = next(iter(slots.items()))
    width = tensors["lora_up.weight"].shape[0]
    if original.endswith("linear1"):
        attention = width // MLP_RATIO if slot == 3 else width
        return [attention] * 3 + [MLP_RATIO * attention]
    return [width] * 3


def flux_kohya_modules(modules: Mapping[str, LoRATensors], prefix: str
                       ) -> dict[str, torch.Tensor]:
    """The LoRA of a ``FluxTransformer2DModel`` as kohya names the original
    Flux modules, ``qkv`` and ``linear1`` fused
    (:func:`~diffengine.export.mmdit.original_kohya_modules`)."""
    return original_kohya_modules(
        modules, prefix, original_module,
        lambda module, tensors: module == "norm_out.linear", slot_widths)
