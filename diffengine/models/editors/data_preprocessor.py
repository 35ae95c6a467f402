"""Batches what ``PackInputs`` produced and moves it to the model's device,
for every family."""
from __future__ import annotations

import torch
from mmengine.model import BaseDataPreprocessor

from diffengine.errors import ConfigError
from diffengine.registry import MODELS


@MODELS.register_module(
    name=["DiffusionDataPreprocessor", "SDDataPreprocessor"])
class DiffusionDataPreprocessor(BaseDataPreprocessor):
    """Stacks what is one tensor a sample (images or latents, SDXL's
    ``time_ids``) into one tensor on the device; captions and seeds stay
    lists. Every family uses it.

    Also registered as ``SDDataPreprocessor``, its earlier name.

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
        for key, value in inputs.items():
            if isinstance(value, (list, tuple)) and value and all(
                    isinstance(v, torch.Tensor) for v in value):
                shapes = sorted({tuple(v.shape) for v in value})
                if len(shapes) > 1:
                    raise ConfigError(
                        f"the samples of one batch have {key} of shapes "
                        f"{shapes}: with BucketResizeCrop in the pipeline, "
                        "batch them with train_dataloader.batch_sampler="
                        "dict(type='AspectRatioBatchSampler').")
                value = torch.stack(value)
            if isinstance(value, torch.Tensor):
                inputs[key] = value.to(self.device,
                                       non_blocking=self._non_blocking)
        return {"inputs": inputs, "data_samples": data.get("data_samples")}


#: The earlier name of :class:`DiffusionDataPreprocessor`, from when only
#: Stable Diffusion used it; configs may still name it.
SDDataPreprocessor = DiffusionDataPreprocessor
