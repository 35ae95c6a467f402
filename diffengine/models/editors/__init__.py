from diffengine.models.editors.base import LatentDiffusionModel
from diffengine.models.editors.stable_diffusion import (
    SDDataPreprocessor,
    StableDiffusion,
)

__all__ = ["LatentDiffusionModel", "SDDataPreprocessor", "StableDiffusion"]
