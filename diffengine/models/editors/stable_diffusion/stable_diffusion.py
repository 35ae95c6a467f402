"""Stable Diffusion 1.x with LoRA adapters on the UNet and text encoder."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPTextModel

from diffengine.models.editors.base import LatentDiffusionModel, first_parameter
from diffengine.registry import MODELS


@MODELS.register_module()
class StableDiffusion(LatentDiffusionModel):
    """Stable Diffusion 1.x (and 2.x) trained through LoRA adapters.

    One CLIP text encoder whose last hidden states condition the UNet's
    cross-attention. Every option is :class:`LatentDiffusionModel`'s.
    """

    pipeline_class = StableDiffusionPipeline
    architecture = "stable-diffusion-v1"
    text_encoder_classes: ClassVar[dict] = {"text_encoder": CLIPTextModel}

    def encode_text(self, text: list[str]) -> torch.Tensor:
        """CLIP's last hidden states, B × 77 × D."""
        input_ids = self.tokenizer(
            text,
            max_length=self.tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt").input_ids.to(
                first_parameter(self.text_encoder).device)
        return self.text_encoder(input_ids)[0]

    def unet_conditioning(self, inputs: dict,
                          prompt: torch.Tensor) -> dict[str, Any]:
        return {"encoder_hidden_states": prompt}

    def pipeline_parts(self) -> dict[str, Any]:
        return dict(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False)
