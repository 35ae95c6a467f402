"""diffengine: train Stable Diffusion LoRA adapters with mmengine."""
from diffengine.quiet import HUB_SYMLINKS, NO_TORCHVISION, drop_message, drop_warning
from diffengine.version import __version__

drop_message(*NO_TORCHVISION)
drop_warning(*HUB_SYMLINKS)

__all__ = ["__version__"]
