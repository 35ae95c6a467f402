from diffengine.models import losses, schedules
from diffengine.models.editors import (
    Flux,
    LatentDiffusionModel,
    SDDataPreprocessor,
    StableDiffusion,
    StableDiffusion3,
    StableDiffusionXL,
)
from diffengine.models.utils import noise, timesteps

__all__ = [
    "Flux",
    "LatentDiffusionModel",
    "SDDataPreprocessor",
    "StableDiffusion",
    "StableDiffusion3",
    "StableDiffusionXL",
    "losses",
    "noise",
    "schedules",
    "timesteps",
]
