"""The pieces every model maker builds the same way: small VAEs and CLIP
configs, special token ids, T5 encoders, variant checks and the saving of
a pipeline folder."""
from __future__ import annotations

from collections.abc import Sequence

from diffusers import AutoencoderKL, DiffusionPipeline
from transformers import (
    CLIPTextConfig,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
)

from diffengine.errors import ConfigError
from diffengine.export.diffusers_folder import save_pipeline_folder
from diffengine.testing.tokenizers import part_name

# The T5 encoder of the tiny SD3 and FLUX.1: 2 layers of 4 heads.
TINY_T5_CONFIG = dict(d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu")


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


def clip_special_ids(tokenizer: CLIPTokenizer) -> dict[str, int]:
    """``tokenizer``'s begin, end and padding ids, as a CLIP text config
    takes them."""
    return dict(bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id)


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
        projection_dim=projection,
        **clip_special_ids(tokenizer))


def t5_encoder(vocab_size: int, **config) -> T5EncoderModel:
    """A T5 encoder with ``vocab_size`` tokens and T5's special ids
    (``<pad>`` 0, ``</s>`` 1, as :func:`~diffengine.testing.tokenizers.
    write_t5_tokenizer` writes them); ``config`` sets the rest."""
    return T5EncoderModel(T5Config(
        **config, vocab_size=vocab_size, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))


def check_variant(variant: str, variants: dict) -> None:
    """Raise a ConfigError naming the choices if ``variant`` is not one of
    ``variants``."""
    if variant not in variants:
        raise ConfigError(f"variant={variant!r}; choose one of "
                          f"{list(variants)}.")


def numbered(kind: str, parts: Sequence) -> dict:
    """``parts`` under diffusers' names: ``kind``, ``kind_2``, ..."""
    return {part_name(kind, i): part for i, part in enumerate(parts)}


def save_parts(pipeline_class: type[DiffusionPipeline], path: str,
               **parts) -> str:
    """Put ``parts`` together as a ``pipeline_class`` and save it as a
    diffusers folder at ``path``; returns ``path``."""
    save_pipeline_folder(pipeline_class(**parts), path)
    return path
