"""Batches what ``PackInputs`` produced and moves it to the model's device."""
from __future__ import annotations

import torch
from mmengine.model import BaseDataPreprocessor

from diffengine.registry import MODELS

# Inputs that are one tensor a sample: pixels, or their cached latents.
TENSOR_KEYS = ("img", "latents")


@MODELS.register_module()
class SDDataPreprocessor(BaseDataPreprocessor):
    """Stacks images (or latents) into one tensor on the device; captions
    stay strings.

    Args:
        non_blocking (bool): Copy to the device asynchronously, which
            overlaps the copy with compute when the DataLoader pins memory.
            Defaults to True.
    """

    def __init__(self, non_blocking: bool = True) -> None:
        super().__init__(non_blocking=non_blocking)

    def forward(self, data: dict, training: bool = False) -> dict:
        """Return ``{"inputs": {"img" or "latents": B×C×H×W tensor,
        "text": [str], ...}}``."""
        inputs = dict(data["inputs"])
        for key in TENSOR_KEYS:
            if key not in inputs:
                continue
            value = inputs[key]
            if isinstance(value, (list, tuple)):
                value = torch.stack(value)
            inputs[key] = value.to(self.device, non_blocking=self._non_blocking)
        return {"inputs": inputs, "data_samples": data.get("data_samples")}
