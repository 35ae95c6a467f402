"""SD3's transformer LoRA under the original MMDiT module names.

kohya's sd-scripts trains SD3 on Stability AI's MMDiT and names its modules
``lora_unet_`` + the original module (``joint_blocks_0_x_block_attn_qkv``);
ComfyUI (``comfy/lora.py``: ``model_lora_keys_unet``) maps ``lora_unet_`` +
every weight of its MMDiT, and Forge reads the same names. diffusers'
``SD3Transformer2DModel`` differs from that layout in two ways that a LoRA
must follow exactly:

- the original attention projects queries, keys and values with one
  ``qkv`` linear, diffusers with three (``to_q``, ``to_k``, ``to_v``; the
  text stream's ``add_q_proj`` ...). Their LoRAs fuse into one of rank
  3r: ``lora_down`` is the three downs stacked, ``lora_up`` the three ups
  block-diagonal, and ``.alpha`` is the strength × 3r, so that alpha ÷ rank
  keeps each one's strength (an up is rescaled where q, k and v were
  trained at different strengths; a projection not trained gets zero
  blocks);
- the original final modulation (``final_layer.adaLN_modulation.1``, and
  the last block's text-stream one, whose stream ends there) emits shift
  then scale, diffusers' ``AdaLayerNormContinuous`` scale then shift: the
  two halves of the up's rows trade places.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping

import torch

from diffengine.adapters.kohya import kohya_name

# diffusers module → original module outside the blocks.
TOP_LEVEL = {
    "pos_embed.proj": "x_embedder.proj",
    "context_embedder": "context_embedder",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "norm_out.linear": "final_layer.adaLN_modulation.1",
    "proj_out": "final_layer.linear",
}
# diffusers module → original module inside ``transformer_blocks.<i>`` /
# ``joint_blocks.<i>``.
BLOCK = {
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn2.to_out.0": "x_block.attn2.proj",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
# diffusers module → (original fused projection, its slot: q 0, k 1, v 2).
BLOCK_QKV = {
    f"{attention}.{name}": (f"{stream}.qkv", slot)
    for attention, names, stream in (
        ("attn", ("to_q", "to_k", "to_v"), "x_block.attn"),
        ("attn", ("add_q_proj", "add_k_proj", "add_v_proj"),
         "context_block.attn"),
        ("attn2", ("to_q", "to_k", "to_v"), "x_block.attn2"))
    for slot, name in enumerate(names)
}
BLOCK_PATTERN = re.compile(r"transformer_blocks\.(\d+)\.(.+)")
# The kohya tensors of one LoRA module.
LoRATensors = Mapping[str, torch.Tensor]


def original_module(module: str) -> tuple[str, int | None]:
    """The original MMDiT module of a diffusers ``SD3Transformer2DModel``
    module, and the slot of a query, key or value projection in its fused
    ``qkv`` (None for the others).

    Raises:
        ValueError: If the module has no original counterpart.
    """
    if module in TOP_LEVEL:
        return TOP_LEVEL[module], None
    match = BLOCK_PATTERN.fullmatch(module)
    if match:
        block, name = f"joint_blocks.{match[1]}", match[2]
        if name in BLOCK:
            return f"{block}.{BLOCK[name]}", None
        if name in BLOCK_QKV:
            fused, slot = BLOCK_QKV[name]
            return f"{block}.{fused}", slot
    raise ValueError(f"transformer module {module!r} has no name in the "
                     "original MMDiT layout.")


def swaps_shift_and_scale(module: str, tensors: LoRATensors) -> bool:
    """Whether the module is an ``AdaLayerNormContinuous`` linear (scale,
    shift) whose original emits (shift, scale): the final one, and a text
    stream's last, which alone emits 2 rather than 6 vectors a token."""
    down, up = tensors["lora_down.weight"], tensors["lora_up.weight"]
    return module == "norm_out.linear" or (
        module.endswith("norm1_context.linear")
        and up.shape[0] == 2 * down.shape[1])


def swap_halves(up: torch.Tensor) -> torch.Tensor:
    """The up-projection with the two halves of its rows traded."""
    first, second = up.chunk(2, dim=0)
    return torch.cat([second, first])


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


def qkv_widths(original: str, slots: Mapping[int, LoRATensors]
               ) -> list[int]:
    """The output rows of q, k and v in a fused ``qkv``: the attention
    width each."""
    return [next(iter(slots.values()))["lora_up.weight"].shape[0]] * 3


def original_kohya_modules(
        modules: Mapping[str, LoRATensors], prefix: str,
        original_module: Callable[[str], tuple[str, int | None]],
        swaps_halves: Callable[[str, LoRATensors], bool],
        widths: Callable[[str, Mapping[int, LoRATensors]], list[int]],
) -> dict[str, torch.Tensor]:
    """A transformer's LoRA as kohya names the modules of its original
    layout.

    Args:
        modules (Mapping[str, Mapping[str, Tensor]]): The kohya tensors
            (``lora_down.weight``, ``lora_up.weight``, ``alpha``) of each
            diffusers module (``transformer_blocks.0.attn.to_q``).
        prefix (str): The kohya prefix of the transformer, ``lora_unet_``.
        original_module (Callable): The original module of a diffusers
            module and its slot in a fused projection (None if unfused).
        swaps_halves (Callable): Whether a module's up trades the halves
            of its rows (shift and scale).
        widths (Callable): The output rows of each slot of a fused
            projection.

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
        if swaps_halves(module, tensors):
            tensors = dict(tensors, **{
                "lora_up.weight": swap_halves(tensors["lora_up.weight"])})
        renamed[original] = tensors
    for original, slots in fused.items():
        renamed[original] = fuse(slots, widths(original, slots))
    return {f"{kohya_name(prefix, original)}.{key}": value.contiguous()
            for original, tensors in sorted(renamed.items())
            for key, value in tensors.items()}


def mmdit_kohya_modules(modules: Mapping[str, LoRATensors], prefix: str
                        ) -> dict[str, torch.Tensor]:
    """The LoRA of an ``SD3Transformer2DModel`` as kohya names the original
    MMDiT's modules, q, k and v fused into their ``qkv``
    (:func:`original_kohya_modules`)."""
    return original_kohya_modules(modules, prefix, original_module,
                                  swaps_shift_and_scale, qkv_widths)
