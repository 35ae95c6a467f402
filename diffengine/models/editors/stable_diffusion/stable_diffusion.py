"""Stable Diffusion 1.x with LoRA adapters on the UNet and text encoder."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from diffengine.models.editors.base import (
    LatentDiffusionModel,
    TextEncoder,
    first_parameter,
    token_ids,
)
from diffengine.registry import MODELS


@MODELS.register_module()
class StableDiffusion(LatentDiffusionModel):
    """Stable Diffusion 1.x (and 2.x) trained through LoRA adapters.

    One CLIP text encoder whose last hidden states condition the UNet's
    cross-attention. Every option is :class:`LatentDiffusionModel`'s; the
    UNet's adapter is ``unet_lora_config``.
    """

    denoiser_name = "unet"
    denoiser_class = UNet2DConditionModel
    scheduler_class = DDPMScheduler
    default_schedule: ClassVar[dict] = dict(type="DDPMSchedule")
    text_encoders = (TextEncoder("text_encoder", CLIPTextModel, CLIPTokenizer),)
    pipeline_class = StableDiffusionPipeline
    pipeline_options: ClassVar[dict[str, Any]] = dict(
        safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    architecture = "stable-diffusion-v1"
    #: The pipeline's own defaults.
    sampling_defaults: ClassVar[dict[str, Any]] = dict(
        num_inference_steps=50, guidance_scale=7.5)

    def encode_text(self, text: list[str]) -> torch.Tensor:
        """CLIP's last hidden states, B × 77 × D."""
        return self.text_encoder(
            token_ids(self.tokenizer, text, self.text_encoder))[0]

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                inputs: dict, prompt: torch.Tensor) -> torch.Tensor:
        dtype = first_parameter(self.unet).dtype
        return self.unet(noisy.to(dtype), timesteps,
                         encoder_hidden_states=prompt).sample
