"""Batches what ``PackInputs`` produced and moves it to the model's device."""
from __future__ import annotations

import torch
from mmengine.model import BaseDataPreprocessor

from diffengine.registry import MODELS


@MODELS.register_module()
class SDDataPreprocessor(BaseDataPreprocessor):
    """Stacks images into one tensor on the device; captions stay strings."""

    def forward(self, data: dict, training: bool = False) -> dict:
        """Return ``{"inputs": {"img": B×3×H×W tensor, "text": [str]}}``."""
        inputs = dict(data["inputs"])
        img = inputs["img"]
        if isinstance(img, (list, tuple)):
            img = torch.stack(img)
        inputs["img"] = img.to(self.device, non_blocking=self._non_blocking)
        return {"inputs": inputs, "data_samples": data.get("data_samples")}
