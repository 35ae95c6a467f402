"""Write a step's adapters as one ``.safetensors`` file for other tools."""
from __future__ import annotations

import os

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import save_file

from diffengine.adapter_file import AdapterFile, read_adapter_file
from diffengine.adapters import DORA
from diffengine.adapters.formats import (
    ADAPTER_METADATA_KEY,
    DIFFUSERS_FILE,
    LYCORIS_FILE,
    file_format,
    pack_adapter_configs,
)
from diffengine.adapters.kohya import BaseWeights, module_path
from diffengine.errors import ConfigError
from diffengine.export.kohya import to_kohya
from diffengine.export.metadata import export_metadata
from diffengine.fileio import atomic_write
from diffengine.models.utils.dtypes import DTYPES

FORMATS = ("kohya", "diffusers")
# A LoRA up's suffix → its down's: peft's names, and diffusers' earlier ones.
UP_DOWN = {".lora_B.weight": ".lora_A.weight",
           ".lora.up.weight": ".lora.down.weight"}
# Whose reading of DoRA's ``dora_scale`` the kohya file is written for
# (see diffengine.adapters.dora).
DORA_READERS = ("comfyui", "lycoris")


def base_weights(base: str) -> BaseWeights:
    """The frozen weights of ``base`` (hub id or diffusers folder), by part
    and canonical module name."""
    pipe = DiffusionPipeline.from_pretrained(base)

    def weight(part: str, module: str) -> torch.Tensor:
        component = getattr(pipe, part)
        layer = component.get_submodule(module_path(component, module))
        return layer.weight.detach().float()

    return weight


def dora_base_weights(source: AdapterFile, base: str | None,
                      dora_reader: str) -> BaseWeights | None:
    """The base weights a DoRA kohya export needs for ``dora_reader``."""
    if dora_reader not in DORA_READERS:
        raise ConfigError(f"dora_reader={dora_reader!r}; choose one of "
                         f"{list(DORA_READERS)}.")
    if dora_reader != "comfyui" or not any(
            source.kind(part) is DORA for part in source.parts):
        return None
    base = base or source.training.get("base_model")
    if base is None:
        raise ConfigError(
            f"{source.path} is DoRA and records no base model; its "
            "dora_scale for ComfyUI depends on the base weights: pass --base "
            "(or --dora-reader lycoris).")
    return base_weights(base)


def at_strength_one(source: AdapterFile
                    ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """A diffusers-format file's tensors and adapter configs with each
    module's strength (alpha ÷ rank, ÷ √rank under rsLoRA) folded into its
    ``lora_B`` and the configs at strength 1 (``lora_alpha`` = ``r``,
    ``alpha_pattern`` = ``rank_pattern``, no rsLoRA).

    diffusers loads the same model from either; a loader that reads
    diffusers' names without an alpha (ComfyUI applies ``B·A`` at scale 1)
    loads the folded file at the trained strength. A part saved without a
    config, or with tensors other than the downs and ups (an embedding's,
    DoRA's magnitudes), is kept as it is.
    """
    state = source.state_dict
    tensors = dict(state)
    configs = dict(source.adapter_configs)
    for part, config in source.adapter_configs.items():
        prefix = f"{part}."
        names = [k[len(prefix):] for k in state if k.startswith(prefix)]
        ups = {name: name[:-len(up)] + down for name in names
               for up, down in UP_DOWN.items() if name.endswith(up)}
        if not ups or len(names) != 2 * len(ups):
            continue
        kind = source.kind(part)
        for up, down in ups.items():
            module = up.rsplit(".", 3 if ".lora." in up else 2)[0]
            weights = {"lora_A.weight": state[prefix + down],
                       "lora_B.weight": state[prefix + up]}
            tensors[prefix + up] = state[prefix + up] * kind.module_scale(
                config, module, weights)
        configs[part] = dict(config, lora_alpha=config["r"],
                             alpha_pattern=dict(config.get("rank_pattern")
                                                or {}),
                             use_rslora=False)
    return tensors, configs


def export_lora(lora: str,
                out: str,
                format: str = "kohya",
                title: str | None = None,
                dtype: str = "float32",
                base: str | None = None,
                dora_reader: str = "comfyui") -> dict[str, torch.Tensor]:
    """Export a step folder (or diffusers adapter file) to ``out``.

    Args:
        lora (str): ``work_dirs/<config>/step<N>`` or its step file.
        out (str): The ``.safetensors`` file to write.
        format (str): ``"kohya"`` (``lora_unet_*`` / ``lora_te_*`` keys,
            SDXL's ``lora_te1_*`` / ``lora_te2_*``, each kind's tensors with
            ``.alpha``, for A1111 and ComfyUI) or ``"diffusers"`` (the step
            file's keys, each module's strength folded into its up weights
            as :func:`at_strength_one` does, for ``load_lora_weights`` and
            for loaders that read diffusers' names without an alpha; LoRA
            and DoRA only). Defaults to "kohya".
        title (str, optional): The display name. Defaults to the file name
            of ``out`` without extension.
        dtype (str): ``float32``, ``float16`` or ``bfloat16`` weights.
            Defaults to "float32".
        base (str, optional): The base model, for DoRA's ``dora_scale``.
            Defaults to the one the step file records.
        dora_reader (str): ``"comfyui"`` writes ``dora_scale`` so that
            ComfyUI (and Forge) rebuild the trained weights; ``"lycoris"``
            writes peft's magnitudes, as LyCORIS reads them. Defaults to
            "comfyui".

    Returns:
        dict[str, Tensor]: The tensors written.
    """
    if format not in FORMATS:
        raise ConfigError(f"format={format!r}; choose one of {list(FORMATS)}.")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}; choose one of {list(DTYPES)}.")
    if not out.endswith(".safetensors"):
        raise ConfigError(f"out={out!r} must end with .safetensors.")
    source = read_adapter_file(lora)
    title = title or os.path.splitext(os.path.basename(out))[0]
    if format == "kohya":
        tensors = to_kohya(source, DTYPES[dtype],
                           dora_base_weights(source, base, dora_reader))
        metadata = {"format": "pt",
                    **export_metadata(source, title, tensors)}
        if file_format(source) is LYCORIS_FILE:
            # no other loader reads it; this project's loads with it
            metadata[ADAPTER_METADATA_KEY] = pack_adapter_configs(
                source.adapter_configs)
    else:
        if file_format(source) is not DIFFUSERS_FILE:
            kinds = "/".join(source.kind(part).name for part in source.parts)
            raise ConfigError(f"{source.path} holds {kinds}, which diffusers "
                             "does not read; use --format kohya.")
        tensors, configs = at_strength_one(source)
        tensors = {k: v.to(DTYPES[dtype]).contiguous()
                   for k, v in tensors.items()}
        metadata = {"format": "pt", **export_metadata(source, title)}
        if configs:
            metadata[ADAPTER_METADATA_KEY] = pack_adapter_configs(configs)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write(out, lambda tmp: save_file(tensors, tmp, metadata=metadata))
    return tensors
