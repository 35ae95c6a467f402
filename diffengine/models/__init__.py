from diffengine.models.editors import SDDataPreprocessor, StableDiffusion

__all__ = ["SDDataPreprocessor", "StableDiffusion"]
