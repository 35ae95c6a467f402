"""Models with random weights for tests, docs and benchmarks, made offline.

One module per family (``stable_diffusion``, ``stable_diffusion_xl``,
``stable_diffusion_3``, ``flux``), each with a tiny pipeline that trains a
step in a fraction of a second on a CPU (``make_tiny_*``), the published
architecture for speed, memory and parameter figures without a download
(``make_*_shaped``) and the saving of its pipeline folder; ``tokenizers``
and ``parts`` are the pieces they share. The same seed gives the same
weights.
"""
from diffengine.testing.flux import (
    FLUX_TRANSFORMER_CONFIG,
    FLUX_VAE_CONFIG,
    FLUX_VARIANTS,
    MAX_SEQUENCE_LENGTHS,
    flux_shaped_models,
    make_flux_shaped,
    make_tiny_flux,
    save_flux_pipeline,
)
from diffengine.testing.parts import (
    clip_special_ids,
    save_parts,
    t5_encoder,
    tiny_clip_config,
    tiny_vae,
)
from diffengine.testing.stable_diffusion import (
    SD15_TEXT_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    make_sd15_shaped,
    make_tiny_sd,
    save_pipeline,
)
from diffengine.testing.stable_diffusion_3 import (
    SD3_VAE_CONFIG,
    SD3_VARIANTS,
    SD35_MEDIUM_TRANSFORMER_CONFIG,
    T5_XXL_CONFIG,
    make_sd35_medium_shaped,
    make_tiny_sd3,
    save_sd3_pipeline,
    sd35_medium_shaped_models,
)
from diffengine.testing.stable_diffusion_xl import (
    SDXL_TEXT_2_CONFIG,
    SDXL_TEXT_CONFIG,
    SDXL_UNET_CONFIG,
    SDXL_VAE_CONFIG,
    make_sdxl_shaped,
    make_tiny_sdxl,
    save_sdxl_pipeline,
)
from diffengine.testing.tokenizers import (
    write_char_tokenizer,
    write_t5_tokenizer,
    write_tokenizers,
)

__all__ = [
    "FLUX_TRANSFORMER_CONFIG", "FLUX_VAE_CONFIG", "FLUX_VARIANTS",
    "MAX_SEQUENCE_LENGTHS", "SD3_VAE_CONFIG", "SD3_VARIANTS",
    "SD15_TEXT_CONFIG", "SD15_UNET_CONFIG", "SD15_VAE_CONFIG",
    "SD35_MEDIUM_TRANSFORMER_CONFIG", "SDXL_TEXT_2_CONFIG", "SDXL_TEXT_CONFIG",
    "SDXL_UNET_CONFIG", "SDXL_VAE_CONFIG", "T5_XXL_CONFIG",
    "clip_special_ids", "flux_shaped_models", "make_flux_shaped",
    "make_sd15_shaped", "make_sd35_medium_shaped", "make_sdxl_shaped",
    "make_tiny_flux", "make_tiny_sd", "make_tiny_sd3", "make_tiny_sdxl",
    "save_flux_pipeline", "save_parts", "save_pipeline", "save_sd3_pipeline",
    "save_sdxl_pipeline", "sd35_medium_shaped_models", "t5_encoder",
    "tiny_clip_config", "tiny_vae", "write_char_tokenizer",
    "write_t5_tokenizer", "write_tokenizers",
]
