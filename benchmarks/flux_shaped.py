"""FLUX.1 [dev] and [schnell]'s architecture with random weights, for the
GPU sweep: speed, memory and FLOP figures without a download."""
from __future__ import annotations

import os

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
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from diffengine.demo import (
    FLUX_VARIANTS,
    SD3_VAE_CONFIG,
    SD15_TEXT_CONFIG,
    T5_XXL_CONFIG,
    write_char_tokenizer,
    write_t5_tokenizer,
)
from diffengine.export import save_pipeline_folder

# FLUX.1's transformer (transformer/config.json of black-forest-labs/
# FLUX.1-dev): 19 double-stream and 38 single-stream blocks of 24 heads ×
# 128 over 2×2-packed latents, T5-XXL's width as its text input, CLIP-L's
# pooled output as its pooled projection; 11,901,408,320 parameters with
# [dev]'s guidance embedding.
FLUX_TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    axes_dims_rope=(16, 56, 56),
)
# SD3's VAE (16 latent channels) with FLUX.1's scaling and shift.
FLUX_VAE_CONFIG = dict(SD3_VAE_CONFIG, scaling_factor=0.3611,
                       shift_factor=0.1159)
# T5 tokens per prompt: FluxPipeline's 512 for [dev], the model card's 256
# for [schnell].
MAX_SEQUENCE_LENGTHS = {"dev": 512, "schnell": 256}


def flux_shaped_models(variant: str = "dev",
                       tokenizer: CLIPTokenizer | None = None,
                       tokenizer_2: T5Tokenizer | None = None,
                       device: str | torch.device = "cpu",
                       **blocks: int
                       ) -> tuple[FluxTransformer2DModel, AutoencoderKL,
                                  CLIPTextModel, T5EncoderModel]:
    """The transformer, VAE, CLIP-L and T5 of FLUX.1 ``variant``, random,
    on ``device`` (``"meta"`` for shapes and parameter counts). CLIP-L
    takes ``tokenizer``'s special ids; T5 keeps T5-XXL's width and heads
    but 2 of its 24 layers (training reads its output only), with
    ``tokenizer_2``'s vocabulary (T5-XXL's 32,128 without one).
    ``num_layers`` and ``num_single_layers`` in ``blocks`` keep fewer
    double- and single-stream blocks of FLUX.1's width."""
    guided = FLUX_VARIANTS[variant]["guidance_embeds"]
    ids = {} if tokenizer is None else dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    vocab_size = 32128 if tokenizer_2 is None else len(tokenizer_2)
    with torch.device(device):
        transformer = FluxTransformer2DModel(**{
            **FLUX_TRANSFORMER_CONFIG, **blocks}, guidance_embeds=guided)
        vae = AutoencoderKL(**FLUX_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG,
                                                    **ids))
        text_encoder_2 = T5EncoderModel(T5Config(
            **T5_XXL_CONFIG, num_layers=2, vocab_size=vocab_size,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    return transformer, vae, text_encoder, text_encoder_2


# A slice of FLUX.1 [dev] a CPU can train: its width, 1 double- and 2
# single-stream blocks (of 19 and 38), 0.69 B parameters.
SLICE_BLOCKS = dict(num_layers=1, num_single_layers=2)


def make_flux_slice(path: str, seed: int = 0,
                    device: str | torch.device = "cpu") -> str:
    """:func:`make_flux_shaped` [dev] with :data:`SLICE_BLOCKS`."""
    return make_flux_shaped(path, "dev", seed, device, **SLICE_BLOCKS)


def make_flux_shaped(path: str, variant: str = "dev", seed: int = 0,
                     device: str | torch.device = "cpu",
                     **blocks: int) -> str:
    """Write FLUX.1 ``variant``'s architecture with random weights as a
    diffusers folder: 24 GB for the transformer in bfloat16 (build with
    ``torch.set_default_dtype(torch.bfloat16)`` and on ``"cuda"``), or a
    slice of it with fewer blocks (``num_layers``, ``num_single_layers``).
    The tokenizers are :func:`~diffengine.demo.write_char_tokenizer`'s and
    :func:`~diffengine.demo.write_t5_tokenizer`'s. Returns ``path``."""
    torch.manual_seed(seed)
    tokenizer = write_char_tokenizer(os.path.join(path, "tokenizer"))
    tokenizer_2 = write_t5_tokenizer(
        os.path.join(path, "tokenizer_2"),
        max_length=MAX_SEQUENCE_LENGTHS[variant])
    transformer, vae, text_encoder, text_encoder_2 = flux_shaped_models(
        variant, tokenizer, tokenizer_2, device, **blocks)
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(
            **FLUX_VARIANTS[variant]["scheduler"]),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2)
    save_pipeline_folder(pipe, path)
    return path
