"""Aspect-ratio buckets: each image trains at the size nearest its shape.

A square crop cuts the head off a portrait and the sides off a landscape.
With buckets, each image goes to the bucket (a training size) whose aspect
ratio is nearest its own, is resized to cover it and cropped to it, so it
loses at most a sliver; ``AspectRatioBatchSampler`` then batches images of
one bucket together.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

from mmcv.transforms import BaseTransform
from PIL import Image

from diffengine.datasets.transforms.processing import (
    FIXED,
    INTERPOLATIONS,
    check_aspect_ratio,
    check_vae_multiple,
    sample_randomness,
)
from diffengine.errors import ConfigError, DataError
from diffengine.registry import TRANSFORMS


def kohya_bucket_sizes(resolution: int | tuple[int, int],
                       min_bucket_reso: int = 256,
                       max_bucket_reso: int = 1024,
                       bucket_reso_steps: int = 64) -> list[tuple[int, int]]:
    """The buckets kohya-ss's scripts make, as (height, width).

    Every width from ``min_bucket_reso`` to ``max_bucket_reso`` in steps of
    ``bucket_reso_steps``, each with the largest height (a multiple of the
    step, at most ``max_bucket_reso``) whose area is at most the
    resolution's, and the transposed size; plus the largest square.

    Args:
        resolution (int | tuple[int, int]): The side, or (height, width),
            whose area every bucket's is at most.
        min_bucket_reso (int): Shortest bucket side. Defaults to 256.
        max_bucket_reso (int): Longest bucket side. Defaults to 1024.
        bucket_reso_steps (int): Bucket sides are multiples of it. Defaults
            to 64.

    Returns:
        list[tuple[int, int]]: (height, width) sizes, sorted by width.
    """
    height, width = ((resolution, resolution) if isinstance(resolution, int)
                     else tuple(resolution))
    max_area = height * width
    step = bucket_reso_steps
    side = int(math.sqrt(max_area) // step) * step
    sizes = {(side, side)}
    for bucket_width in range(min_bucket_reso, max_bucket_reso + 1, step):
        bucket_height = min(max_bucket_reso,
                            max_area // bucket_width // step * step)
        if bucket_height >= min_bucket_reso:
            sizes.add((bucket_height, bucket_width))
            sizes.add((bucket_width, bucket_height))
    return sorted(sizes, key=lambda s: (s[1], s[0]))


@TRANSFORMS.register_module()
class BucketResizeCrop(BaseTransform):
    """Resize and crop each image to its aspect-ratio bucket.

    The buckets are ``sizes`` when given (as the original diffengine's
    ``MultiAspectRatioResizeCenterCrop``), else kohya's
    (:func:`kohya_bucket_sizes`). An image goes to the bucket nearest its
    aspect ratio (by the difference of the logarithms, so that a portrait
    and its landscape twin are treated alike), is resized so that it covers
    the bucket, keeping its aspect, and is cropped to it. An image that
    would have to be enlarged to cover its bucket gets, unless ``upscale``,
    a bucket of its own size instead (as kohya's ``bucket_no_upscale``),
    shrunk to the largest bucket's area where it is larger and rounded down
    to ``bucket_reso_steps``. An image more than ``MAX_ASPECT_RATIO`` (8)
    times longer than wide is refused (``DataError``): the dataset's
    pre-flight scan skips it. Records ``crop_bbox``,
    ``crop_source_shape`` and ``ori_img_shape`` as the crops do, so that
    ``RandomHorizontalFlip`` and ``ComputeTimeIds`` (SDXL) read them.

    Use it with ``batch_sampler=dict(type="AspectRatioBatchSampler")``,
    which batches the images of one bucket together.

    Args:
        resolution (int | tuple[int, int]): Bucket areas are about
            ``resolution²`` (or height × width). Defaults to 512.
        min_bucket_reso (int): Shortest side of a generated bucket.
            Defaults to 256.
        max_bucket_reso (int): Longest side of a generated bucket. Defaults
            to 1024.
        bucket_reso_steps (int): Bucket sides are multiples of it, itself a
            multiple of 8 (the VAE's factor); 64 fits every SD UNet.
            Defaults to 64.
        sizes (Sequence[tuple[int, int]], optional): The buckets as
            (height, width), multiples of 8, instead of generated ones.
            Defaults to None.
        random_crop (bool): Crop at a random place (drawn from the sample's
            seed) instead of the centre; a latent cache crops at the centre.
            Defaults to False.
        upscale (bool): Enlarge images smaller than their bucket to it
            instead of giving them a bucket of their own size. Defaults to
            False.
        interpolation (str): One of ``nearest``, ``bilinear``, ``bicubic``,
            ``lanczos``. Defaults to "bilinear".
    """

    latent_cache: ClassVar[str] = FIXED

    def __init__(self,
                 resolution: int | tuple[int, int] = 512,
                 min_bucket_reso: int = 256,
                 max_bucket_reso: int = 1024,
                 bucket_reso_steps: int = 64,
                 sizes: Sequence[tuple[int, int]] | None = None,
                 random_crop: bool = False,
                 upscale: bool = False,
                 interpolation: str = "bilinear") -> None:
        if interpolation not in INTERPOLATIONS:
            raise ConfigError(
                f"interpolation={interpolation!r}; choose one of "
                f"{sorted(INTERPOLATIONS)}.")
        if bucket_reso_steps <= 0:
            raise ConfigError(
                f"bucket_reso_steps={bucket_reso_steps} must be > 0.")
        check_vae_multiple("BucketResizeCrop", "bucket_reso_steps",
                           bucket_reso_steps)
        if sizes is None:
            for name, value in (("min_bucket_reso", min_bucket_reso),
                                ("max_bucket_reso", max_bucket_reso)):
                if value <= 0 or value % bucket_reso_steps:
                    raise ConfigError(
                        f"{name}={value} must be a positive multiple of "
                        f"bucket_reso_steps={bucket_reso_steps}.")
            if min_bucket_reso > max_bucket_reso:
                raise ConfigError(
                    f"min_bucket_reso={min_bucket_reso} is larger than "
                    f"max_bucket_reso={max_bucket_reso}.")
            buckets = kohya_bucket_sizes(resolution, min_bucket_reso,
                                         max_bucket_reso, bucket_reso_steps)
        else:
            buckets = [tuple(int(v) for v in size) for size in sizes]
            if not buckets or any(
                    len(s) != 2 or min(s) <= 0 for s in buckets):
                raise ConfigError(
                    f"sizes={sizes!r}: give a list of (height, width) pairs "
                    "of positive sizes.")
            for size in buckets:
                check_vae_multiple("BucketResizeCrop", "sizes", size)
        self.resolution = resolution
        self.min_bucket_reso = min_bucket_reso
        self.max_bucket_reso = max_bucket_reso
        self.bucket_reso_steps = bucket_reso_steps
        self.sizes = None if sizes is None else [list(s) for s in buckets]
        self.random_crop = random_crop
        self.upscale = upscale
        self.interpolation = interpolation
        self.buckets = buckets

    def bucket_of(self, width: int, height: int) -> tuple[int, int]:
        """The bucket (height, width) of an image of ``width`` × ``height``.

        Raises:
            DataError: If the image's aspect ratio is beyond
                ``MAX_ASPECT_RATIO``, or a side of it is smaller than
                ``bucket_reso_steps`` and may not be enlarged.
        """
        check_aspect_ratio("BucketResizeCrop", width, height)
        aspect = math.log(width / height)
        bucket = min(self.buckets,
                     key=lambda s: abs(math.log(s[1] / s[0]) - aspect))
        if self.upscale or (width >= bucket[1] and height >= bucket[0]):
            return bucket
        # its own size, shrunk to the largest bucket's area where it is
        # larger (as kohya's bucket_no_upscale), each side rounded down to
        # the step but not below it
        largest_area = max(h * w for h, w in self.buckets)
        scale = min(1.0, math.sqrt(largest_area / (width * height)))
        step = self.bucket_reso_steps

        def fit(side: int) -> int:
            return max(int(side * scale) // step, min(side // step, 1)) * step

        own = (fit(height), fit(width))
        if min(own) == 0:
            side, length = (("height", height) if own[0] == 0
                            else ("width", width))
            raise DataError(
                f"{width}×{height}: its {side} {length} is below "
                f"bucket_reso_steps={step}; enlarge it, drop it, or set "
                "BucketResizeCrop upscale=True.")
        return own

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) of the bucket of an image of ``width`` ×
        ``height``.

        Raises:
            DataError: As :meth:`bucket_of`.
        """
        bucket_h, bucket_w = self.bucket_of(width, height)
        return bucket_w, bucket_h

    def transform(self, results: dict) -> dict:
        image: Image.Image = results["img"]
        width, height = image.size
        results.setdefault("ori_img_shape", (height, width))
        bucket_h, bucket_w = self.bucket_of(width, height)
        scale = max(bucket_w / width, bucket_h / height)
        if scale != 1:
            # covers the bucket: the side that fits exactly, the other longer
            size = (max(bucket_w, round(width * scale)),
                    max(bucket_h, round(height * scale)))
            image = image.resize(size, INTERPOLATIONS[self.interpolation])
            width, height = size
        if self.random_crop:
            randomness = sample_randomness(results)
            top = randomness.randint(height - bucket_h + 1).item()
            left = randomness.randint(width - bucket_w + 1).item()
        else:
            top, left = (height - bucket_h) // 2, (width - bucket_w) // 2
        box = (left, top, left + bucket_w, top + bucket_h)
        results["img"] = image.crop(box)
        results["crop_bbox"] = box
        results["crop_source_shape"] = (height, width)
        return results

    def for_latent_cache(self) -> BucketResizeCrop:
        """The fixed version that a latent cache uses: a centre crop."""
        if not self.random_crop:
            return self
        options = {k: v for k, v in vars(self).items() if k != "buckets"}
        return BucketResizeCrop(**dict(options, random_crop=False))
