"""diffengine: train Stable Diffusion LoRA adapters with mmengine."""
from diffengine.quiet import NO_TORCHVISION, drop_message
from diffengine.version import __version__

drop_message(*NO_TORCHVISION)

__all__ = ["__version__"]
