"""Fuse a LoRA into its base and save a full diffusers model."""
from __future__ import annotations

from diffusers import StableDiffusionPipeline

from diffengine.lora_file import weights_path


def merge_lora(lora: str, base: str, out: str,
               lora_scale: float = 1.0) -> StableDiffusionPipeline:
    """Write ``base`` with ``lora`` fused in, as a diffusers folder.

    The result loads with ``StableDiffusionPipeline.from_pretrained(out)``
    and needs no LoRA loading; every component of ``base`` (safety checker
    included, if it has one) is saved as it was.

    Args:
        lora (str): Step folder or LoRA ``.safetensors`` file.
        base (str): Hub id or diffusers folder the LoRA was trained on.
        out (str): Output folder.
        lora_scale (float): Strength fused in; 1 is as trained. Defaults
            to 1.

    Returns:
        StableDiffusionPipeline: The merged pipeline (on the CPU).
    """
    pipe = StableDiffusionPipeline.from_pretrained(base)
    pipe.load_lora_weights(weights_path(lora), adapter_name="lora")
    pipe.fuse_lora(lora_scale=lora_scale, adapter_names=["lora"])
    # Drop the adapter layers; the fused weights stay.
    pipe.unload_lora_weights()
    pipe.save_pretrained(out)
    return pipe
