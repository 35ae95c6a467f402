"""VAE latents of the training images, encoded once and kept on disk.

With ``cache_latents``, each image goes through the deterministic part of
the pipeline once, unflipped and (when the pipeline flips) flipped, and the
VAE's latent distributions of both views are stored in one file. A training
sample then picks one of the two with the flip its seed draws, so no image
is decoded, resized or encoded during training.

A cached latent is one fixed crop per image, so ``RandomCrop`` (and
``BucketResizeCrop`` with ``random_crop``) crops at the centre when the
latents are cached; with aspect-ratio buckets each image's views are cached
at its bucket's size. Caption
transforms run on cached samples as they do on images.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence

import torch
from mmcv.transforms import BaseTransform, Compose
from mmengine.logging import print_log
from safetensors.torch import load_file, save_file

from diffengine.datasets.transforms.formatting import (
    ImageToNormalizedTensor,
    PackInputs,
)
from diffengine.datasets.transforms.processing import (
    FIXED,
    TEXT,
    RandomHorizontalFlip,
    draw_flip,
)
from diffengine.errors import ConfigError
from diffengine.fileio import atomic_write

# Bumped when the file layout or the meaning of a key changes; 2: views of
# the image turned by its EXIF orientation.
FORMAT_VERSION = 2


class PickLatentView(BaseTransform):
    """Pick the cached latents of the unflipped or of the flipped image.

    Draws the flip as ``RandomHorizontalFlip`` does (``draw_flip``), so a
    sample's flip is the same with and without the cache when the crop is
    fixed.

    Args:
        p (float, optional): The flip probability; None when the pipeline
            does not flip (one view is cached).
    """

    def __init__(self, p: float | None) -> None:
        self.p = p

    def transform(self, results: dict) -> dict:
        flip = self.p is not None and draw_flip(results, self.p)
        results["flip"] = flip
        for key in results.pop("cached_keys", ("latents", )):
            results[key] = results[key][int(flip)]
        return results


class LatentCachePlan:
    """How a pipeline is split for caching.

    Each transform declares its part (``latent_cache``): ``"fixed"`` ones
    (resize, centre crop, bucket crop, to-tensor) run before caching; a
    transform with ``for_latent_cache()`` (``RandomCrop``) is replaced by
    the fixed one it returns; ``RandomHorizontalFlip`` is cached as two
    views; ``"text"`` ones (caption transforms) run on cached samples as
    they are.

    Attributes:
        views (list[Compose]): Image → C×H×W tensor, one per cached view:
            unflipped, then flipped when the pipeline flips.
        settings (list): What the cached values depend on besides the image
            and the VAE (the fixed transforms and their options), for keys.
        pipeline (Compose): What training applies to a cached sample, in the
            pipeline's order: the flip pick, the text transforms and
            ``PackInputs`` with ``latents`` in place of ``img``.

    Raises:
        ConfigError: If the pipeline holds a transform that cannot be
            cached, or lacks ``ImageToNormalizedTensor`` or ``PackInputs``.
    """

    def __init__(self, transforms: Sequence) -> None:
        unflipped, flipped, settings, after = [], [], [], []
        flip_p, pack = None, None
        for transform in transforms:
            if hasattr(transform, "for_latent_cache"):
                replacement = transform.for_latent_cache()
                if replacement is not transform:
                    print_log(
                        f"cache_latents: {type(transform).__name__} crops at "
                        "the centre, since a cached latent is one fixed crop "
                        "per image",
                        logger="current", level=logging.WARNING)
                transform = replacement
            role = getattr(transform, "latent_cache", None)
            if role == FIXED:
                unflipped.append(transform)
                flipped.append(transform)
                settings.append([type(transform).__name__, vars(transform)])
            elif isinstance(transform, RandomHorizontalFlip):
                flip_p = transform.p
                unflipped.append(RandomHorizontalFlip(p=0.0))
                flipped.append(RandomHorizontalFlip(p=1.0))
                settings.append(["RandomHorizontalFlip"])
                after.append(PickLatentView(flip_p))
            elif role == TEXT:
                after.append(transform)
            elif isinstance(transform, PackInputs):
                pack = PackInputs(
                    keys=["latents" if k == "img" else k
                          for k in transform.keys],
                    optional_keys=transform.optional_keys)
                after.append(pack)
            else:
                raise ConfigError(
                    f"cache_latents: the pipeline's {type(transform).__name__}"
                    " cannot be cached; the cache supports transforms whose "
                    "latent_cache is 'fixed' (ResizeShortestEdge, CenterCrop, "
                    "BucketResizeCrop, ImageToNormalizedTensor) or 'text' "
                    "(RandomTextDrop, ShuffleCaptionTags), RandomCrop (at the "
                    "centre), "
                    "RandomHorizontalFlip and PackInputs.")
        if pack is None or not any(
                isinstance(t, ImageToNormalizedTensor) for t in unflipped):
            raise ConfigError(
                "cache_latents: the pipeline needs ImageToNormalizedTensor "
                "and PackInputs.")
        if not any(isinstance(t, PickLatentView) for t in after):
            after.insert(0, PickLatentView(None))
        self.views = [Compose(unflipped)]
        if flip_p is not None and flip_p > 0:
            self.views.append(Compose(flipped))
        self.settings = settings
        self.pipeline = Compose(after)

    def views_of(self, image) -> dict[str, torch.Tensor]:
        """The views of a PIL image, stacked: ``img`` (V × 3 × H × W in
        [-1, 1]) and every other tensor the fixed transforms record per view
        (``time_ids``, V × 6)."""
        views = [view({"img": image}) for view in self.views]
        return {key: torch.stack([v[key] for v in views])
                for key, value in views[0].items()
                if isinstance(value, torch.Tensor)}


class LatentCache:
    """Files of cached latents, one per image, under ``folder``.

    A file holds ``latents``: V × 8 × h × w fp32 (the VAE's mean and
    log-variance of each view), and what else the fixed transforms record
    per view (SDXL's ``time_ids``). Its name is a digest of the image's bytes,
    the fixed transforms and the VAE, so that a run with other settings or
    another VAE never reads it, and any run with the same ones does.

    Args:
        folder (str): Where the files go, e.g. ``work_dir/latent_cache``.
        settings (dict): What the values depend on besides the image.
    """

    def __init__(self, folder: str, settings: dict) -> None:
        self.folder = folder
        self.settings = json.dumps(
            {"format": FORMAT_VERSION, **settings}, sort_keys=True)

    def key(self, image_digest: str) -> str:
        """The key of the image whose bytes have SHA-256 ``image_digest``."""
        return hashlib.sha256(
            f"{image_digest}\n{self.settings}".encode()).hexdigest()

    def path(self, key: str) -> str:
        return os.path.join(self.folder, key[:2], f"{key}.safetensors")

    def has(self, key: str) -> bool:
        return os.path.isfile(self.path(key))

    def load(self, key: str) -> dict[str, torch.Tensor]:
        """``latents`` and the other per-view tensors of an image."""
        return load_file(self.path(key))

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        """Write ``latents`` (and other per-view tensors) of an image."""
        path = self.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tensors = {k: v.detach().float().cpu().contiguous()
                   for k, v in tensors.items()}
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
