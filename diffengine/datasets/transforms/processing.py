"""Geometric image transforms on PIL images (no torchvision needed).

Random transforms draw from the sample's ``randomness`` (see
:func:`sample_randomness`). Each transform says what the latent cache does
with it (``latent_cache``): ``"fixed"`` ones depend on the image alone and
run before caching, ``"text"`` ones touch only the caption and run on cached
samples too.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from mmcv.transforms import BaseTransform
from PIL import Image

from diffengine.errors import ConfigError, DataError
from diffengine.randomness import Randomness
from diffengine.registry import TRANSFORMS

# What the latent cache does with a transform (its ``latent_cache``).
FIXED = "fixed"
TEXT = "text"
# The VAE of every supported family downsamples by 8: a training size must
# be a multiple of it, or the latents' edge is cut silently.
VAE_FACTOR = 8
# Longest side over shortest side that a resize or a bucket takes: beyond
# it a square crop keeps under an eighth of the picture, and resizing the
# short side up makes the long one enormous (20000×20 → 512000×512).
MAX_ASPECT_RATIO = 8


def check_vae_multiple(transform: str, key: str,
                       values: int | Sequence[int]) -> None:
    """Refuse a training size that the VAE cannot downsample evenly.

    Raises:
        ConfigError: Naming ``transform``, the value and the nearest
            multiples of :data:`VAE_FACTOR`.
    """
    for value in (values, ) if isinstance(values, int) else values:
        if value <= 0 or value % VAE_FACTOR:
            lower = max(VAE_FACTOR, value // VAE_FACTOR * VAE_FACTOR)
            upper = (max(value, 0) // VAE_FACTOR + 1) * VAE_FACTOR
            nearest = (f"{lower} or {upper}" if lower != upper
                       else str(lower))
            raise ConfigError(
                f"{transform} {key}={values!r}: {value} is not a positive "
                f"multiple of {VAE_FACTOR} (the VAE downsamples by "
                f"{VAE_FACTOR}); use {nearest}.")


def check_aspect_ratio(transform: str, width: int, height: int) -> None:
    """Refuse an image more than :data:`MAX_ASPECT_RATIO` times longer
    than wide (or wider than long).

    Raises:
        DataError: Naming the size, its ratio and the limit.
    """
    ratio = max(width, height) / max(1, min(width, height))
    if ratio > MAX_ASPECT_RATIO:
        raise DataError(
            f"{width}×{height} has an aspect ratio of {ratio:.1f}:1, beyond "
            f"the {MAX_ASPECT_RATIO}:1 that {transform} takes; crop it.")


def sample_randomness(results: dict) -> Randomness:
    """The sample's random draws, which the dataset puts in ``results``.

    Raises:
        KeyError: If there are none: the sample did not come from a
            diffengine dataset.
    """
    if "randomness" not in results:
        raise KeyError(
            "results['randomness'] is missing: random transforms draw from "
            "the sample's own generator, which diffengine datasets set (or "
            "pass randomness=Randomness.from_seeds([seed], 'data')).")
    return results["randomness"]


def draw_flip(results: dict, p: float) -> bool:
    """Whether to mirror the sample: one draw against ``p`` (none when p is
    0 or 1)."""
    if p in (0.0, 1.0):
        return p == 1.0
    return sample_randomness(results).rand().item() < p


INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@TRANSFORMS.register_module()
class ResizeShortestEdge(BaseTransform):
    """Resize so that the shorter side equals ``size``, keeping the aspect.

    An image more than ``MAX_ASPECT_RATIO`` (8) times longer than wide is
    refused (``DataError``): the dataset's pre-flight scan skips it.

    Args:
        size (int): Target length of the shorter side, a multiple of 8.
        interpolation (str): One of ``nearest``, ``bilinear``, ``bicubic``,
            ``lanczos``. Defaults to "bilinear", as diffusers' scripts.
    """

    latent_cache: ClassVar[str] = FIXED

    def __init__(self, size: int, interpolation: str = "bilinear") -> None:
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation={interpolation!r}; choose one of "
                f"{sorted(INTERPOLATIONS)}.")
        check_vae_multiple("ResizeShortestEdge", "size", size)
        self.size = size
        self.interpolation = interpolation

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) that an image of ``width`` × ``height`` is
        resized to.

        Raises:
            DataError: If its aspect ratio is beyond ``MAX_ASPECT_RATIO``.
        """
        check_aspect_ratio("ResizeShortestEdge", width, height)
        scale = self.size / min(width, height)
        return (max(self.size, round(width * scale)),
                max(self.size, round(height * scale)))

    def transform(self, results: dict) -> dict:
        image: Image.Image = results["img"]
        width, height = image.size
        new_size = self.output_size(width, height)
        results.setdefault("ori_img_shape", (height, width))
        results["img"] = image.resize(new_size,
                                      INTERPOLATIONS[self.interpolation])
        return results


class _Crop(BaseTransform):
    """Crop ``size`` × ``size`` (or (h, w)) at a place the subclass picks.

    Records ``crop_bbox`` as (x1, y1, x2, y2) in the image it crops (the
    resized one) and that image's (h, w) as ``crop_source_shape``; an image
    not resized before gets its size as ``ori_img_shape``.
    """

    latent_cache: ClassVar[str] = FIXED

    def __init__(self, size: int | tuple[int, int]) -> None:
        check_vae_multiple(type(self).__name__, "size", size)
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the crop of an image of ``width`` ×
        ``height``.

        Raises:
            DataError: If the image is smaller than the crop.
        """
        crop_h, crop_w = self.size
        if width < crop_w or height < crop_h:
            raise DataError(
                f"{width}×{height} is smaller than the {crop_w}×{crop_h} "
                f"{type(self).__name__}; resize it first (ResizeShortestEdge "
                "with size >= the crop).")
        return crop_w, crop_h

    def top_left(self, results: dict, height: int,
                 width: int) -> tuple[int, int]:
        raise NotImplementedError

    def transform(self, results: dict) -> dict:
        image: Image.Image = results["img"]
        crop_h, crop_w = self.size
        width, height = image.size
        self.output_size(width, height)
        top, left = self.top_left(results, height, width)
        box = (left, top, left + crop_w, top + crop_h)
        results["img"] = image.crop(box)
        results["crop_bbox"] = box
        results["crop_source_shape"] = (height, width)
        results.setdefault("ori_img_shape", (height, width))
        return results


@TRANSFORMS.register_module()
class RandomCrop(_Crop):
    """Crop at a uniformly random place.

    A cached latent is one fixed crop per image, so with ``cache_latents``
    it crops at the centre (see :meth:`for_latent_cache`).
    """

    def top_left(self, results: dict, height: int,
                 width: int) -> tuple[int, int]:
        randomness = sample_randomness(results)
        return (randomness.randint(height - self.size[0] + 1).item(),
                randomness.randint(width - self.size[1] + 1).item())

    def for_latent_cache(self) -> CenterCrop:
        """The fixed crop that stands for this one in a latent cache."""
        return CenterCrop(self.size)


@TRANSFORMS.register_module()
class CenterCrop(_Crop):
    """Crop at the centre."""

    def top_left(self, results: dict, height: int,
                 width: int) -> tuple[int, int]:
        return ((height - self.size[0]) // 2, (width - self.size[1]) // 2)


@TRANSFORMS.register_module()
class RandomHorizontalFlip(BaseTransform):
    """Mirror left-right with probability ``p``; records ``flip``.

    After a crop, ``crop_bbox`` is mirrored too: the flipped crop is the
    crop of the flipped image at the mirrored place, which is what SDXL's
    crop conditioning describes.
    """

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"p={p} is not a probability in [0, 1].")
        self.p = p

    def transform(self, results: dict) -> dict:
        flip = draw_flip(results, self.p)
        results["flip"] = flip
        if flip:
            image: Image.Image = results["img"]
            results["img"] = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            if "crop_bbox" in results:
                x1, y1, x2, y2 = results["crop_bbox"]
                width = results["crop_source_shape"][1]
                results["crop_bbox"] = (width - x2, y1, width - x1, y2)
        return results
