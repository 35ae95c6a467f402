"""Write a step's LoRA as one ``.safetensors`` file for other tools."""
from __future__ import annotations

import json
import os

import torch
from safetensors.torch import save_file

from diffengine.export.kohya import to_kohya
from diffengine.export.metadata import export_metadata
from diffengine.lora_file import ADAPTER_METADATA_KEY, read_lora_file
from diffengine.models.utils.dtypes import DTYPES

FORMATS = ("kohya", "diffusers")


def export_lora(lora: str,
                out: str,
                format: str = "kohya",
                title: str | None = None,
                dtype: str = "float32") -> dict[str, torch.Tensor]:
    """Export a step folder (or diffusers LoRA file) to ``out``.

    Args:
        lora (str): ``work_dirs/<config>/step<N>`` or its
            ``pytorch_lora_weights.safetensors``.
        out (str): The ``.safetensors`` file to write.
        format (str): ``"kohya"`` (``lora_unet_*`` / ``lora_te_*`` keys,
            SDXL's ``lora_te1_*`` / ``lora_te2_*``, with ``.alpha``, for
            A1111 and ComfyUI) or ``"diffusers"`` (the step
            file's keys and adapter configs, for ``load_lora_weights``).
            Defaults to "kohya".
        title (str, optional): The LoRA's display name. Defaults to the file
            name of ``out`` without extension.
        dtype (str): ``float32``, ``float16`` or ``bfloat16`` weights.
            Defaults to "float32".

    Returns:
        dict[str, Tensor]: The tensors written.
    """
    if format not in FORMATS:
        raise ValueError(f"format={format!r}; choose one of {list(FORMATS)}.")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}; choose one of {list(DTYPES)}.")
    if not out.endswith(".safetensors"):
        raise ValueError(f"out={out!r} must end with .safetensors.")
    source = read_lora_file(lora)
    title = title or os.path.splitext(os.path.basename(out))[0]
    metadata = {"format": "pt", **export_metadata(source, title)}
    if format == "kohya":
        tensors = to_kohya(source, DTYPES[dtype])
    else:
        tensors = {k: v.to(DTYPES[dtype]).contiguous()
                   for k, v in source.state_dict.items()}
        if source.adapter_configs:
            metadata[ADAPTER_METADATA_KEY] = json.dumps({
                f"{part}.{option}": value
                for part, config in source.adapter_configs.items()
                for option, value in config.items()
            })
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_file(tensors, out, metadata=metadata)
    return tensors
