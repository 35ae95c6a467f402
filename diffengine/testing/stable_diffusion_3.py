"""Stable Diffusion 3 with random weights: a tiny pipeline (SD3 Medium's or
SD3.5 Medium's blocks) for tests and docs, and SD3.5 Medium's published
architecture for speed and memory figures."""
from __future__ import annotations

from functools import partial

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5EncoderModel,
    T5Tokenizer,
)

from diffengine.testing import parts
from diffengine.testing.stable_diffusion import (
    SD15_TEXT_CONFIG,
    SD15_VAE_CONFIG,
)
from diffengine.testing.stable_diffusion_xl import SDXL_TEXT_2_CONFIG
from diffengine.testing.tokenizers import (
    write_char_tokenizer,
    write_t5_tokenizer,
    write_tokenizers,
)

# The shape of each tiny SD3 variant's transformer: SD3 Medium's blocks, or
# SD3.5 Medium's with RMS-normalised queries and keys and a second attention
# on the image tokens in the first block (its ``dual_attention_layers``).
SD3_VARIANTS = {
    "sd3": dict(qk_norm=None, dual_attention_layers=()),
    "sd3.5": dict(qk_norm="rms_norm", dual_attention_layers=(0, )),
}
# SD3's VAE: 16 latent channels, no quant convolutions, its latent scaling
# and shift.
SD3_VAE_FACTORS = dict(scaling_factor=1.5305, shift_factor=0.0609,
                       use_quant_conv=False, use_post_quant_conv=False)

# Stable Diffusion 3.5 Medium's configs (transformer/, vae/, text_encoder*/
# config.json of stabilityai/stable-diffusion-3.5-medium): 2.24 B
# transformer, 84 M VAE, CLIP ViT-L/14 and OpenCLIP bigG with projections.
SD35_MEDIUM_TRANSFORMER_CONFIG = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16,
    num_layers=24, num_attention_heads=24, attention_head_dim=64,
    joint_attention_dim=4096, caption_projection_dim=1536,
    pooled_projection_dim=2048, pos_embed_max_size=384, qk_norm="rms_norm",
    dual_attention_layers=tuple(range(13)))
SD3_VAE_CONFIG = dict(SD15_VAE_CONFIG, latent_channels=16, sample_size=1024,
                      **SD3_VAE_FACTORS)
# T5-XXL's encoder has 24 such layers (4.8 B parameters, 19 GB in float32);
# the SD3.5- and FLUX.1-shaped models keep its width and heads and 2 of its
# layers: training reads its output only.
T5_XXL_CONFIG = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64,
                     feed_forward_proj="gated-gelu")


def make_tiny_sd3(path: str, seed: int = 0, variant: str = "sd3.5") -> str:
    """Write a tiny Stable Diffusion 3 pipeline in diffusers format.

    SD3's layout at a toy size: an MMDiT transformer (patch 2, 16 latent
    channels, 2 blocks, the last one's text stream ending after its
    attention), a VAE with 16 latent channels, SD3's scaling and shift
    factors and no quant convolutions, CLIP-L and CLIP-G with projections
    (their pooled outputs concatenated are the transformer's pooled
    projection), T5 as wide as both CLIP widths together, and the
    flow-matching Euler scheduler with SD3's shift of 3. The transformer is
    64 wide per block (2 heads of 64), as the published models are: ComfyUI
    reads the block count of an original checkpoint off that width.

    Args:
        path (str): Output folder (``model_index.json`` and subfolders).
        seed (int): Seeds the random weights. Defaults to 0.
        variant (str): ``"sd3"`` (SD3 Medium's blocks) or ``"sd3.5"``
            (SD3.5 Medium's: ``qk_norm="rms_norm"`` and a second attention
            in block 0). Defaults to "sd3.5".

    Returns:
        str: ``path``.

    Raises:
        ConfigError: If ``variant`` is not one of :data:`SD3_VARIANTS`.
    """
    parts.check_variant(variant, SD3_VARIANTS)
    torch.manual_seed(seed)
    tokenizers = write_tokenizers(path, write_char_tokenizer,
                                  write_char_tokenizer, write_t5_tokenizer)
    width, projection = 32, 32
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=16, out_channels=16,
        num_layers=2, num_attention_heads=2, attention_head_dim=64,
        joint_attention_dim=2 * width, caption_projection_dim=128,
        pooled_projection_dim=2 * projection, pos_embed_max_size=32,
        **SD3_VARIANTS[variant])
    vae = parts.tiny_vae(latent_channels=16, sample_size=64,
                         **SD3_VAE_FACTORS)
    text_encoder, text_encoder_2 = (
        CLIPTextModelWithProjection(
            parts.tiny_clip_config(tokenizers[0], width, 2, projection))
        for _ in range(2))
    # T5 is where the pipeline pads the CLIP embeddings to: as wide as both
    text_encoder_3 = parts.t5_encoder(len(tokenizers[2]), d_model=2 * width,
                                      **parts.TINY_T5_CONFIG)
    return save_sd3_pipeline(path, transformer, vae,
                             (text_encoder, text_encoder_2, text_encoder_3),
                             tuple(tokenizers))


def make_sd35_medium_shaped(path: str,
                            seed: int = 0,
                            device: str | torch.device = "cpu") -> str:
    """Write Stable Diffusion 3.5 Medium's architecture with random weights.

    The transformer (2.24 B: 24 blocks of 24 heads × 64, a second attention
    in blocks 0-12, RMS-normalised queries and keys), the VAE and both CLIP
    text encoders have the published shapes, for speed, memory and
    parameter figures without a download; the tokenizers are the
    character-level ones of :mod:`diffengine.testing.tokenizers`. T5 keeps
    T5-XXL's width (4096, what the transformer reads) and heads but 2 of
    its 24 layers and the small tokenizer's vocabulary: the full encoder is
    19 GB in float32, too much for a CPU benchmark, and training reads its
    output only. About 14 GB in float32.

    Args:
        path (str): Output folder.
        seed (int): Seeds the random weights. Defaults to 0.
        device (str | torch.device): Where the weights are initialised;
            ``"cuda"`` is much faster than a CPU at this size. Defaults to
            "cpu".

    Returns:
        str: ``path``.
    """
    torch.manual_seed(seed)
    tokenizers = write_tokenizers(
        path, write_char_tokenizer, write_char_tokenizer,
        partial(write_t5_tokenizer, max_length=256))
    transformer, vae, text_encoders = sd35_medium_shaped_models(
        tokenizers[0], tokenizers[2], device)
    return save_sd3_pipeline(path, transformer, vae, text_encoders,
                             tuple(tokenizers))


def sd35_medium_shaped_models(
        tokenizer: CLIPTokenizer, tokenizer_3: T5Tokenizer,
        device: str | torch.device = "cpu"
) -> tuple[SD3Transformer2DModel, AutoencoderKL,
           tuple[CLIPTextModelWithProjection, CLIPTextModelWithProjection,
                 T5EncoderModel]]:
    """The models of :func:`make_sd35_medium_shaped`, random, on ``device``
    (``"meta"`` for shapes and parameter counts without memory).

    Args:
        tokenizer (CLIPTokenizer): Gives the CLIP encoders' special ids.
        tokenizer_3 (T5Tokenizer): Gives T5's vocabulary.
        device (str | torch.device): Defaults to "cpu".

    Returns:
        tuple: The transformer, the VAE and the three text encoders.
    """
    ids = parts.clip_special_ids(tokenizer)
    with torch.device(device):
        transformer = SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER_CONFIG)
        vae = AutoencoderKL(**SD3_VAE_CONFIG)
        text_encoder = CLIPTextModelWithProjection(
            CLIPTextConfig(**SD15_TEXT_CONFIG, **ids))
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**SDXL_TEXT_2_CONFIG, **ids))
        text_encoder_3 = parts.t5_encoder(
            len(tokenizer_3), **T5_XXL_CONFIG, num_layers=2)
    return transformer, vae, (text_encoder, text_encoder_2, text_encoder_3)


def save_sd3_pipeline(path: str, transformer: SD3Transformer2DModel,
                      vae: AutoencoderKL,
                      text_encoders: tuple[CLIPTextModelWithProjection,
                                           CLIPTextModelWithProjection,
                                           T5EncoderModel],
                      tokenizers: tuple[CLIPTokenizer, CLIPTokenizer,
                                        T5Tokenizer]) -> str:
    """Save the parts as a diffusers SD3 pipeline folder with SD3's
    flow-matching Euler scheduler (shift 3); returns ``path``."""
    return parts.save_parts(
        StableDiffusion3Pipeline, path, transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        **parts.numbered("text_encoder", text_encoders),
        **parts.numbered("tokenizer", tokenizers))
