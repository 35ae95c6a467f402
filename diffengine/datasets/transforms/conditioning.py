"""Micro-conditioning of SDXL: the image's size and crop, as the UNet sees
them."""
from __future__ import annotations

from typing import ClassVar

import torch
from mmcv.transforms import BaseTransform

from diffengine.datasets.transforms.processing import FIXED
from diffengine.registry import TRANSFORMS


@TRANSFORMS.register_module()
class ComputeTimeIds(BaseTransform):
    """SDXL's ``time_ids``: original size, crop top-left, target size.

    ``(orig_h, orig_w, crop_top, crop_left, target_h, target_w)`` as
    float32 (Podell et al., 2023, "SDXL", section 2.2): the size of the
    image file (``ori_img_shape``, recorded by the resize or the crop), the
    top-left corner of the crop in the resized image (``crop_bbox``,
    mirrored when flipped; (0, 0) without a crop) and the size of the
    training image. Put it after the geometric transforms and before
    ``ImageToNormalizedTensor``; with ``cache_latents`` each cached view
    keeps its own.
    """

    latent_cache: ClassVar[str] = FIXED

    def transform(self, results: dict) -> dict:
        width, height = results["img"].size
        original = results.get("ori_img_shape", (height, width))
        left, top = results.get("crop_bbox", (0, 0))[:2]
        results["time_ids"] = torch.tensor(
            [*original, top, left, height, width], dtype=torch.float32)
        return results
