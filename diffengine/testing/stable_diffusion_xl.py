"""Stable Diffusion XL with random weights: a tiny pipeline for tests and
docs, and base 1.0's published architecture for speed and memory
figures."""
from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from diffengine.testing import parts
from diffengine.testing.stable_diffusion import (
    SD15_TEXT_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
)
from diffengine.testing.tokenizers import write_char_tokenizer, write_tokenizers

# Stable Diffusion XL base 1.0's configs (unet/, vae/, text_encoder/ and
# text_encoder_2/ config.json of stabilityai/stable-diffusion-xl-base-1.0):
# SD v1.5's with these differences; the first text encoder is CLIP
# ViT-L/14 as in v1.5, the second OpenCLIP bigG.
SDXL_UNET_CONFIG = dict(
    SD15_UNET_CONFIG,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D",
                      "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    sample_size=128)
SDXL_VAE_CONFIG = dict(SD15_VAE_CONFIG, sample_size=1024,
                       scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT_CONFIG = dict(SD15_TEXT_CONFIG)
SDXL_TEXT_2_CONFIG = dict(
    SD15_TEXT_CONFIG, hidden_size=1280, intermediate_size=5120,
    num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
    projection_dim=1280)


def make_tiny_sdxl(path: str, seed: int = 0) -> str:
    """Write a tiny Stable Diffusion XL pipeline in diffusers format.

    SDXL's layout at a toy size: two CLIP text encoders (the second with a
    projection, whose pooled output and the ``time_ids`` feed the UNet's
    ``text_time`` added conditioning), a UNet with two transformer layers in
    its cross-attention level and a VAE with 8× smaller latents and SDXL's
    scaling factor and ``force_upcast``.

    Returns:
        str: ``path``.
    """
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = write_tokenizers(path, write_char_tokenizer,
                                              write_char_tokenizer)
    width, width_2, projection, time_dim = 32, 32, 32, 8
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=projection + 6 * time_dim,
        cross_attention_dim=width + width_2,
        norm_num_groups=32)
    vae = parts.tiny_vae(latent_channels=4, sample_size=256,
                         scaling_factor=0.13025, force_upcast=True)
    text_encoder = CLIPTextModel(
        parts.tiny_clip_config(tokenizer, width, 3, projection))
    text_encoder_2 = CLIPTextModelWithProjection(
        parts.tiny_clip_config(tokenizer, width_2, 3, projection))
    return save_sdxl_pipeline(path, unet, vae, text_encoder, text_encoder_2,
                              tokenizer, tokenizer_2)


def make_sdxl_shaped(path: str,
                     seed: int = 0,
                     device: str | torch.device = "cpu") -> str:
    """Write Stable Diffusion XL base 1.0's architecture with random weights.

    Same layers and shapes as the published model (2.57 B UNet, 84 M VAE,
    123 M and 695 M text encoders), for speed, memory and parameter
    figures without a download; the tokenizers are the character-level one
    of :func:`~diffengine.testing.tokenizers.write_char_tokenizer`. About
    14 GB in float32.

    Returns:
        str: ``path``.
    """
    torch.manual_seed(seed)
    tokenizer, tokenizer_2 = write_tokenizers(path, write_char_tokenizer,
                                              write_char_tokenizer)
    ids = parts.clip_special_ids(tokenizer)
    with torch.device(device):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        vae = AutoencoderKL(**SDXL_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_CONFIG, **ids))
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**SDXL_TEXT_2_CONFIG, **ids))
    return save_sdxl_pipeline(path, unet, vae, text_encoder, text_encoder_2,
                              tokenizer, tokenizer_2)


def save_sdxl_pipeline(path: str, unet: UNet2DConditionModel,
                       vae: AutoencoderKL, text_encoder: CLIPTextModel,
                       text_encoder_2: CLIPTextModelWithProjection,
                       tokenizer: CLIPTokenizer,
                       tokenizer_2: CLIPTokenizer) -> str:
    """Save the parts as a diffusers SDXL pipeline folder with SDXL's
    schedulers (scaled-linear DDPM for training, Euler for inference);
    returns ``path``."""
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return parts.save_parts(
        StableDiffusionXLPipeline, path, vae=vae, text_encoder=text_encoder,
        text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
        add_watermarker=False)
