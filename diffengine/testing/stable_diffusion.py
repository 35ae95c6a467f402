"""Stable Diffusion 1.x with random weights: a tiny pipeline for tests and
docs, and v1.5's published architecture for speed and memory figures."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from diffengine.testing import parts
from diffengine.testing.tokenizers import write_char_tokenizer, write_tokenizers

# The published Stable Diffusion v1.5 configs (unet/, vae/ and text_encoder/
# config.json of stable-diffusion-v1-5; the text encoder is CLIP ViT-L/14's).
SD15_UNET_CONFIG = dict(
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", ) * 3 + ("DownBlock2D", ),
    up_block_types=("UpBlock2D", ) + ("CrossAttnUpBlock2D", ) * 3,
    cross_attention_dim=768, attention_head_dim=8, in_channels=4,
    out_channels=4, sample_size=64, norm_num_groups=32)
SD15_VAE_CONFIG = dict(
    block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D", ) * 4,
    up_block_types=("UpDecoderBlock2D", ) * 4, in_channels=3,
    out_channels=3, latent_channels=4, sample_size=512, norm_num_groups=32)
SD15_TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072,
    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
    hidden_act="quick_gelu", projection_dim=768)


def make_tiny_sd(path: str,
                 block_out_channels: Sequence[int] = (32, 64),
                 text_hidden_size: int = 32,
                 text_layers: int = 5,
                 vae_block_out_channels: Sequence[int] = (32, 64),
                 seed: int = 0) -> str:
    """Write a tiny Stable Diffusion 1.x pipeline in diffusers format.

    SD 1.x's layout (CLIP text encoder, KL VAE, cross-attention UNet, PNDM
    inference scheduler) at a size that trains a step in a fraction of a
    second on a CPU.

    Args:
        path (str): Output folder (``model_index.json`` and subfolders).
        block_out_channels (Sequence[int]): UNet widths, one per level.
        text_hidden_size (int): CLIP width, also the UNet's cross-attention
            width.
        text_layers (int): CLIP transformer layers.
        vae_block_out_channels (Sequence[int]): VAE widths; the VAE halves
            the resolution once per level after the first, so four levels
            (e.g. ``(32, 32, 64, 64)``) give SD's 8× smaller latents.
        seed (int): Seeds the random weights.

    Returns:
        str: ``path``.
    """
    torch.manual_seed(seed)
    tokenizer, = write_tokenizers(path, write_char_tokenizer)
    levels = len(block_out_channels)
    unet = UNet2DConditionModel(
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", ) + ("CrossAttnDownBlock2D", ) *
        (levels - 1),
        up_block_types=("CrossAttnUpBlock2D", ) * (levels - 1) +
        ("UpBlock2D", ),
        cross_attention_dim=text_hidden_size,
        attention_head_dim=8,
        norm_num_groups=min(32, min(block_out_channels)))
    vae = parts.tiny_vae(vae_block_out_channels, latent_channels=4,
                         sample_size=64)
    text_encoder = CLIPTextModel(parts.tiny_clip_config(
        tokenizer, text_hidden_size, text_layers, text_hidden_size,
        mlp_ratio=4))
    return save_pipeline(path, unet, vae, text_encoder, tokenizer)


def make_sd15_shaped(path: str,
                     seed: int = 0,
                     device: str | torch.device = "cpu") -> str:
    """Write Stable Diffusion v1.5's architecture with random weights.

    Same layers and shapes as the published model (860 M UNet, 84 M VAE,
    123 M CLIP text encoder), so speed, memory and parameter counts match,
    without a download; the tokenizer is the character-level one of
    :func:`~diffengine.testing.tokenizers.write_char_tokenizer` (its ids
    are a subset of CLIP's 49,408). About 4.3 GB in float32.

    Args:
        path (str): Output folder.
        seed (int): Seeds the random weights.
        device (str | torch.device): Where the weights are initialised;
            ``"cuda"`` is much faster than a CPU at this size.

    Returns:
        str: ``path``.
    """
    torch.manual_seed(seed)
    tokenizer, = write_tokenizers(path, write_char_tokenizer)
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **SD15_TEXT_CONFIG, **parts.clip_special_ids(tokenizer)))
    return save_pipeline(path, unet, vae, text_encoder, tokenizer)


def save_pipeline(path: str, unet: UNet2DConditionModel, vae: AutoencoderKL,
                  text_encoder: CLIPTextModel,
                  tokenizer: CLIPTokenizer) -> str:
    """Save the parts as a diffusers SD 1.x pipeline folder with SD's
    schedulers; returns ``path``."""
    # SD 1.x trains with a scaled-linear DDPM schedule and ships PNDM for
    # inference; keep both so the small models behave like the real one.
    betas = dict(beta_start=0.00085, beta_end=0.012,
                 beta_schedule="scaled_linear", num_train_timesteps=1000)
    scheduler = PNDMScheduler(skip_prk_steps=True, steps_offset=1, **betas)
    assert DDPMScheduler.from_config(scheduler.config).config.beta_end == 0.012
    return parts.save_parts(
        StableDiffusionPipeline, path, vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
