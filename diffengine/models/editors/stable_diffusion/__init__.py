from diffengine.models.editors.stable_diffusion.data_preprocessor import (
    SDDataPreprocessor,
)
from diffengine.models.editors.stable_diffusion.stable_diffusion import StableDiffusion

__all__ = ["SDDataPreprocessor", "StableDiffusion"]
