"""Geometric image transforms on PIL images (no torchvision needed)."""
from __future__ import annotations

import random

from mmcv.transforms import BaseTransform
from PIL import Image

from diffengine.registry import TRANSFORMS

INTERPOLATIONS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@TRANSFORMS.register_module()
class ResizeShortestEdge(BaseTransform):
    """Resize so that the shorter side equals ``size``, keeping the aspect.

    Args:
        size (int): Target length of the shorter side.
        interpolation (str): One of ``nearest``, ``bilinear``, ``bicubic``,
            ``lanczos``. Defaults to "bilinear", as diffusers' scripts.
    """

    def __init__(self, size: int, interpolation: str = "bilinear") -> None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation={interpolation!r}; choose one of "
                f"{sorted(INTERPOLATIONS)}.")
        self.size = size
        self.interpolation = interpolation

    def transform(self, results: dict) -> dict:
        image: Image.Image = results["img"]
        width, height = image.size
        scale = self.size / min(width, height)
        new_size = (max(self.size, round(width * scale)),
                    max(self.size, round(height * scale)))
        results["ori_img_shape"] = (height, width)
        results["img"] = image.resize(new_size,
                                      INTERPOLATIONS[self.interpolation])
        return results


class _Crop(BaseTransform):
    """Crop ``size`` × ``size`` (or (h, w)) at a place the subclass picks.

    Records ``crop_bbox`` as (x1, y1, x2, y2) in the resized image.
    """

    def __init__(self, size: int | tuple[int, int]) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)

    def top_left(self, height: int, width: int) -> tuple[int, int]:
        raise NotImplementedError

    def transform(self, results: dict) -> dict:
        image: Image.Image = results["img"]
        crop_h, crop_w = self.size
        width, height = image.size
        if width < crop_w or height < crop_h:
            raise ValueError(
                f"{type(self).__name__}: image of {width}×{height} is smaller "
                f"than the crop {crop_w}×{crop_h}; resize it first "
                "(ResizeShortestEdge with size >= the crop).")
        top, left = self.top_left(height, width)
        box = (left, top, left + crop_w, top + crop_h)
        results["img"] = image.crop(box)
        results["crop_bbox"] = box
        return results


@TRANSFORMS.register_module()
class RandomCrop(_Crop):
    """Crop at a uniformly random place."""

    def top_left(self, height: int, width: int) -> tuple[int, int]:
        return (random.randint(0, height - self.size[0]),
                random.randint(0, width - self.size[1]))


@TRANSFORMS.register_module()
class CenterCrop(_Crop):
    """Crop at the centre."""

    def top_left(self, height: int, width: int) -> tuple[int, int]:
        return ((height - self.size[0]) // 2, (width - self.size[1]) // 2)


@TRANSFORMS.register_module()
class RandomHorizontalFlip(BaseTransform):
    """Mirror left-right with probability ``p``; records ``flip``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p={p} is not a probability in [0, 1].")
        self.p = p

    def transform(self, results: dict) -> dict:
        flip = random.random() < self.p
        results["flip"] = flip
        if flip:
            image: Image.Image = results["img"]
            results["img"] = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return results
