from diffengine.models.editors.stable_diffusion.stable_diffusion import StableDiffusion

__all__ = ["StableDiffusion"]
