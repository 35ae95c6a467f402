"""Fuse a LoRA into its base and save a full model: a diffusers folder or
one original-layout checkpoint."""
from __future__ import annotations

import datetime
import os

from diffusers import DiffusionPipeline, UNet2DConditionModel
from tqdm import tqdm

from diffengine.adapters.formats import file_format
from diffengine.errors import ConfigError
from diffengine.export.diffusers_folder import save_pipeline_folder
from diffengine.export.single_file import (
    save_single_file,
    single_file_layout,
    to_single_file,
)
from diffengine.fileio import atomic_directory
from diffengine.inference import denoiser_of, load_adapters
from diffengine.models.utils.dtypes import DTYPES
from diffengine.models.utils.model_folder import resolve_model
from diffengine.progress import progress_bar
from diffengine.version import __version__

FORMATS = ("diffusers", "single-file")
# modelspec's architecture and implementation of each single-file layout.
MODELSPEC = {
    "sd1": ("stable-diffusion-v1",
            "https://github.com/CompVis/stable-diffusion"),
    "sdxl": ("stable-diffusion-xl-v1-base",
             "https://github.com/Stability-AI/generative-models"),
}
# The stages of a merge, in the order its progress bar shows them.
STAGES = ("load base", "fuse LoRA", "cast", "write")


def single_file_unet(pipe: DiffusionPipeline) -> UNet2DConditionModel:
    """The UNet that a single-file checkpoint holds.

    Raises:
        ConfigError: If the pipeline's denoiser is not a UNet (SD3's
            transformer), for which no single-file layout is written.
    """
    model = denoiser_of(pipe)
    if not isinstance(model, UNet2DConditionModel):
        raise ConfigError(
            "--format single-file writes Stable Diffusion 1.x and SDXL "
            f"checkpoints, and this base's denoiser is a "
            f"{type(model).__name__}; use --format diffusers.")
    return model


def text_encoders(pipe: DiffusionPipeline) -> tuple:
    """The pipeline's text encoders: SDXL's two, or SD 1.x's one and
    None."""
    return pipe.text_encoder, getattr(pipe, "text_encoder_2", None)


def loading_code(pipe: DiffusionPipeline, base: str, out: str, format: str,
                 dtype: str = "float32") -> str:
    """One line of Python that loads what :func:`merge_lora` wrote.

    A single file holds weights only: ``from_single_file`` reads the
    configs, tokenizers and scheduler from ``config=``, the base (which
    diffusers would otherwise look up on the hub by the checkpoint's keys,
    and not find for a base of another size). Weights not in float32 are
    loaded in their own dtype, which diffusers would otherwise upcast.

    Args:
        pipe (DiffusionPipeline): The merged pipeline.
        base (str): Hub id or diffusers folder it was merged from.
        out (str): What was written, as the user named it.
        format (str): ``"diffusers"`` or ``"single-file"``.
        dtype (str): The dtype written. Defaults to "float32".
    """
    options = "" if dtype == "float32" else f", torch_dtype=torch.{dtype}"
    imports = "" if dtype == "float32" else "import torch; "
    if format == "diffusers":
        return (f"{imports}from diffusers import DiffusionPipeline; "
                f"pipe = DiffusionPipeline.from_pretrained({out!r}{options})")
    layout = single_file_layout(single_file_unet(pipe), *text_encoders(pipe))
    pipeline_class = ("StableDiffusionXLPipeline" if layout == "sdxl"
                      else "StableDiffusionPipeline")
    return (f"{imports}from diffusers import {pipeline_class}; "
            f"pipe = {pipeline_class}.from_single_file("
            f"{out!r}, config={resolve_model(base)!r}{options})")


def from_single_file_caveat(pipe: DiffusionPipeline) -> str | None:
    """Why diffusers' ``from_single_file`` would misread this SDXL
    checkpoint, or None.

    diffusers tells SDXL's two text encoders apart by their width (768 and
    1280 in SDXL); when both are as wide, it loads the first one's weights
    into the second. AUTOMATIC1111 and ComfyUI read them by name.
    """
    text_encoder, text_encoder_2 = text_encoders(pipe)
    if text_encoder_2 is None:
        return None
    width = text_encoder.config.hidden_size
    if width != text_encoder_2.config.hidden_size:
        return None
    return (f"note: both text encoders of this base are {width} wide, and "
            "diffusers' from_single_file tells SDXL's apart by width, so it "
            "reads the second one wrongly; AUTOMATIC1111 and ComfyUI read "
            "them by name, and --format diffusers loads in diffusers")


def single_file_metadata(pipe: DiffusionPipeline, base: str, lora: str,
                         lora_scale: float, title: str) -> dict[str, str]:
    """``modelspec.*`` of a merged Stable Diffusion 1.x or SDXL
    checkpoint."""
    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    unet = single_file_unet(pipe)
    size = unet.config.sample_size * scale
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    base = resolve_model(base)
    architecture, implementation = MODELSPEC[single_file_layout(
        unet, *text_encoders(pipe))]
    return {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": architecture,
        "modelspec.implementation": implementation,
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

    ``format="diffusers"`` writes a model folder (SD 1.x, SDXL or SD3) that
    loads with ``DiffusionPipeline.from_pretrained(out)`` (every component
    of ``base`` saved, the safety checker and SD3's T5 included if it has
    them, the CLIP text encoders in their published key layout);
    ``"single-file"`` (SD 1.x and SDXL only) writes one
    ``.safetensors`` checkpoint in the original layout of Stable Diffusion
    1.x (``model.diffusion_model.*``, ``first_stage_model.*``,
    ``cond_stage_model.transformer.text_model.*``) or SDXL (its text
    encoders under ``conditioner.embedders.{0,1}``) for AUTOMATIC1111,
    ComfyUI's checkpoint loader and ``from_single_file``. Either is written
    whole or not at all. A bar on stderr shows the stages on a terminal.

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

    Raises:
        ConfigError: If an option cannot work, or the base has no
            single-file layout (before anything is fused or written).
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
    with progress_bar(total=len(STAGES), desc="merge", unit="stage") as bar:
        bar.set_postfix_str("load base")
        pipe = DiffusionPipeline.from_pretrained(base)
        if single:  # refused before the fuse, not after
            single_file_layout(single_file_unet(pipe), *text_encoders(pipe))
        next_stage(bar, "fuse LoRA")
        file_format(load_adapters(pipe, lora, lora_scale)).fuse(pipe)
        next_stage(bar, "cast")
        if dtype != "float32":
            pipe.to(DTYPES[dtype])
        next_stage(bar, "write")
        if single:
            title = os.path.splitext(os.path.basename(out))[0]
            tensors = to_single_file(single_file_unet(pipe), pipe.vae,
                                     *text_encoders(pipe))
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
            save_single_file(tensors, out, single_file_metadata(
                pipe, base, lora, lora_scale, title))
        else:
            with atomic_directory(out) as tmp:
                save_pipeline_folder(pipe, tmp)
        bar.update()
    return pipe


def next_stage(bar: tqdm, stage: str) -> None:
    """Count a stage done and name the next one, ``stage``."""
    bar.update()
    bar.set_postfix_str(stage)
