"""What other tools call each model family, for exported files."""
from __future__ import annotations

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
ARCHITECTURES = {a.name: a for a in (SD1, SDXL)}


def architecture_of(lora: AdapterFile) -> Architecture:
    """The family a LoRA was trained for: as its step file records it, else
    SDXL when it adapts a second text encoder, else SD 1.x.

    Raises:
        ValueError: If the recorded architecture is not one of
            :data:`ARCHITECTURES`.
    """
    name = lora.training.get("architecture")
    if name:
        if name not in ARCHITECTURES:
            raise ConfigError(
                f"{lora.path}: architecture {name!r} has no export; known: "
                f"{sorted(ARCHITECTURES)}.")
        return ARCHITECTURES[name]
    return SDXL if "text_encoder_2" in lora.parts else SD1
