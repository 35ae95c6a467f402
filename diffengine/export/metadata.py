"""safetensors metadata that A1111, ComfyUI and model browsers read.

``modelspec.*`` follows Stability AI's model spec (architecture, title,
resolution, date); ``ss_*`` are the kohya-ss keys that A1111 shows in its
LoRA cards (base model, rank, alpha, resolution, steps, images). The
``diffengine.*`` keys of the step file (base model, step, dataset, the
training config as JSON) are carried over as they are.
"""
from __future__ import annotations

import datetime
import os

from diffengine.lora_file import TRAINING_METADATA_PREFIX, LoRAFile
from diffengine.version import __version__


def lora_summary(lora: LoRAFile) -> dict[str, str]:
    """``diffengine.<part>.rank`` / ``.alpha`` for each part of the LoRA."""
    summary = {}
    for part in lora.parts:
        summary[f"{TRAINING_METADATA_PREFIX}{part}.rank"] = str(lora.rank(part))
        summary[f"{TRAINING_METADATA_PREFIX}{part}.alpha"] = _number(
            lora.alpha(part))
    return summary


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def export_metadata(lora: LoRAFile, title: str) -> dict[str, str]:
    """The metadata of an exported LoRA file.

    Args:
        lora (LoRAFile): The LoRA, with the training metadata of its step
            file (missing entries are left out).
        title (str): Shown as the LoRA's name (``modelspec.title``,
            ``ss_output_name``).

    Returns:
        dict[str, str]: ``modelspec.*``, ``ss_*`` and ``diffengine.*`` keys.
    """
    training = lora.training
    part = "unet" if "unet" in lora.parts else lora.parts[0]
    resolution = training.get("resolution")  # "WxH"
    date = datetime.datetime.fromtimestamp(
        os.path.getmtime(lora.path)).replace(microsecond=0).isoformat()
    prediction = training.get("prediction_type", "epsilon")
    metadata = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.implementation": "diffusers",
        "modelspec.title": title,
        "modelspec.date": date,
        "modelspec.prediction_type": "v" if prediction == "v_prediction"
        else "epsilon",
        "modelspec.description": f"LoRA trained with diffengine {__version__}",
        "ss_base_model_version": "sd_v1",
        "ss_v2": "False",
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(lora.rank(part)),
        "ss_network_alpha": _number(lora.alpha(part)),
        "ss_output_name": title,
        "ss_training_comment": f"diffengine {__version__}",
    }
    optional = {
        "modelspec.resolution": resolution,
        "ss_resolution": "({}, {})".format(*resolution.split("x"))
        if resolution else None,
        "ss_sd_model_name": training.get("base_model"),
        "ss_steps": training.get("step"),
        "ss_max_train_steps": training.get("max_steps"),
        "ss_epoch": training.get("epoch"),
        "ss_num_train_images": training.get("num_train_images"),
        "ss_seed": training.get("seed"),
    }
    metadata.update({k: v for k, v in optional.items() if v is not None})
    metadata.update({f"{TRAINING_METADATA_PREFIX}{k}": v
                     for k, v in training.items()})
    metadata.update(lora_summary(lora))
    return metadata
