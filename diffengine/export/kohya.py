"""Step files → the kohya/LyCORIS single file (A1111, ComfyUI).

Keys become ``lora_unet_<module>`` and ``lora_te_<module>`` (SDXL:
``lora_te1_`` and ``lora_te2_``; dots turned into underscores), each module
with its kind's tensors (``lora_down.weight`` / ``lora_up.weight``, DoRA's
``dora_scale``, LoHa's ``hada_*``, LoKr's ``lokr_*``; see
:mod:`diffengine.adapters`) and a scalar ``.alpha``. UNet modules keep
diffusers' names, which ComfyUI maps for every UNet and A1111 maps with the
three-blocks-a-level layout that SD 1.x and SDXL share. Two things differ
from diffusers' own ``convert_state_dict_to_kohya``:

- diffusers names the text encoder ``lora_te1_`` (SDXL's first encoder);
  SD 1.x LoRAs use ``lora_te_``, which A1111 requires for SD 1.x.
- diffusers writes ``alpha = rank`` whatever was trained; here alpha is
  the trained strength × rank, so ``lora_alpha != r`` (and ``alpha_pattern``,
  ``rank_pattern``, rsLoRA) load at the strength they were trained at.

A LoHa or LoKr step file already is such a file and is copied.

SD3 and SD3.5 transformers are written under the original MMDiT names that
sd-scripts writes and ComfyUI maps, q, k and v fused (see
:mod:`diffengine.export.mmdit`); their CLIP-L and CLIP-G under
``lora_te1_`` / ``lora_te2_`` as SDXL's. Flux.1's transformer is written
under Black Forest Labs' names, its fused projections fused the same way
(see :mod:`diffengine.export.flux`), its CLIP-L under ``lora_te1_``. Only
LoRA is written for them.
"""
from __future__ import annotations

import torch
from diffusers.utils.state_dict_utils import (
    StateDictType,
    convert_state_dict_to_peft,
    convert_unet_state_dict_to_peft,
)

from diffengine.adapter_file import AdapterFile
from diffengine.adapters import LORA, AdapterPart
from diffengine.adapters.formats import DIFFUSERS_FILE, MAGNITUDE, file_format
from diffengine.adapters.kohya import BaseWeights, kohya_state_dict
from diffengine.architectures import (
    Architecture,
    architecture_of,
    is_flux,
    is_sd3,
)
from diffengine.errors import ConfigError
from diffengine.export.flux import flux_kohya_modules
from diffengine.export.mmdit import mmdit_kohya_modules
from diffengine.progress import progress_bar

# The parts that hold a family's denoiser.
DENOISERS = ("unet", "transformer")


def fuses_projections(architecture: Architecture) -> bool:
    """Whether the family's kohya file fuses diffusers' separate
    projections (SD3's MMDiT, Flux.1): only LoRA is written for it."""
    return is_sd3(architecture) or is_flux(architecture)


def _peft_name(key: str) -> str:
    # text-encoder DoRA magnitudes are saved with ``.weight`` (see
    # diffengine.adapters.formats); peft names them without
    if key.endswith(f".{MAGNITUDE}.weight"):
        return key[:-len(".weight")]
    return key


def to_peft(lora: AdapterFile) -> dict[str, AdapterPart]:
    """The adapters of a diffusers-format file with peft's names,
    ``<module>.lora_A.weight``, by part.

    Files of earlier versions (diffusers' ``lora.down.weight``) are renamed
    as diffusers' loader renames them.

    Raises:
        ValueError: If a part is not one of its family's, or a tensor is
            not a weight of the part's kind.
    """
    architecture = architecture_of(lora)
    unknown = [p for p in lora.parts if p not in architecture.kohya_prefixes]
    if unknown:
        raise ConfigError(
            f"{lora.path}: parts {unknown} are not {architecture.name}'s "
            f"{sorted(architecture.kohya_prefixes)}.")
    denoiser = {k: v for k, v in lora.state_dict.items()
                if k.split(".", 1)[0] in DENOISERS}
    text = {}
    for key, value in lora.state_dict.items():
        part, name = key.split(".", 1)
        if part not in DENOISERS:
            # transformers 5.x drops ``text_model``; the kohya names keep it.
            if not name.startswith("text_model."):
                key = f"{part}.text_model.{name}"
            text[_peft_name(key)] = value
    peft = convert_unet_state_dict_to_peft(denoiser)
    if text:
        peft.update(convert_state_dict_to_peft(
            text, original_type=StateDictType.DIFFUSERS))
    parts = {}
    for part in sorted(lora.parts, key=lambda p: (p not in DENOISERS, p)):
        prefix = f"{part}."
        state = {k[len(prefix):]: v for k, v in peft.items()
                 if k.startswith(prefix)}
        parts[part] = AdapterPart(lora.kind(part),
                                  lora.adapter_configs.get(part), state)
    return parts


def to_kohya(lora: AdapterFile,
             dtype: torch.dtype = torch.float32,
             base_weights: BaseWeights | None = None
             ) -> dict[str, torch.Tensor]:
    """Convert a diffengine step file to kohya-ss keys with per-module alpha.

    Args:
        lora (AdapterFile): The file, as :func:`read_adapter_file` returns it.
        dtype (torch.dtype): Of the weights; alphas stay float32. Defaults
            to float32.
        base_weights (BaseWeights, optional): The base model's weight of
            (part, module), from which DoRA's ``dora_scale`` is written for
            ComfyUI's reading (see :mod:`diffengine.adapters.dora`). None
            writes peft's magnitudes, as LyCORIS reads them.

    Returns:
        dict[str, Tensor]: ``<name>.<tensor>`` and ``<name>.alpha`` for
        every module.

    Raises:
        ValueError: If the file has parts or tensors no kohya file holds.
    """
    architecture = architecture_of(lora)
    if fuses_projections(architecture):
        check_fused_kinds(lora)
    if lora.is_kohya:
        tensors = dict(lora.state_dict)
    else:
        parts = to_peft(lora)
        try:
            if fuses_projections(architecture):
                tensors = fused_kohya_state_dict(parts, architecture)
            else:
                tensors = kohya_state_dict(
                    parts, architecture.kohya_prefixes, base_weights)
        except ValueError as error:
            raise ConfigError(f"{lora.path}: {error}") from error
    converted = {}
    with progress_bar(total=len(tensors), desc="kohya file",
                  unit="tensor") as bar:
        for key, value in tensors.items():
            converted[key] = (value.float() if key.endswith(".alpha")
                              else value.to(dtype))
            bar.update()
    return converted


def check_fused_kinds(lora: AdapterFile) -> None:
    """Refuse an SD3 or Flux.1 file with adapters other than LoRA: DoRA's
    magnitudes and LoHa's and LoKr's products do not fuse into the original
    ``qkv`` exactly."""
    architecture = architecture_of(lora)
    family = "Flux.1" if is_flux(architecture) else "SD3"
    for part in lora.parts:
        kind = lora.kind(part)
        if kind is not LORA:
            use = ("--format diffusers (the step file's own format, which "
                   "diffusers' load_lora_weights reads)"
                   if file_format(lora) is DIFFUSERS_FILE else
                   "the step folder itself, which diffengine loads")
            raise ConfigError(
                f"{lora.path}: {part} is {kind.name}, which has no kohya "
                f"form for {family} (only LoRA fuses into the original qkv "
                f"exactly); use {use}.")


def fused_kohya_state_dict(parts: dict[str, AdapterPart],
                         architecture: Architecture
                         ) -> dict[str, torch.Tensor]:
    """The kohya tensors of an SD3 or Flux.1 LoRA: the transformer's under
    the original MMDiT or Flux names, the text encoders' as for SDXL."""
    prefixes = architecture.kohya_prefixes
    tensors = {}
    if "transformer" in parts:
        adapter = parts["transformer"]
        modules = {}
        for module, weights in adapter.modules().items():
            rank = LORA.module_rank(adapter.config, module, weights)
            scale = LORA.module_scale(adapter.config, module, weights)
            modules[module] = LORA.to_kohya(weights, scale, rank)
        original_names = (flux_kohya_modules if is_flux(architecture)
                          else mmdit_kohya_modules)
        tensors = original_names(modules, prefixes["transformer"])
    text = {part: adapter for part, adapter in parts.items()
            if part != "transformer"}
    tensors.update(kohya_state_dict(text, prefixes))
    return tensors
