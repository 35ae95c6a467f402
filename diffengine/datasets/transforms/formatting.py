"""Turning a transformed sample into model inputs."""
from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from mmcv.transforms import BaseTransform

from diffengine.datasets.transforms.processing import FIXED
from diffengine.registry import TRANSFORMS


@TRANSFORMS.register_module()
class ImageToNormalizedTensor(BaseTransform):
    """PIL RGB image → float32 C×H×W tensor in [-1, 1], as SD's VAE expects."""

    latent_cache: ClassVar[str] = FIXED

    def transform(self, results: dict) -> dict:
        array = np.asarray(results["img"], dtype=np.float32)
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()
        results["img"] = tensor / 127.5 - 1.0
        return results


@TRANSFORMS.register_module()
class PackInputs(BaseTransform):
    """Collect ``keys`` into ``{"inputs": {...}}`` for the data preprocessor.

    Args:
        keys (Sequence[str]): Result keys the model reads. Defaults to
            ("img", "text").
        optional_keys (Sequence[str]): Keys packed when present; ``seed``
            (set by ``DeterministicSampler``) seeds the sample's noise;
            ``time_ids`` (set by ``ComputeTimeIds``) are SDXL's size and
            crop conditioning; ``loss_weight`` (set by DreamBooth's class
            images and the padding of ``AspectRatioBatchSampler``) weighs
            the sample's loss. Defaults to ("seed", "time_ids",
            "loss_weight").
    """

    def __init__(self,
                 keys: Sequence[str] = ("img", "text"),
                 optional_keys: Sequence[str] = ("seed", "time_ids",
                                                 "loss_weight")) -> None:
        self.keys = tuple(keys)
        self.optional_keys = tuple(optional_keys)

    def transform(self, results: dict) -> dict:
        missing = [k for k in self.keys if k not in results]
        if missing:
            raise KeyError(
                f"PackInputs: {missing} not in the sample; it has "
                f"{sorted(results)}.")
        keys = self.keys + tuple(k for k in self.optional_keys if k in results)
        return {"inputs": {k: results[k] for k in keys}}
