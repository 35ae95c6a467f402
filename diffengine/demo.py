"""SD-1.x-, SDXL- and SD3-shaped models with random weights and a captioned
shape dataset, made offline.

They back the built-in demo (``tools/make_demo.py``), the tests and the
benchmarks: the tiny model has the layout of Stable Diffusion 1.x (CLIP
text encoder, KL VAE, cross-attention UNet, PNDM inference scheduler) at a
size that trains a step in a fraction of a second on a CPU; the SD1.5-shaped
one has the published v1.5 architecture, for speed and memory figures. The
SDXL and SD3 makers do the same for those families.
"""
from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from PIL import Image, ImageDraw
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from diffengine.errors import ConfigError
from diffengine.export.diffusers_folder import save_pipeline_folder

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle")


def _byte_alphabet() -> list[str]:
    """The 256 printable characters CLIP's byte-level BPE maps bytes to."""
    printable = (list(range(ord("!"), ord("~") + 1))
                 + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def write_char_tokenizer(path: str, max_length: int = 77) -> CLIPTokenizer:
    """Write a character-level CLIP tokenizer (vocab.json, empty merges).

    Each byte is a token, with and without the end-of-word mark, so every
    caption tokenizes without a real BPE vocabulary.
    """
    os.makedirs(path, exist_ok=True)
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        os.path.join(path, "vocab.json"),
        os.path.join(path, "merges.txt"),
        model_max_length=max_length)
    tokenizer.save_pretrained(path)
    return tokenizer


def make_tiny_sd(path: str,
                 block_out_channels: Sequence[int] = (32, 64),
                 text_hidden_size: int = 32,
                 text_layers: int = 5,
                 vae_block_out_channels: Sequence[int] = (32, 64),
                 seed: int = 0) -> str:
    """Write a tiny Stable Diffusion 1.x pipeline in diffusers format.

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
    tokenizer = write_char_tokenizer(os.path.join(path, "tokenizer"))
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
    vae = tiny_vae(vae_block_out_channels, latent_channels=4, sample_size=64)
    text_encoder = CLIPTextModel(tiny_clip_config(
        tokenizer, text_hidden_size, text_layers, text_hidden_size,
        mlp_ratio=4))
    return save_pipeline(path, unet, vae, text_encoder, tokenizer)


# The published Stable Diffusion v1.5 configs (unet/, vae/ and text_encoder/
# config.json of stable-diffusion-v1-5; the text encoder is CLIP ViT-L/14's).
SD15_UNET_CONFIG = dict(
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", ) * 3 + ("DownBlock2D", ),
    up_block_types=("UpBlock2D", ) + ("CrossAttnUpBlock2D", ) * 3,
    cross_attention_dim=768,
    attention_head_dim=8,
    in_channels=4,
    out_channels=4,
    sample_size=64,
    norm_num_groups=32,
)
SD15_VAE_CONFIG = dict(
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownEncoderBlock2D", ) * 4,
    up_block_types=("UpDecoderBlock2D", ) * 4,
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    sample_size=512,
    norm_num_groups=32,
)
SD15_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)


def make_sd15_shaped(path: str,
                     seed: int = 0,
                     device: str | torch.device = "cpu") -> str:
    """Write Stable Diffusion v1.5's architecture with random weights.

    Same layers and shapes as the published model (860 M UNet, 84 M VAE,
    123 M CLIP text encoder), so speed, memory and parameter counts match,
    without a download; the tokenizer is the character-level one of
    :func:`write_char_tokenizer` (its ids are a subset of CLIP's 49,408).
    About 4.3 GB in float32.

    Args:
        path (str): Output folder.
        seed (int): Seeds the random weights.
        device (str | torch.device): Where the weights are initialised;
            ``"cuda"`` is much faster than a CPU at this size.

    Returns:
        str: ``path``.
    """
    torch.manual_seed(seed)
    tokenizer = write_char_tokenizer(os.path.join(path, "tokenizer"))
    with torch.device(device):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            **SD15_TEXT_CONFIG,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
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
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False)
    save_pipeline_folder(pipe, path)
    return path


# Stable Diffusion XL base 1.0's configs (unet/, vae/, text_encoder/ and
# text_encoder_2/ config.json of stabilityai/stable-diffusion-xl-base-1.0).
SDXL_UNET_CONFIG = dict(
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
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
    in_channels=4,
    out_channels=4,
    sample_size=128,
    norm_num_groups=32,
)
SDXL_VAE_CONFIG = dict(SD15_VAE_CONFIG, sample_size=1024,
                       scaling_factor=0.13025, force_upcast=True)
SDXL_TEXT_CONFIG = dict(SD15_TEXT_CONFIG)
SDXL_TEXT_2_CONFIG = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)


def tiny_vae(block_out_channels: Sequence[int] = (32, 32, 64, 64),
             **options) -> AutoencoderKL:
    """A small KL VAE, halving the resolution once per level after the
    first: the default four levels give Stable Diffusion's 8× smaller
    latents; ``options`` set the rest."""
    levels = len(block_out_channels)
    return AutoencoderKL(
        block_out_channels=tuple(block_out_channels),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", ) * levels,
        up_block_types=("UpDecoderBlock2D", ) * levels,
        norm_num_groups=min(32, min(block_out_channels)),
        **options)


def tiny_clip_config(tokenizer: CLIPTokenizer, hidden_size: int,
                     layers: int, projection: int,
                     mlp_ratio: int = 2) -> CLIPTextConfig:
    """A small CLIP text config for ``tokenizer``: 4 heads, an MLP
    ``mlp_ratio`` times as wide as the model, ``projection`` wide pooled
    outputs."""
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * mlp_ratio,
        num_hidden_layers=layers,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=projection)


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
    tokenizer = write_char_tokenizer(os.path.join(path, "tokenizer"))
    tokenizer_2 = write_char_tokenizer(os.path.join(path, "tokenizer_2"))
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
    vae = tiny_vae(latent_channels=4, sample_size=256, scaling_factor=0.13025,
                   force_upcast=True)
    text_encoder = CLIPTextModel(
        tiny_clip_config(tokenizer, width, 3, projection))
    text_encoder_2 = CLIPTextModelWithProjection(
        tiny_clip_config(tokenizer, width_2, 3, projection))
    return save_sdxl_pipeline(path, unet, vae, text_encoder, text_encoder_2,
                              tokenizer, tokenizer_2)


def make_sdxl_shaped(path: str,
                     seed: int = 0,
                     device: str | torch.device = "cpu") -> str:
    """Write Stable Diffusion XL base 1.0's architecture with random weights.

    Same layers and shapes as the published model (2.57 B UNet, 84 M VAE,
    123 M and 695 M text encoders), for speed, memory and parameter
    figures without a download; the tokenizers are the character-level one
    of :func:`write_char_tokenizer`. About 14 GB in float32.

    Returns:
        str: ``path``.
    """
    torch.manual_seed(seed)
    tokenizer = write_char_tokenizer(os.path.join(path, "tokenizer"))
    tokenizer_2 = write_char_tokenizer(os.path.join(path, "tokenizer_2"))
    ids = dict(bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
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
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False)
    save_pipeline_folder(pipe, path)
    return path


def write_t5_tokenizer(path: str, max_length: int = 77) -> T5Tokenizer:
    """Write a character-level T5 tokenizer (a Unigram model built in
    memory) with T5's special tokens: ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2.

    Every printable ASCII character is a piece, and so is ``▁`` (the word
    boundary), so every caption tokenizes without a real vocabulary.
    """
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(chr(c), -2.0) for c in range(ord("!"), ord("~") + 1)]
    tokenizer = T5Tokenizer(vocab=pieces, extra_ids=0,
                            model_max_length=max_length)
    tokenizer.save_pretrained(path)
    return tokenizer


# The shape of each tiny SD3 variant's transformer: SD3 Medium's blocks, or
# SD3.5 Medium's with RMS-normalised queries and keys and a second attention
# on the image tokens in the first block (its ``dual_attention_layers``).
SD3_VARIANTS = {
    "sd3": dict(qk_norm=None, dual_attention_layers=()),
    "sd3.5": dict(qk_norm="rms_norm", dual_attention_layers=(0, )),
}


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
    if variant not in SD3_VARIANTS:
        raise ConfigError(f"variant={variant!r}; choose one of "
                          f"{list(SD3_VARIANTS)}.")
    torch.manual_seed(seed)
    tokenizer = write_char_tokenizer(os.path.join(path, "tokenizer"))
    tokenizer_2 = write_char_tokenizer(os.path.join(path, "tokenizer_2"))
    tokenizer_3 = write_t5_tokenizer(os.path.join(path, "tokenizer_3"))
    width, projection = 32, 32
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=2,
        num_attention_heads=2,
        attention_head_dim=64,
        joint_attention_dim=2 * width,
        caption_projection_dim=128,
        pooled_projection_dim=2 * projection,
        pos_embed_max_size=32,
        **SD3_VARIANTS[variant])
    vae = tiny_vae(latent_channels=16, sample_size=64, scaling_factor=1.5305,
                   shift_factor=0.0609, use_quant_conv=False,
                   use_post_quant_conv=False)
    text_encoder, text_encoder_2 = (
        CLIPTextModelWithProjection(
            tiny_clip_config(tokenizer, width, 2, projection))
        for _ in range(2))
    # T5 is where the pipeline pads the CLIP embeddings to: as wide as both
    text_encoder_3 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_3), d_model=2 * width, d_kv=16, d_ff=128,
        num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer_3.pad_token_id,
        eos_token_id=tokenizer_3.eos_token_id, decoder_start_token_id=0))
    return save_sd3_pipeline(path, transformer, vae,
                             (text_encoder, text_encoder_2, text_encoder_3),
                             (tokenizer, tokenizer_2, tokenizer_3))


# Each tiny Flux variant: whether the transformer embeds a guidance scale
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
        ConfigError: If ``variant`` is not one of :data:`FLUX_VARIANTS`.
    """
    if variant not in FLUX_VARIANTS:
        raise ConfigError(f"variant={variant!r}; choose one of "
                          f"{list(FLUX_VARIANTS)}.")
    options = FLUX_VARIANTS[variant]
    torch.manual_seed(seed)
    tokenizer = write_char_tokenizer(os.path.join(path, "tokenizer"))
    tokenizer_2 = write_t5_tokenizer(os.path.join(path, "tokenizer_2"))
    width, t5_width = 32, 64
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=t5_width,
        pooled_projection_dim=width,
        guidance_embeds=options["guidance_embeds"],
        axes_dims_rope=(4, 6, 6))
    vae = tiny_vae(latent_channels=16, sample_size=64, scaling_factor=0.3611,
                   shift_factor=0.1159, use_quant_conv=False,
                   use_post_quant_conv=False)
    text_encoder = CLIPTextModel(tiny_clip_config(tokenizer, width, 2, width))
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=t5_width, d_kv=16, d_ff=128,
        num_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer_2.pad_token_id,
        eos_token_id=tokenizer_2.eos_token_id, decoder_start_token_id=0))
    pipe = FluxPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(**options["scheduler"]),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2)
    save_pipeline_folder(pipe, path)
    return path


# Stable Diffusion 3.5 Medium's configs (transformer/, vae/, text_encoder*/
# config.json of stabilityai/stable-diffusion-3.5-medium): 2.24 B
# transformer, 84 M VAE, CLIP ViT-L/14 and OpenCLIP bigG with projections.
SD35_MEDIUM_TRANSFORMER_CONFIG = dict(
    sample_size=128,
    patch_size=2,
    in_channels=16,
    out_channels=16,
    num_layers=24,
    num_attention_heads=24,
    attention_head_dim=64,
    joint_attention_dim=4096,
    caption_projection_dim=1536,
    pooled_projection_dim=2048,
    pos_embed_max_size=384,
    qk_norm="rms_norm",
    dual_attention_layers=tuple(range(13)),
)
SD3_VAE_CONFIG = dict(SD15_VAE_CONFIG, latent_channels=16, sample_size=1024,
                      scaling_factor=1.5305, shift_factor=0.0609,
                      use_quant_conv=False, use_post_quant_conv=False)
# T5-XXL's encoder has 24 such layers (4.8 B parameters, 19 GB in float32);
# the SD3.5-shaped model keeps its width and heads and 2 of its layers.
T5_XXL_CONFIG = dict(d_model=4096, d_kv=64, d_ff=10240, num_heads=64,
                     feed_forward_proj="gated-gelu")


def make_sd35_medium_shaped(path: str,
                            seed: int = 0,
                            device: str | torch.device = "cpu") -> str:
    """Write Stable Diffusion 3.5 Medium's architecture with random weights.

    The transformer (2.24 B: 24 blocks of 24 heads × 64, a second attention
    in blocks 0-12, RMS-normalised queries and keys), the VAE and both CLIP
    text encoders have the published shapes, for speed, memory and
    parameter figures without a download; the tokenizers are the
    character-level ones of :func:`write_char_tokenizer` and
    :func:`write_t5_tokenizer`. T5 keeps T5-XXL's width (4096, what the
    transformer reads) and heads but 2 of its 24 layers and the small
    tokenizer's vocabulary: the full encoder is 19 GB in float32, too much
    for a CPU benchmark, and training reads its output only. About 14 GB
    in float32.

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
    tokenizer = write_char_tokenizer(os.path.join(path, "tokenizer"))
    tokenizer_2 = write_char_tokenizer(os.path.join(path, "tokenizer_2"))
    tokenizer_3 = write_t5_tokenizer(os.path.join(path, "tokenizer_3"),
                                     max_length=256)
    transformer, vae, text_encoders = sd35_medium_shaped_models(
        tokenizer, tokenizer_3, device)
    return save_sd3_pipeline(path, transformer, vae, text_encoders,
                             (tokenizer, tokenizer_2, tokenizer_3))


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
        tokenizer_3 (T5Tokenizer): Gives T5's vocabulary and special ids.
        device (str | torch.device): Defaults to "cpu".

    Returns:
        tuple: The transformer, the VAE and the three text encoders.
    """
    ids = dict(bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    with torch.device(device):
        transformer = SD3Transformer2DModel(**SD35_MEDIUM_TRANSFORMER_CONFIG)
        vae = AutoencoderKL(**SD3_VAE_CONFIG)
        text_encoder = CLIPTextModelWithProjection(
            CLIPTextConfig(**SD15_TEXT_CONFIG, **ids))
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**SDXL_TEXT_2_CONFIG, **ids))
        text_encoder_3 = T5EncoderModel(T5Config(
            **T5_XXL_CONFIG, num_layers=2, vocab_size=len(tokenizer_3),
            pad_token_id=tokenizer_3.pad_token_id,
            eos_token_id=tokenizer_3.eos_token_id, decoder_start_token_id=0))
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
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=text_encoders[0],
        tokenizer=tokenizers[0],
        text_encoder_2=text_encoders[1],
        tokenizer_2=tokenizers[1],
        text_encoder_3=text_encoders[2],
        tokenizer_3=tokenizers[2])
    save_pipeline_folder(pipe, path)
    return path


def draw_shape(shape: str, color: str, background: str, size: int,
               rng: random.Random) -> Image.Image:
    """One RGB image of a filled shape at a random place and scale."""
    image = Image.new("RGB", (size, size), BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    extent = rng.uniform(0.45, 0.7) * size
    x0 = rng.uniform(0, size - extent)
    y0 = rng.uniform(0, size - extent)
    box = (x0, y0, x0 + extent, y0 + extent)
    if shape == "circle":
        draw.ellipse(box, fill=COLORS[color])
    elif shape == "square":
        draw.rectangle(box, fill=COLORS[color])
    else:
        draw.polygon([(x0 + extent / 2, y0), (x0 + extent, y0 + extent),
                      (x0, y0 + extent)], fill=COLORS[color])
    return image


def make_shapes_dataset(path: str,
                        num_images: int = 24,
                        size: int = 64,
                        seed: int = 0) -> str:
    """Write an imagefolder dataset of captioned shapes.

    Files are ``NNNN.png`` beside ``metadata.jsonl`` with ``file_name`` and
    ``text`` (e.g. "a red circle on a white background").

    Returns:
        str: ``path``.
    """
    rng = random.Random(seed)
    os.makedirs(path, exist_ok=True)
    rows = []
    for i in range(num_images):
        shape = SHAPES[i % len(SHAPES)]
        color = list(COLORS)[(i // len(SHAPES)) % len(COLORS)]
        background = list(BACKGROUNDS)[i % len(BACKGROUNDS)]
        file_name = f"{i:04d}.png"
        draw_shape(shape, color, background, size, rng).save(
            os.path.join(path, file_name))
        rows.append({
            "file_name": file_name,
            "text": f"a {color} {shape} on a {background} background",
        })
    with open(os.path.join(path, "metadata.jsonl"), "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path
