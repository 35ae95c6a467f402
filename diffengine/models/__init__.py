from diffengine.models import losses, schedules
from diffengine.models.editors import (
    LatentDiffusionModel,
    SDDataPreprocessor,
    StableDiffusion,
    StableDiffusion3,
    StableDiffusionXL,
)
from diffengine.models.utils import noise, timesteps

__all__ = [
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
