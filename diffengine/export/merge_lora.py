"""Fuse a LoRA into its base and save a full model: a diffusers folder or
one original-layout checkpoint."""
from __future__ import annotations

import datetime
import os

from diffusers import DiffusionPipeline

from diffengine.errors import ConfigError
from diffengine.export.diffusers_folder import save_pipeline_folder
from diffengine.export.single_file import save_single_file, to_single_file
from diffengine.fileio import atomic_directory
from diffengine.inference import load_adapters
from diffengine.models.utils.dtypes import DTYPES
from diffengine.models.utils.model_folder import resolve_model
from diffengine.version import __version__

FORMATS = ("diffusers", "single-file")


def single_file_metadata(pipe: DiffusionPipeline, base: str, lora: str,
                         lora_scale: float, title: str) -> dict[str, str]:
    """``modelspec.*`` of a merged Stable Diffusion 1.x checkpoint."""
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    size = pipe.unet.config.sample_size * scale
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    base = resolve_model(base)
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": "stable-diffusion-v1",
        "modelspec.implementation":
        "https://github.com/CompVis/stable-diffusion",
        "modelspec.title": title,
        "modelspec.resolution": f"{size}x{size}",
        "modelspec.prediction_type": "v" if prediction == "v_prediction"
        else "epsilon",
        "modelspec.date": datetime.datetime.now().replace(
            microsecond=0).isoformat(),
        "modelspec.merged_from": f"{base}, {os.path.abspath(lora)}",
        "modelspec.description":
        f"{base} with a LoRA fused in at scale {lora_scale:g} by diffengine "
        f"{__version__}",
    }


def merge_lora(lora: str, base: str, out: str,
               lora_scale: float = 1.0,
               format: str = "diffusers",
               dtype: str = "float32") -> DiffusionPipeline:
    """Write ``base`` with ``lora`` fused in.

    ``format="diffusers"`` writes a model folder (SD 1.x or SDXL) that loads
    with ``DiffusionPipeline.from_pretrained(out)`` (every component of
    ``base`` saved, the safety checker included if it has one, the text
    encoders in their published key layout); ``"single-file"`` writes one
    ``.safetensors`` checkpoint in the original Stable Diffusion layout
    (``model.diffusion_model.*``, ``first_stage_model.*``,
    ``cond_stage_model.transformer.text_model.*``) for AUTOMATIC1111,
    ComfyUI's checkpoint loader and ``from_single_file``. Either is written
    whole or not at all.

    Args:
        lora (str): Step folder or adapter ``.safetensors`` file.
        base (str): Hub id or diffusers folder the LoRA was trained on.
        out (str): Output folder, or ``.safetensors`` file for
            ``"single-file"``.
        lora_scale (float): Strength fused in; 1 is as trained. Defaults
            to 1.
        format (str): ``"diffusers"`` or ``"single-file"``. Defaults to
            "diffusers".
        dtype (str): ``float32``, ``float16`` or ``bfloat16`` weights (the
            fusing itself is done in float32). Defaults to "float32".

    Returns:
        DiffusionPipeline: The merged pipeline as written (on the
        CPU, in ``dtype``).
    """
    if format not in FORMATS:
        raise ConfigError(f"format={format!r}; choose one of {list(FORMATS)}.")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r}; choose one of {list(DTYPES)}.")
    single = format == "single-file"
    if single != out.endswith(".safetensors"):
        raise ConfigError(
            f"out={out!r}: --format single-file writes one .safetensors "
            "file, --format diffusers a folder; name the output to match.")
    pipe = DiffusionPipeline.from_pretrained(base)
    load_adapters(pipe, lora, lora_scale).step_format.fuse(pipe)
    if dtype != "float32":
        pipe.to(DTYPES[dtype])
    if single:
        title = os.path.splitext(os.path.basename(out))[0]
        tensors = to_single_file(pipe.unet, pipe.vae, pipe.text_encoder)
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        save_single_file(tensors, out, single_file_metadata(
            pipe, base, lora, lora_scale, title))
        return pipe
    with atomic_directory(out) as tmp:
        save_pipeline_folder(pipe, tmp)
    return pipe
