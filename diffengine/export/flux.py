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

from diffengine.adapters.kohya import kohya_name
from diffengine.export.mmdit import LoRATensors, swap_halves

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


def fuse(slots: Mapping[int, LoRATensors], widths: list[int]
         ) -> dict[str, torch.Tensor]:
    """One LoRA of a fused projection from those of its parts (by slot;
    some may be missing), exactly.

    Each slot takes r rows of ``lora_down`` (r the largest rank, a smaller
    one padded with zero rows) and its ``widths[slot]`` rows of
    ``lora_up``, in the columns of those rows; the alpha is the first
    slot's strength × the fused rank and each other up is multiplied by its
    strength ÷ that one.
    """
    first = slots[min(slots)]
    in_features = first["lora_down.weight"].shape[1]
    rank = max(t["lora_down.weight"].shape[0] for t in slots.values())

    def strength(tensors: LoRATensors) -> float:
        return tensors["alpha"].item() / tensors["lora_down.weight"].shape[0]

    scale = strength(first)
    dtype = first["lora_down.weight"].dtype
    down = torch.zeros(len(widths) * rank, in_features, dtype=dtype)
    up = torch.zeros(sum(widths), len(widths) * rank, dtype=dtype)
    starts = [sum(widths[:slot]) for slot in range(len(widths))]
    for slot, tensors in slots.items():
        slot_down, slot_up = (tensors["lora_down.weight"],
                              tensors["lora_up.weight"])
        if strength(tensors) != scale:
            slot_up = slot_up * (strength(tensors) / scale)
        r = slot_down.shape[0]
        down[slot * rank:slot * rank + r] = slot_down
        up[starts[slot]:starts[slot] + widths[slot],
           slot * rank:slot * rank + r] = slot_up
    return {"lora_down.weight": down, "lora_up.weight": up,
            "alpha": torch.tensor(scale * len(widths) * rank,
                                  dtype=torch.float32)}


def flux_kohya_modules(modules: Mapping[str, LoRATensors], prefix: str
                       ) -> dict[str, torch.Tensor]:
    """The LoRA of a ``FluxTransformer2DModel`` as kohya names the original
    Flux modules.

    Args:
        modules (Mapping[str, Mapping[str, Tensor]]): The kohya tensors
            (``lora_down.weight``, ``lora_up.weight``, ``alpha``) of each
            diffusers module (``transformer_blocks.0.attn.to_q``).
        prefix (str): The kohya prefix of the transformer, ``lora_unet_``.

    Returns:
        dict[str, Tensor]: ``<prefix><original module>.<tensor>``, with
        the fused projections fused.

    Raises:
        ValueError: If a module has no original counterpart.
    """
    renamed: dict[str, LoRATensors] = {}
    fused: dict[str, dict[int, LoRATensors]] = {}
    for module, tensors in modules.items():
        original, slot = original_module(module)
        if slot is not None:
            fused.setdefault(original, {})[slot] = tensors
            continue
        if module == "norm_out.linear":
            tensors = dict(tensors, **{
                "lora_up.weight": swap_halves(tensors["lora_up.weight"])})
        renamed[original] = tensors
    for original, slots in fused.items():
        renamed[original] = fuse(slots, slot_widths(original, slots))
    return {f"{kohya_name(prefix, original)}.{key}": value.contiguous()
            for original, tensors in sorted(renamed.items())
            for key, value in tensors.items()}
