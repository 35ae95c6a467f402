"""Generating images the same way during training and after it.

The visualization hook (through ``StableDiffusion.infer``) and the ``demo``
tool both call :func:`generate`, so a sample saved at step N is the image
that ``demo`` gives for the same prompt, seed and step folder.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Sequence

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline

from diffengine.architectures import architecture_of
from diffengine.lora_file import LoRAFile, read_lora_file
from diffengine.quiet import NO_TEXT_ENCODER_LORA, without_message

# Parts that training does without (SD 1.x's safety checker), switched off
# where a pipeline has them, as training's own pipeline does.
UNUSED_PARTS = dict(safety_checker=None, feature_extractor=None,
                    requires_safety_checker=False, add_watermarker=False)


def pipeline_class_of(base: str) -> type[DiffusionPipeline]:
    """The diffusers pipeline class a model folder or hub id names in its
    ``model_index.json``."""
    config = DiffusionPipeline.load_config(base)
    return getattr(diffusers, config["_class_name"])


def load_base_pipeline(base: str, **parts) -> DiffusionPipeline:
    """``base`` as its own pipeline class, without the parts training does
    without, and with ``parts`` given in place of loaded ones."""
    pipeline_class = pipeline_class_of(base)
    accepted = inspect.signature(pipeline_class.__init__).parameters
    unused = {k: v for k, v in UNUSED_PARTS.items() if k in accepted}
    return pipeline_class.from_pretrained(base, **{**unused, **parts})


def generate(pipe: DiffusionPipeline,
             prompt: str,
             seeds: Sequence[int],
             negative_prompt: str | None = None,
             height: int | None = None,
             width: int | None = None,
             num_inference_steps: int = 50,
             guidance_scale: float = 7.5,
             output_type: str = "pil") -> list[np.ndarray]:
    """One image of ``prompt`` per seed, in one batch.

    Each image gets its own CPU generator seeded with its seed, so that an
    image depends on its seed only (not on the batch it is drawn in nor on
    the device).

    Args:
        pipe (DiffusionPipeline): The pipeline (SD 1.x or SDXL), LoRA
            loaded or not.
        prompt (str): The prompt.
        seeds (Sequence[int]): One seed per image.
        negative_prompt (str, optional): Defaults to None.
        height (int, optional): Defaults to the pipeline's.
        width (int, optional): Defaults to the pipeline's.
        num_inference_steps (int): Defaults to 50.
        guidance_scale (float): Classifier-free guidance. Defaults to 7.5.
        output_type (str): ``"pil"`` gives H×W×3 uint8 arrays, ``"np"``
            float arrays in [0, 1]. Defaults to ``"pil"``.

    Returns:
        list[np.ndarray]: One image per seed.
    """
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed.")
    images = pipe(
        prompt,
        negative_prompt=negative_prompt,
        height=height,
        width=width,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        num_images_per_prompt=len(seeds),
        generator=[torch.Generator("cpu").manual_seed(s) for s in seeds],
        output_type=output_type).images
    if output_type == "pil":
        return [np.asarray(image) for image in images]
    return list(images)


def make_grid(images: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """Tile equally sized H×W×C images row by row, ``columns`` per row."""
    if not images or columns < 1:
        raise ValueError(
            f"make_grid: {len(images)} images, columns={columns}.")
    height, width, channels = images[0].shape
    rows = -(-len(images) // columns)
    grid = np.zeros((rows * height, columns * width, channels),
                    dtype=images[0].dtype)
    for i, image in enumerate(images):
        row, column = divmod(i, columns)
        grid[row * height:(row + 1) * height,
             column * width:(column + 1) * width] = image
    return grid


def prompt_slug(prompts: Sequence[str], max_length: int = 80) -> str:
    """A file-name-safe summary of prompts: ``a-red-circle+a-blue-square``."""
    slugs = [re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") or "prompt"
             for p in dict.fromkeys(prompts)]
    return "+".join(slugs)[:max_length].rstrip("-+")


def load_adapters(pipe: DiffusionPipeline, lora: str,
                  lora_scale: float = 1.0) -> LoRAFile:
    """Add the adapters of a step folder or file to ``pipe`` at
    ``lora_scale``, with the loader of its kind: diffusers'
    ``load_lora_weights`` for LoRA and DoRA (and kohya LoRA files), the
    LyCORIS loader of :mod:`diffengine.adapters.formats` for LoHa and LoKr.

    Returns:
        LoRAFile: The file read, whose ``step_format.fuse`` merges it.
    """
    source = read_lora_file(lora)
    with without_message(*NO_TEXT_ENCODER_LORA):
        source.step_format.load(pipe, source,
                                architecture_of(source).kohya_prefixes,
                                lora_scale)
    return source


def load_pipeline(base: str,
                  lora: str | None = None,
                  lora_scale: float = 1.0,
                  device: str | torch.device = "cpu",
                  torch_dtype: torch.dtype = torch.float32
                  ) -> DiffusionPipeline:
    """The base pipeline with a diffengine adapter loaded at ``lora_scale``.

    The scheduler is the base model's, as in ``StableDiffusion.pipeline``.

    Args:
        base (str): Hub id or diffusers folder of the base model.
        lora (str, optional): Step folder or ``.safetensors`` file (diffusers
            or kohya LoRA, or a LyCORIS file diffengine wrote). Defaults to
            None (the base alone).
        lora_scale (float): Strength of the adapter; 1 is as trained.
            Defaults to 1.
        device (str | torch.device): Defaults to "cpu".
        torch_dtype (torch.dtype): Defaults to float32.
    """
    pipe = load_base_pipeline(base)
    if lora is not None:
        load_adapters(pipe, lora, lora_scale)
    pipe.set_progress_bar_config(disable=True)
    if torch_dtype != torch.float32:
        pipe.to(dtype=torch_dtype)
    return pipe.to(device)
