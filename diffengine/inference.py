"""Generating images the same way during training and after it.

The visualization hook (through ``StableDiffusion.infer``) and the ``demo``
tool both call :func:`generate`, so a sample saved at step N is the image
that ``demo`` gives for the same prompt, seed and step folder.
"""
from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import diffusers
import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import logging as diffusers_logging
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from diffengine.adapter_file import AdapterFile, read_adapter_file
from diffengine.adapters.formats import file_format
from diffengine.architectures import architecture_of
from diffengine.generation import GenerationOptions
from diffengine.progress import progress_bar
from diffengine.quiet import NO_TEXT_ENCODER_LORA, without_message
from diffengine.stop import raise_if_stop_requested

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


def denoiser_of(pipe: DiffusionPipeline) -> torch.nn.Module:
    """The pipeline's denoiser: its ``transformer`` (SD3, Flux) or its
    ``unet`` (SD 1.x, SDXL)."""
    for name in ("transformer", "unet"):
        module = getattr(pipe, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(f"{type(pipe).__name__} has neither a transformer nor "
                     "a unet.")


def family_of(pipeline_class: type[DiffusionPipeline]) -> type | None:
    """The model family (a registered ``LatentDiffusionModel``) whose
    pipeline is ``pipeline_class``; None when no family has it."""
    # here, not at the top: the families import this module
    from diffengine.models.editors.base import LatentDiffusionModel
    from diffengine.registry import MODELS
    return next((family for family in MODELS.module_dict.values()
                 if isinstance(family, type)
                 and issubclass(family, LatentDiffusionModel)
                 and family.pipeline_class is pipeline_class), None)


def generation_defaults(pipe: DiffusionPipeline | type[DiffusionPipeline]
                        ) -> GenerationOptions:
    """The options that ``pipe`` draws with where nothing else gives them:
    those of the family whose pipeline it is (``generation_defaults_for``
    the pipeline's denoiser, so that a variant with its own, FLUX.1
    [schnell], gets them), of the family alone for a pipeline class, SD
    1.x's 50 steps at 7.5 for a pipeline no family has."""
    # here, not at the top: the families import this module
    from diffengine.models.editors.base import LatentDiffusionModel
    pipeline_class = pipe if isinstance(pipe, type) else type(pipe)
    family = family_of(pipeline_class) or LatentDiffusionModel
    config = None
    if not isinstance(pipe, type):
        with contextlib.suppress(ValueError):  # neither transformer nor unet
            config = denoiser_of(pipe).config
    return family.generation_defaults_for(config)


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Leave out diffusers' "Loading pipeline components" bar: sampling
    during training loads a pipeline each time, and the log would hold a
    bar line for each."""
    enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            diffusers_logging.enable_progress_bar()


def sampling_progress(total_steps: int, desc: str = "sampling") -> tqdm:
    """A bar of denoising steps on stderr, shown only where stderr is a
    terminal (a log file gets no bar lines).

    Args:
        total_steps (int): Denoising steps of all the images to draw.
        desc (str): The bar's label. Defaults to "sampling".
    """
    return progress_bar(total_steps, desc, "step")


def step_callback(num_inference_steps: int, progress: tqdm | None = None
                  ) -> Callable:
    """A diffusers ``callback_on_step_end``: stops between denoising steps
    on a stop request (:mod:`diffengine.stop`) and advances ``progress``."""
    def on_step_end(pipe, step: int, timestep, callback_kwargs: dict) -> dict:
        raise_if_stop_requested()
        if progress is not None:
            if step == 0:
                # Some schedulers (PNDM) take a step more than asked.
                progress.total += (len(pipe.scheduler.timesteps)
                                   - num_inference_steps)
            progress.update()
        return callback_kwargs
    return on_step_end


def generate(pipe: DiffusionPipeline,
             prompt: str,
             seeds: Sequence[int] | None = None,
             options: GenerationOptions | None = None,
             output_type: str = "pil",
             progress: tqdm | None = None,
             **given: Any) -> list[np.ndarray]:
    """One image of ``prompt`` per seed, in one batch.

    Each image gets its own CPU generator seeded with its seed, so that an
    image depends on its seed only (not on the batch it is drawn in nor on
    the device). A stop request (SIGINT or SIGTERM during training) ends it
    at the next denoising step with :class:`diffengine.stop.StopRequested`.

    Args:
        pipe (DiffusionPipeline): The pipeline of a family (SD 1.x, SDXL,
            SD3, Flux), adapters loaded or not.
        prompt (str): The prompt.
        seeds (Sequence[int], optional): One seed per image, in place of
            ``options``'. Defaults to those of ``options``, else 0.
        options (GenerationOptions, optional): How to draw; what it leaves
            out, the base's (:func:`generation_defaults`). Defaults to None.
        output_type (str): ``"pil"`` gives H×W×3 uint8 arrays, ``"np"``
            float arrays in [0, 1]. Defaults to ``"pil"``.
        progress (tqdm, optional): A bar advanced at every denoising step
            (:func:`sampling_progress`). Defaults to None.
        **given: Options by the names :meth:`GenerationOptions.of` takes
            (``num_inference_steps``, ``guidance_scale``, ``height``,
            ``width``, ``negative_prompt``, or an argument of the
            pipeline's call such as ``max_sequence_length``), in place of
            ``options``'.

    Returns:
        list[np.ndarray]: One image per seed.
    """
    options = generation_defaults(pipe).overridden_by(options).overridden_by(
        GenerationOptions.of(seed=seeds, **given))
    if not options.seeds:
        raise ValueError("seeds is empty: give at least one seed.")
    raise_if_stop_requested()
    images = pipe(
        prompt,
        **options.call_arguments(),
        output_type=output_type,
        callback_on_step_end=step_callback(options.num_inference_steps,
                                           progress)).images
    if output_type == "pil":
        return [np.asarray(image) for image in images]
    return list(images)


def label_font(image_width: int) -> ImageFont.ImageFont:
    """PIL's default font at a size readable beside an image this wide."""
    return ImageFont.load_default(size=max(10, image_width // 20))


def label_height(image_width: int) -> int:
    """The height of a grid's label bands for images this wide."""
    top, bottom = label_font(image_width).getbbox("Ag")[1::2]
    return bottom - top + 6


def panel_box(row: int, column: int, height: int, width: int,
              labelled: bool = True) -> tuple[int, int]:
    """The top-left corner (y, x) of image (``row``, ``column``) in a grid
    of H×W images that :func:`make_grid` drew."""
    band = label_height(width) if labelled else 0
    return band + row * (band + height) + band, column * width


def make_grid(images: Sequence[np.ndarray], columns: int,
              row_labels: Sequence[str] | None = None,
              column_labels: Sequence[str] | None = None) -> np.ndarray:
    """Tile equally sized H×W×3 uint8 images row by row, ``columns`` per row.

    With labels, a white band on top names each column (the seeds) and a
    band above each row names it (its prompt), drawn in PIL's default font;
    the images themselves stay untouched (see :func:`panel_box`).

    Args:
        images (Sequence[np.ndarray]): The images, row by row.
        columns (int): Images per row.
        row_labels (Sequence[str], optional): One per row. Defaults to None.
        column_labels (Sequence[str], optional): One per column. Defaults
            to None.
    """
    if not images or columns < 1:
        raise ValueError(
            f"make_grid: {len(images)} images, columns={columns}.")
    height, width, channels = images[0].shape
    rows = -(-len(images) // columns)
    labelled = row_labels is not None or column_labels is not None
    band = label_height(width) if labelled else 0
    grid = np.full((band + rows * (band + height), columns * width, channels),
                   255 if labelled else 0, dtype=images[0].dtype)
    for i, image in enumerate(images):
        top, left = panel_box(*divmod(i, columns), height, width, labelled)
        grid[top:top + height, left:left + width] = image
    if not labelled:
        return grid
    canvas = Image.fromarray(grid)
    draw, font = ImageDraw.Draw(canvas), label_font(width)
    for column, text in enumerate(column_labels or ()):
        draw.text((column * width + 3, 3), fit_text(draw, text, font, width),
                  fill="black", font=font)
    for row, text in enumerate(row_labels or ()):
        draw.text((3, band + row * (band + height) + 3),
                  fit_text(draw, text, font, columns * width),
                  fill="black", font=font)
    return np.asarray(canvas)


def fit_text(draw: ImageDraw.ImageDraw, text: str,
             font: ImageFont.ImageFont, width: int) -> str:
    """``text``, cut and ended with "…" where it is wider than ``width``."""
    if draw.textlength(text, font=font) <= width - 6:
        return text
    while text and draw.textlength(text + "…", font=font) > width - 6:
        text = text[:-1]
    return text + "…"


def prompt_slug(prompts: Sequence[str], max_length: int = 80) -> str:
    """A file-name-safe summary of prompts: ``a-red-circle+a-blue-square``."""
    slugs = [re.sub(r"[^a-z0-9]+", "-", p.lower()).strip("-") or "prompt"
             for p in dict.fromkeys(prompts)]
    return "+".join(slugs)[:max_length].rstrip("-+")


def load_adapters(pipe: DiffusionPipeline, lora: str,
                  lora_scale: float = 1.0) -> AdapterFile:
    """Add the adapters of a step folder or file to ``pipe`` at
    ``lora_scale``, with the loader of its kind: diffusers'
    ``load_lora_weights`` for LoRA and DoRA (and kohya LoRA files), the
    LyCORIS loader of :mod:`diffengine.adapters.formats` for LoHa and LoKr.

    Returns:
        AdapterFile: The file read, whose format's ``fuse`` merges it
        (``file_format(source).fuse(pipe)``).
    """
    source = read_adapter_file(lora)
    with without_message(*NO_TEXT_ENCODER_LORA):
        file_format(source).load(pipe, source,
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
