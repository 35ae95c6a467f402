from diffengine.models.editors.base import LatentDiffusionModel, TextEncoder
from diffengine.models.editors.data_preprocessor import (
    DiffusionDataPreprocessor,
    SDDataPreprocessor,
)
from diffengine.models.editors.flux import Flux
from diffengine.models.editors.stable_diffusion import StableDiffusion
from diffengine.models.editors.stable_diffusion_3 import StableDiffusion3
from diffengine.models.editors.stable_diffusion_xl import StableDiffusionXL

__all__ = [
    "DiffusionDataPreprocessor",
    "Flux",
    "LatentDiffusionModel",
    "SDDataPreprocessor",
    "StableDiffusion",
    "StableDiffusion3",
    "StableDiffusionXL",
    "TextEncoder",
]
