from diffengine.models.editors.stable_diffusion_xl.stable_diffusion_xl import (
    StableDiffusionXL,
)

__all__ = ["StableDiffusionXL"]
