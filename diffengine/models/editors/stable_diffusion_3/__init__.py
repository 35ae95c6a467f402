from diffengine.models.editors.stable_diffusion_3.stable_diffusion_3 import (
    StableDiffusion3,
)

__all__ = ["StableDiffusion3"]
