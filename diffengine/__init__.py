"""diffengine: train Stable Diffusion LoRA adapters with mmengine."""
from diffengine.version import __version__

__all__ = ["__version__"]
