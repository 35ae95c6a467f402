"""diffusers-format LoRA weights → kohya-ss format (A1111, ComfyUI).

Keys become ``lora_unet_<module>`` and ``lora_te_<module>`` (SDXL:
``lora_te1_`` and ``lora_te2_``; dots turned into underscores) with
``.lora_down.weight``, ``.lora_up.weight`` and a scalar ``.alpha``; the
loaders apply ``up @ down * alpha / rank``. UNet modules keep diffusers'
names, which ComfyUI maps for every UNet and A1111 maps with the
three-blocks-a-level layout that SD 1.x and SDXL share. The key renaming is
diffusers' own (``convert_*_to_peft``, then ``convert_state_dict_to_kohya``);
two things are fixed after it:

- diffusers names the text encoder ``lora_te1_`` (SDXL's first encoder);
  SD 1.x LoRAs use ``lora_te_``, which A1111 requires for SD 1.x.
- diffusers writes ``alpha = rank`` whatever was trained; here alpha is
  the trained strength × rank, so ``lora_alpha != r`` (and ``alpha_pattern``,
  ``rank_pattern``, rsLoRA) load at the strength they were trained at.
"""
from __future__ import annotations

import math

import torch
from diffusers.utils.state_dict_utils import (
    StateDictType,
    convert_state_dict_to_kohya,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)
from peft.utils.other import get_pattern_key

from diffengine.export.architectures import architecture_of
from diffengine.lora_file import LoRAFile


def to_peft(lora: LoRAFile) -> dict[str, torch.Tensor]:
    """The weights with peft keys: ``<part>.<module>.lora_{A,B}.weight``."""
    architecture = architecture_of(lora)
    unknown = [p for p in lora.parts if p not in architecture.kohya_prefixes]
    if unknown:
        raise ValueError(
            f"{lora.path}: parts {unknown} are not {architecture.name}'s "
            f"{sorted(architecture.kohya_prefixes)}.")
    unet = {k: v for k, v in lora.state_dict.items() if k.startswith("unet.")}
    text = {}
    for key, value in lora.state_dict.items():
        part, name = key.split(".", 1)
        if part != "unet":
            # transformers 5.x drops ``text_model``; the kohya names keep it.
            if not name.startswith("text_model."):
                key = f"{part}.text_model.{name}"
            text[key] = value
    peft = convert_unet_state_dict_to_peft(unet)
    if text:
        peft.update(convert_state_dict_to_peft(
            text, original_type=StateDictType.DIFFUSERS))
    odd = [k for k in peft
           if not k.endswith((".lora_A.weight", ".lora_B.weight"))]
    if odd:
        raise ValueError(
            f"{lora.path}: only plain LoRA (lora_A/lora_B weights) converts to "
            f"kohya format; these keys do not: {odd[:5]}.")
    return peft


def module_strength(config: dict | None, module: str, rank: int) -> float:
    """The factor peft applies to ``up @ down`` of ``module``.

    Args:
        config (dict, optional): peft ``LoraConfig`` fields of the part;
            None means none was saved, which diffusers loads at strength 1.
        module (str): The module's name in its part, e.g.
            ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``.
        rank (int): The module's rank, as in the weights.
    """
    if config is None:
        return 1.0
    alpha = config["lora_alpha"]
    patterns = config.get("alpha_pattern") or {}
    names = [module]
    if module.startswith("text_model."):  # peft saw it without, on 5.x
        names.append(module[len("text_model."):])
    for name in names:
        key = get_pattern_key(patterns.keys(), name)
        if key in patterns:
            alpha = patterns[key]
            break
    if config.get("use_rslora"):
        return alpha / math.sqrt(rank)
    return alpha / rank


def to_kohya(lora: LoRAFile,
             dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Convert a diffengine LoRA to kohya-ss keys with per-module alpha.

    Args:
        lora (LoRAFile): The LoRA, as :func:`read_lora_file` returns it.
        dtype (torch.dtype): Of the weights; alphas stay float32. Defaults
            to float32.

    Returns:
        dict[str, Tensor]: ``<name>.lora_down.weight``,
        ``<name>.lora_up.weight`` and ``<name>.alpha`` for every module.
    """
    peft = to_peft(lora)
    prefixes = architecture_of(lora).kohya_prefixes
    kohya: dict[str, torch.Tensor] = {}
    for key in peft:
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[:-len(".lora_A.weight")]
        part, name = module.split(".", 1)
        down, up = peft[key], peft[f"{module}.lora_B.weight"]
        # One module at a time, so that each kohya name is known to come
        # from ``module``.
        converted = convert_state_dict_to_kohya({
            f"{module}.lora_A.weight": down, f"{module}.lora_B.weight": up})
        converted.pop(next(k for k in converted if k.endswith(".alpha")))
        kohya_name = next(iter(converted)).split(".")[0]
        if part == "text_encoder":
            kohya_name = kohya_name.replace("lora_te1_", prefixes[part], 1)
        if not kohya_name.startswith(prefixes[part]):
            raise ValueError(f"{module!r} converted to {kohya_name!r}.")
        rank = down.shape[0]
        strength = module_strength(lora.adapter_configs.get(part), name, rank)
        kohya[f"{kohya_name}.lora_down.weight"] = down.to(dtype).contiguous()
        kohya[f"{kohya_name}.lora_up.weight"] = up.to(dtype).contiguous()
        kohya[f"{kohya_name}.alpha"] = torch.tensor(strength * rank,
                                                    dtype=torch.float32)
    return kohya
