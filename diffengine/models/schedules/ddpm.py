"""The DDPM objective of Stable Diffusion 1.x and SDXL."""
from __future__ import annotations

import torch
from diffusers import SchedulerMixin

from diffengine.errors import ConfigError
from diffengine.models.losses import LossContext
from diffengine.models.schedules.base import DiffusionSchedule
from diffengine.models.utils.timesteps import TimeStepSampler
from diffengine.randomness import Randomness
from diffengine.registry import MODELS


@MODELS.register_module()
class DDPMSchedule(DiffusionSchedule):
    """DDPM (Ho et al., 2020): ``x_t = √ᾱ_t·x0 + √(1 − ᾱ_t)·ε`` at integer
    timesteps, predicting ε (epsilon) or ``√ᾱ_t·ε − √(1 − ᾱ_t)·x0``
    (v-prediction, Salimans & Ho, 2022).

    The noisy input and the velocity are the scheduler's own
    (``add_noise``, ``get_velocity``); the sampler draws DDPM indices
    (:meth:`TimeStepSampler.__call__`).

    Args:
        scheduler (SchedulerMixin): A scheduler with ``alphas_cumprod``
            (``DDPMScheduler``).
        prediction_type (str, optional): ``"epsilon"`` or
            ``"v_prediction"``; None takes the scheduler's. Set, it is
            written into the scheduler's config. Defaults to None.
    """

    prediction_types = ("epsilon", "v_prediction")

    def __init__(self, scheduler: SchedulerMixin,
                 prediction_type: str | None = None) -> None:
        if not hasattr(scheduler, "alphas_cumprod"):
            raise ConfigError(
                f"schedule=DDPMSchedule needs a DDPM scheduler; the model's "
                f"is {type(scheduler).__name__}: use "
                "schedule=dict(type='FlowMatchSchedule').")
        super().__init__(scheduler, prediction_type)
        if prediction_type is not None:
            scheduler.register_to_config(prediction_type=prediction_type)
        self.prediction_type = scheduler.config.prediction_type
        if self.prediction_type not in self.prediction_types:
            raise ConfigError(
                f"prediction_type={self.prediction_type!r} of the model's "
                "scheduler config: set model.prediction_type='epsilon' or "
                "'v_prediction'.")

    def sample_timesteps(self, sampler: TimeStepSampler,
                         randomness: Randomness,
                         latents: torch.Tensor) -> torch.Tensor:
        return sampler(randomness, self.num_train_timesteps)

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor,
              timesteps: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: torch.Tensor, noise: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return noise
        return self.scheduler.get_velocity(latents, noise, timesteps)

    def loss_context(self, timesteps: torch.Tensor,
                     weight: torch.Tensor | None = None) -> LossContext:
        alphas = self.scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        return LossContext(timesteps=timesteps, alpha_squared=alphas,
                           sigma_squared=1 - alphas,
                           num_train_timesteps=self.num_train_timesteps,
                           prediction_type=self.prediction_type,
                           weight=weight)
