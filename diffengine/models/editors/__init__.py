from diffengine.models.editors.stable_diffusion import (
                                                        SDDataPreprocessor,
                                                        StableDiffusion,
)

__all__ = ["SDDataPreprocessor", "StableDiffusion"]
