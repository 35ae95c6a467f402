# The families, their data preprocessor and their components.
from diffengine.models import editors, losses, schedules
from diffengine.models.editors import *  # noqa: F403
from diffengine.models.utils import noise, timesteps

__all__ = [*editors.__all__, "losses", "noise", "schedules", "timesteps"]
