"""DreamBooth's class images: generated once with the base model, then kept.

Prior preservation trains on images of the subject's class ("a photo of a
dog") beside the subject's own, so that the model keeps what the class
looks like. Missing class images are generated with the model before
training starts, one file each, written atomically: a run that is killed
keeps the finished ones, and a later run (or a resume) generates only what
is still missing.

A folder that diffengine fills is keyed by everything that decides its
images (:func:`class_images_key`): the base model and a fingerprint of its
weights, the scheduler, the prompt, the size and the generation settings.
Another base, size or setting draws a set of its own instead of reusing
images that were drawn otherwise.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import print_log
from PIL import Image
from tqdm import tqdm

from diffengine.datasets.kohya_folder import IMAGE_EXTENSIONS
from diffengine.errors import DataError
from diffengine.fileio import atomic_write, atomic_write_text
from diffengine.generation import GenerationOptions
from diffengine.inference import denoiser_of, generation_defaults
from diffengine.stop import raise_if_stop_requested

# Image k of a folder that diffengine fills is generated with seed k.
CLASS_IMAGE_NAME = "class_{:05d}.jpg"
SEED_RULE = "image k is drawn with seed k"
# What drew the images of a folder that diffengine fills.
MANIFEST_NAME = "class_images.json"
# Values sampled from each weight tensor for the fingerprint.
FINGERPRINT_SAMPLES = 16


def sampled_weights_digest(modules: Iterable[torch.nn.Module],
                           samples: int = FINGERPRINT_SAMPLES) -> str:
    """SHA-256 (hex) of the dtype, shape and ``samples`` evenly spaced
    values of every frozen weight of ``modules``.

    Milliseconds even for SDXL, where hashing every value would read
    gigabytes before each run; a fine-tune or another dtype changes nearly
    every tensor, so it changes the sampled values too. Trainable weights
    (the fresh adapters, randomly initialised) and the names (which adapter
    injection changes) are left out: the images depend on neither.
    """
    digest = hashlib.sha256()
    for module in modules:
        for weight in module.parameters():
            if weight.requires_grad:
                continue
            flat = weight.detach().reshape(-1)
            # integer steps: float positions round past the end of tensors
            # of more than 2**24 values
            index = (torch.arange(samples, device=flat.device)
                     * (flat.numel() - 1) // (samples - 1))
            values = flat[index].cpu().contiguous()
            digest.update(json.dumps([str(weight.dtype),
                                      list(weight.shape)]).encode())
            # raw bytes: numpy has no bfloat16
            digest.update(values.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def class_images_key(pipe, base_model: str, prompt: str,
                     options: GenerationOptions | Mapping[str, Any]) -> dict:
    """Everything that decides the class images drawn with ``pipe``.

    Args:
        pipe (DiffusionPipeline): The base model's pipeline, as ``infer``
            draws with it.
        base_model (str): Its hub id or folder.
        prompt (str): The class prompt.
        options (GenerationOptions | Mapping): Those given to ``infer``,
            or a mapping of them by the names ``GenerationOptions.of``
            takes (what they leave out, the base's: ``generation_defaults``
            of ``pipe``).

    Returns:
        dict: Plain JSON data, the same for the same images.
    """
    modules = [c for c in pipe.components.values()
               if isinstance(c, torch.nn.Module)]
    denoiser = denoiser_of(pipe)
    # the pipeline's own default size: FluxPipeline's transformer config
    # has no sample_size (the pipeline's default_sample_size is 128)
    sample_size = getattr(pipe, "default_sample_size", None) or getattr(
        denoiser.config, "sample_size", None)
    size = sample_size * pipe.vae_scale_factor if sample_size else None
    scheduler = {k: v for k, v in pipe.scheduler.config.items()
                 if not k.startswith("_")}
    if not isinstance(options, GenerationOptions):
        options = GenerationOptions.of(**options)
    drawn = generation_defaults(pipe).overridden_by(options)
    return {
        "base_model": base_model,
        "weights": sampled_weights_digest(modules),
        "dtype": str(denoiser.dtype).removeprefix("torch."),
        "scheduler": {"class": type(pipe.scheduler).__name__, **scheduler},
        "prompt": prompt,
        "height": options.height or size,
        "width": options.width or size,
        "num_inference_steps": drawn.num_inference_steps,
        "guidance_scale": drawn.guidance_scale,
        "negative_prompt": options.negative_prompt,
        "seeds": SEED_RULE,
    }


def class_image_folder(work_dir: str, key: dict) -> str:
    """Where a run keeps the class images drawn as ``key`` says:
    ``work_dir/class_images/<prompt as a file name>-<digest of key>``, so
    that another prompt, base, size or setting gets images of its own."""
    name = re.sub(r"\W+", "_", key["prompt"].lower()).strip("_")[:80]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    return os.path.join(work_dir, "class_images",
                        f"{name or 'class'}-{digest.hexdigest()[:12]}")


def write_manifest(folder: str, key: dict) -> None:
    """Record in ``folder`` what draws its images, for whoever opens it."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, MANIFEST_NAME)
    if not os.path.exists(path):
        atomic_write_text(path, json.dumps(key, indent=2, sort_keys=True)
                          + "\n")


def list_images(folder: str) -> list[str]:
    """The image files of ``folder``, sorted by name (none if it does not
    exist)."""
    if not os.path.isdir(folder):
        return []
    return sorted(
        os.path.join(folder, name) for name in os.listdir(folder)
        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."))


def missing_class_images(folder: str, num_images: int) -> list[int]:
    """The numbers (and seeds) of the images to generate so that ``folder``
    holds ``num_images``: the lowest ones whose file is not there."""
    existing = list_images(folder)
    needed = num_images - len(existing)
    names = {os.path.basename(p) for p in existing}
    missing: list[int] = []
    number = 0
    while len(missing) < needed:
        if CLASS_IMAGE_NAME.format(number) not in names:
            missing.append(number)
        number += 1
    return missing


def save_jpeg(image: np.ndarray, path: str) -> None:
    """Write an H×W×3 uint8 image as a JPEG of quality 95 with full-size
    colour (no 4:2:0 chroma subsampling), as close to the drawn image as a
    tenth of a PNG's size allows."""
    Image.fromarray(image).save(path, format="JPEG", quality=95, subsampling=0)


def generate_class_images(folder: str,
                          num_images: int,
                          generate: Callable[[Sequence[int]], list[np.ndarray]],
                          batch_size: int = 4) -> int:
    """Fill ``folder`` up to ``num_images`` images with ``generate``.

    Every process generates its share (every ``world_size``-th missing
    image) and waits for the others; rank 0 shows a progress bar.

    Args:
        folder (str): The class image folder.
        num_images (int): How many images it must hold.
        generate (Callable): Seeds → one H×W×3 uint8 image per seed.
        batch_size (int): Images generated together. Defaults to 4.

    Returns:
        int: The number of images generated by all processes.

    Raises:
        DataError: If the folder still holds fewer images afterwards.
    """
    missing = missing_class_images(folder, num_images)
    # Every process lists the folder before any writes to it, so that all
    # split the same list.
    barrier()
    if missing:
        rank, world_size = get_dist_info()
        print_log(
            f"class images: generating {len(missing)} of {num_images} in "
            f"{folder} with the base model"
            + (f", split across {world_size} processes"
               if world_size > 1 else ""),
            logger="current")
        os.makedirs(folder, exist_ok=True)
        mine = missing[rank::world_size]
        with tqdm(total=len(mine), desc="class images", unit="image",
                  disable=rank != 0) as progress:
            for start in range(0, len(mine), batch_size):
                raise_if_stop_requested()  # a stop signal ends it here
                numbers = mine[start:start + batch_size]
                for number, image in zip(numbers, generate(numbers),
                                         strict=True):
                    path = os.path.join(folder,
                                        CLASS_IMAGE_NAME.format(number))
                    atomic_write(path, lambda tmp, image=image: save_jpeg(
                        image, tmp))
                progress.update(len(numbers))
    barrier()
    found = len(list_images(folder))
    if found < num_images:
        raise DataError(
            f"class images: {folder} holds {found} images, fewer than "
            f"num_class_images={num_images}.")
    if not missing:
        print_log(f"class images: {num_images} found in {folder}, reused",
                  logger="current")
    return len(missing)
