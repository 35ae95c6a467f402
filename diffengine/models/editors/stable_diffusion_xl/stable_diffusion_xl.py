"""Stable Diffusion XL with LoRA adapters on the UNet and text encoders."""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from diffengine.errors import ConfigError
from diffengine.models.editors.base import (
    LatentDiffusionModel,
    TextEncoder,
    first_parameter,
    token_ids,
)
from diffengine.registry import MODELS


@MODELS.register_module()
class StableDiffusionXL(LatentDiffusionModel):
    """Stable Diffusion XL trained through LoRA adapters.

    Two text encoders (CLIP ViT-L and OpenCLIP ViT-bigG with its projection):
    their penultimate hidden states, concatenated, condition the UNet's
    cross-attention, and the second one's pooled, projected output goes to
    the UNet's added conditioning with the ``time_ids`` (original size, crop
    top-left, target size) that ``ComputeTimeIds`` records per sample.
    ``text_encoder_lora_config`` adapts both text encoders alike, as
    diffusers' and kohya's SDXL scripts do.

    SDXL's VAE overflows in float16: with ``weight_dtype="float16"`` a VAE
    whose config sets ``force_upcast`` (the SDXL base's does) stays in
    float32, as diffusers' pipeline upcasts it; a VAE made for fp16 (e.g.
    ``vae_model="madebyollin/sdxl-vae-fp16-fix"``) is kept in float16.

    Args:
        model (str): Hub id or local diffusers folder of the SDXL base.
        vae_model (str, optional): Hub id or folder of a VAE to use instead
            of the base's (a folder holding the VAE's ``config.json``).
            Defaults to None.
        **kwargs: Every option of :class:`LatentDiffusionModel`.
    """

    denoiser_name = "unet"
    denoiser_class = UNet2DConditionModel
    scheduler_class = DDPMScheduler
    default_schedule: ClassVar[dict] = dict(type="DDPMSchedule")
    text_encoders = (
        TextEncoder("text_encoder", CLIPTextModel, CLIPTokenizer),
        TextEncoder("text_encoder_2", CLIPTextModelWithProjection,
                    CLIPTokenizer),
    )
    pipeline_class = StableDiffusionXLPipeline
    pipeline_options: ClassVar[dict[str, Any]] = dict(add_watermarker=False)
    architecture = "stable-diffusion-xl-v1-base"
    #: The pipeline's own defaults.
    sampling_defaults: ClassVar[dict[str, Any]] = dict(
        num_inference_steps=50, guidance_scale=7.5)

    def __init__(self, model: str, vae_model: str | None = None,
                 **kwargs: Any) -> None:
        self.vae_model = vae_model
        super().__init__(model, **kwargs)

    def load_parts(self, model: str, dtype: torch.dtype) -> None:
        super().load_parts(model, dtype)
        if self.unet.config.addition_embed_type != "text_time":
            raise ConfigError(
                f"model={model!r} is not an SDXL model: its UNet's "
                f"addition_embed_type is "
                f"{self.unet.config.addition_embed_type!r}, not 'text_time'; "
                "use type='StableDiffusion' for SD 1.x/2.x.")

    def load_vae(self, model: str, dtype: torch.dtype) -> AutoencoderKL:
        """``vae_model`` or the base's VAE; float32 under a float16 base
        when its config sets ``force_upcast``."""
        source = dict(pretrained_model_name_or_path=self.vae_model) if (
            self.vae_model) else dict(pretrained_model_name_or_path=model,
                                      subfolder="vae")
        upcast = AutoencoderKL.load_config(**source).get("force_upcast", False)
        vae_dtype = torch.float32 if (
            dtype == torch.float16 and upcast) else dtype
        vae = AutoencoderKL.from_pretrained(**source, torch_dtype=vae_dtype)
        if vae_dtype != dtype:
            # diffusers' SDXL pipeline casts latents for a float16 VAE it
            # upcasts itself, not for one that is float32 already
            first = vae.post_quant_conv or vae.decoder
            first.register_forward_pre_hook(_to_own_dtype)
        return vae

    def encode_text(self, text: list[str]
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Both encoders' penultimate hidden states, concatenated (B × 77 ×
        D1+D2), and the second's pooled projection (B × P)."""
        hidden_states = []
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder),
                                   (self.tokenizer_2, self.text_encoder_2)):
            output = encoder(token_ids(tokenizer, text, encoder),
                             output_hidden_states=True)
            hidden_states.append(output.hidden_states[-2])
        # the projection model's first output: its pooled text embedding
        return torch.cat(hidden_states, dim=-1), output[0]

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                inputs: dict, prompt: tuple[torch.Tensor, torch.Tensor]
                ) -> torch.Tensor:
        """The UNet's prediction, conditioned on the prompt's hidden states
        and, through its added conditioning, on the pooled projection and
        each sample's ``time_ids``."""
        if "time_ids" not in inputs:
            raise ConfigError(
                "StableDiffusionXL needs each sample's time_ids: add "
                "dict(type='ComputeTimeIds') to the dataset pipeline, after "
                "the resize, crop and flip and before "
                "ImageToNormalizedTensor.")
        embeddings, pooled = prompt
        time_ids = inputs["time_ids"].to(embeddings.device, embeddings.dtype)
        dtype = first_parameter(self.unet).dtype
        return self.unet(noisy.to(dtype), timesteps,
                         encoder_hidden_states=embeddings,
                         added_cond_kwargs={"text_embeds": pooled,
                                            "time_ids": time_ids}).sample


def _to_own_dtype(module: torch.nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: the tensor inputs in the module's own dtype."""
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if torch.is_tensor(a) else a for a in args)
