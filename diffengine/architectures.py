"""What other tools call each model family, for exported files."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from diffengine.adapter_file import AdapterFile
from diffengine.errors import ConfigError


@dataclass(frozen=True)
class Architecture:
    """How A1111, ComfyUI and kohya-ss name a model family.

    Attributes:
        name (str): Stability AI's model-spec architecture
            (``modelspec.architecture`` is ``<name>/lora``).
        kohya_prefixes (dict[str, str]): kohya key prefix of each part.
        base_model_version (str): kohya's ``ss_base_model_version``.
        resolution (int): The family's native image side, in pixels.
    """

    name: str
    kohya_prefixes: dict[str, str]
    base_model_version: str
    resolution: int


SD1 = Architecture(
    name="stable-diffusion-v1",
    # A1111 requires lora_te_ for SD 1.x (diffusers writes lora_te1_)
    kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te_"},
    base_model_version="sd_v1",
    resolution=512)
SDXL = Architecture(
    name="stable-diffusion-xl-v1-base",
    kohya_prefixes={"unet": "lora_unet_", "text_encoder": "lora_te1_",
                    "text_encoder_2": "lora_te2_"},
    base_model_version="sdxl_base_v1-0",
    resolution=1024)
# SD3 and SD3.5, named as kohya's sd-scripts names them: the model type its
# sd3_utils reads off an MMDiT checkpoint ("3-medium", "3-5-medium",
# "3-5-large") is ss_base_model_version, and "stable-diffusion-3-" + that
# type the model-spec architecture. kohya's LoRA takes lora_te1_ for CLIP-L
# and lora_te2_ for CLIP-G; T5 (lora_te3_) takes none here.
SD3_PREFIXES = {"transformer": "lora_unet_", "text_encoder": "lora_te1_",
                "text_encoder_2": "lora_te2_"}
SD3_MEDIUM, SD35_MEDIUM, SD35_LARGE = SD3_ARCHITECTURES = tuple(
    Architecture(name=f"stable-diffusion-3-{model_type}",
                 kohya_prefixes=SD3_PREFIXES,
                 base_model_version=model_type,
                 resolution=1024)
    for model_type in ("3-medium", "3-5-medium", "3-5-large"))
# Flux.1, named as sd-scripts names it: sai_model_spec's "flux-1-dev" and
# "flux-1-schnell", and flux_utils.MODEL_VERSION_FLUX_V1 ("flux1") as
# ss_base_model_version for both. kohya's LoRA takes lora_te1_ for CLIP-L;
# T5 (lora_te3_) takes none here.
FLUX_PREFIXES = {"transformer": "lora_unet_", "text_encoder": "lora_te1_"}
FLUX_DEV, FLUX_SCHNELL = FLUX_ARCHITECTURES = tuple(
    Architecture(name=f"flux-1-{variant}",
                 kohya_prefixes=FLUX_PREFIXES,
                 base_model_version="flux1",
                 resolution=1024)
    for variant in ("dev", "schnell"))
ARCHITECTURES = {a.name: a for a in (SD1, SDXL, *SD3_ARCHITECTURES,
                                     *FLUX_ARCHITECTURES)}


def is_sd3(architecture: Architecture) -> bool:
    """Whether ``architecture`` is one of the SD3 / SD3.5 MMDiT models."""
    return architecture in SD3_ARCHITECTURES


def is_flux(architecture: Architecture) -> bool:
    """Whether ``architecture`` is one of the Flux.1 models."""
    return architecture in FLUX_ARCHITECTURES


def flux_architecture(transformer_config: Mapping) -> Architecture:
    """The Flux.1 variant of a ``FluxTransformer2DModel`` config: dev
    embeds the guidance scale (``guidance_embeds``), schnell does not, as
    sd-scripts tells them apart (``guidance_in`` in the checkpoint).

    Args:
        transformer_config (Mapping): The transformer's config.
    """
    return FLUX_DEV if transformer_config.get("guidance_embeds") else (
        FLUX_SCHNELL)


def sd3_architecture(transformer_config: Mapping) -> Architecture:
    """The SD3 variant of an ``SD3Transformer2DModel`` config, told apart
    as sd-scripts does: without normalised queries and keys SD3 Medium;
    with them, SD3.5 Medium when some blocks have a second attention
    (``dual_attention_layers``), else SD3.5 Large.

    Args:
        transformer_config (Mapping): The transformer's config (its
            ``config`` attribute or ``config.json``).
    """
    if not transformer_config.get("qk_norm"):
        return SD3_MEDIUM
    if transformer_config.get("dual_attention_layers"):
        return SD35_MEDIUM
    return SD35_LARGE


def architecture_of(lora: AdapterFile) -> Architecture:
    """The family a LoRA was trained for: as its step file records it, else
    SD3.5 Medium when it adapts a transformer, SDXL when it adapts a second
    text encoder, else SD 1.x.

    Raises:
        ConfigError: If the recorded architecture is not one of
            :data:`ARCHITECTURES`.
    """
    name = lora.training.get("architecture")
    if name:
        if name not in ARCHITECTURES:
            raise ConfigError(
                f"{lora.path}: architecture {name!r} has no export; known: "
                f"{sorted(ARCHITECTURES)}.")
        return ARCHITECTURES[name]
    if "transformer" in lora.parts:
        return SD35_MEDIUM
    return SDXL if "text_encoder_2" in lora.parts else SD1
