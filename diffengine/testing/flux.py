"""FLUX.1 [dev] and [schnell] with random weights: a tiny pipeline for
tests and docs, and FLUX.1's published architecture (or a slice of its
blocks) for speed, memory and FLOP figures."""
from __future__ import annotations

from functools import partial

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTokenizer,
    T5EncoderModel,
    T5Tokenizer,
)

from diffengine.testing import parts
from diffengine.testing.stable_diffusion import SD15_TEXT_CONFIG
from diffengine.testing.stable_diffusion_3 import (
    SD3_VAE_CONFIG,
    SD3_VAE_FACTORS,
    T5_XXL_CONFIG,
)
from diffengine.testing.tokenizers import (
    write_char_tokenizer,
    write_t5_tokenizer,
    write_tokenizers,
)

# Each FLUX.1 variant: whether the transformer embeds a guidance scale
# (FLUX.1 [dev] is guidance-distilled, [schnell] timestep-distilled) and its
# scheduler config (scheduler/scheduler_config.json of
# black-forest-labs/FLUX.1-dev and FLUX.1-schnell).
FLUX_VARIANTS = {
    "dev": dict(
        guidance_embeds=True,
        scheduler=dict(shift=3.0, use_dynamic_shifting=True,
                       base_shift=0.5, max_shift=1.15,
                       base_image_seq_len=256, max_image_seq_len=4096)),
    "schnell": dict(
        guidance_embeds=False,
        scheduler=dict(shift=1.0, use_dynamic_shifting=False,
                       base_shift=0.5, max_shift=1.15,
                       base_image_seq_len=256, max_image_seq_len=4096)),
}
# SD3's VAE (16 latent channels, no quant convolutions) with FLUX.1's
# scaling and shift.
FLUX_VAE_FACTORS = dict(SD3_VAE_FACTORS, scaling_factor=0.3611,
                        shift_factor=0.1159)

# FLUX.1's transformer (transformer/config.json of black-forest-labs/
# FLUX.1-dev): 19 double-stream and 38 single-stream blocks of 24 heads ×
# 128 over 2×2-packed latents, T5-XXL's width as its text input, CLIP-L's
# pooled output as its pooled projection; 11,901,408,320 parameters with
# [dev]'s guidance embedding.
FLUX_TRANSFORMER_CONFIG = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
    attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
    pooled_projection_dim=768, axes_dims_rope=(16, 56, 56))
FLUX_VAE_CONFIG = dict(SD3_VAE_CONFIG, **FLUX_VAE_FACTORS)
# T5-XXL's vocabulary, where no tokenizer gives one.
T5_XXL_VOCAB_SIZE = 32128
# T5 tokens per prompt: FluxPipeline's 512 for [dev], the model card's 256
# for [schnell].
MAX_SEQUENCE_LENGTHS = {"dev": 512, "schnell": 256}


def make_tiny_flux(path: str, seed: int = 0, variant: str = "dev") -> str:
    """Write a tiny FLUX.1 pipeline in diffusers format.

    Flux's layout at a toy size: a transformer with one double-stream and
    one single-stream block over 2×2-packed latents (64 input channels = 4
    × the VAE's 16), rotary axes summing to the head size of 16, a VAE with
    16 latent channels, Flux's scaling and shift factors and no quant
    convolutions, CLIP-L (its pooled output is the transformer's pooled
    projection), T5 as wide as the transformer's text input, and Flux's
    flow-matching Euler scheduler.

    Args:
        path (str): Output folder (``model_index.json`` and subfolders).
        seed (int): Seeds the random weights. Defaults to 0.
        variant (str): ``"dev"`` (guidance embedding, resolution-dependent
            shift) or ``"schnell"`` (neither). Defaults to "dev".

    Returns:
        str: ``path``.

    Raises:
        ConfigError: For a ``variant`` other than "dev" and "schnell".
    """
    parts.check_variant(variant, FLUX_VARIANTS)
    torch.manual_seed(seed)
    tokenizers = write_tokenizers(path, write_char_tokenizer,
                                  write_t5_tokenizer)
    width, t5_width = 32, 64
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=t5_width, pooled_projection_dim=width,
        guidance_embeds=FLUX_VARIANTS[variant]["guidance_embeds"],
        axes_dims_rope=(4, 6, 6))
    vae = parts.tiny_vae(latent_channels=16, sample_size=64,
                         **FLUX_VAE_FACTORS)
    text_encoder = CLIPTextModel(
        parts.tiny_clip_config(tokenizers[0], width, 2, width))
    text_encoder_2 = parts.t5_encoder(len(tokenizers[1]), d_model=t5_width,
                                      **parts.TINY_T5_CONFIG)
    return save_flux_pipeline(path, variant, transformer, vae,
                              (text_encoder, text_encoder_2),
                              tuple(tokenizers))


def flux_shaped_models(variant: str = "dev",
                       tokenizer: CLIPTokenizer | None = None,
                       tokenizer_2: T5Tokenizer | None = None,
                       device: str | torch.device = "cpu",
                       **blocks: int
                       ) -> tuple[FluxTransformer2DModel, AutoencoderKL,
                                  CLIPTextModel, T5EncoderModel]:
    """The transformer, VAE, CLIP-L and T5 of FLUX.1 ``variant``, random,
    on ``device`` (``"meta"`` for shapes and parameter counts).

    CLIP-L takes ``tokenizer``'s special ids; T5 keeps T5-XXL's width and
    heads but 2 of its 24 layers (training reads its output only), with
    ``tokenizer_2``'s vocabulary (T5-XXL's 32,128 without one).
    ``num_layers`` and ``num_single_layers`` in ``blocks`` keep fewer
    double- and single-stream blocks of FLUX.1's width.
    """
    guided = FLUX_VARIANTS[variant]["guidance_embeds"]
    ids = {} if tokenizer is None else parts.clip_special_ids(tokenizer)
    vocab_size = (T5_XXL_VOCAB_SIZE if tokenizer_2 is None
                  else len(tokenizer_2))
    with torch.device(device):
        transformer = FluxTransformer2DModel(**{
            **FLUX_TRANSFORMER_CONFIG, **blocks}, guidance_embeds=guided)
        vae = AutoencoderKL(**FLUX_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG,
                                                    **ids))
        text_encoder_2 = parts.t5_encoder(vocab_size, **T5_XXL_CONFIG,
                                          num_layers=2)
    return transformer, vae, text_encoder, text_encoder_2


def make_flux_shaped(path: str, variant: str = "dev", seed: int = 0,
                     device: str | torch.device = "cpu",
                     **blocks: int) -> str:
    """Write FLUX.1 ``variant``'s architecture with random weights as a
    diffusers folder: 24 GB for the transformer in bfloat16 (build with
    ``torch.set_default_dtype(torch.bfloat16)`` and on ``"cuda"``), or a
    slice of it with fewer blocks (``num_layers``, ``num_single_layers``).
    The tokenizers are the character-level ones of
    :mod:`diffengine.testing.tokenizers`. Returns ``path``."""
    torch.manual_seed(seed)
    tokenizers = write_tokenizers(
        path, write_char_tokenizer,
        partial(write_t5_tokenizer,
                max_length=MAX_SEQUENCE_LENGTHS[variant]))
    transformer, vae, *text_encoders = flux_shaped_models(
        variant, *tokenizers, device, **blocks)
    return save_flux_pipeline(path, variant, transformer, vae,
                              tuple(text_encoders), tuple(tokenizers))


def save_flux_pipeline(path: str, variant: str,
                       transformer: FluxTransformer2DModel,
                       vae: AutoencoderKL,
                       text_encoders: tuple[CLIPTextModel, T5EncoderModel],
                       tokenizers: tuple[CLIPTokenizer, T5Tokenizer]) -> str:
    """Save the parts as a diffusers FLUX.1 pipeline folder with the
    flow-matching Euler scheduler of ``variant`` (a key of
    :data:`FLUX_VARIANTS`); returns ``path``."""
    scheduler = FlowMatchEulerDiscreteScheduler(
        **FLUX_VARIANTS[variant]["scheduler"])
    return parts.save_parts(
        FluxPipeline, path, transformer=transformer, scheduler=scheduler,
        vae=vae, **parts.numbered("text_encoder", text_encoders),
        **parts.numbered("tokenizer", tokenizers))
