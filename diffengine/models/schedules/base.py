"""What every schedule shares: the objective's interface to the model."""
from __future__ import annotations

from typing import ClassVar

import torch
from diffusers import SchedulerMixin

from diffengine.errors import ConfigError
from diffengine.models.losses import DiffusionLoss, LossContext
from diffengine.models.utils.components import build_component
from diffengine.models.utils.timesteps import TimeStepSampler
from diffengine.randomness import Randomness


class DiffusionSchedule:
    """The training objective: how a noise level becomes the denoiser's
    timestep, the noisy input and the target, and what a loss may weigh a
    sample by.

    Built by :func:`build_schedule` from ``model.schedule`` and the
    training scheduler of the model folder (a diffusers scheduler, whose
    config holds the schedule's constants).

    Args:
        scheduler (SchedulerMixin): The model's training scheduler.
        prediction_type (str, optional): What the denoiser predicts, one of
            :attr:`prediction_types`; None takes the schedule's default.
            Defaults to None.

    Attributes:
        prediction_type (str): ``"epsilon"``, ``"v_prediction"`` or
            ``"flow"``.
        num_train_timesteps (int): The denoiser's timesteps lie in
            ``[0, num_train_timesteps)``.
    """

    #: The prediction types this schedule trains.
    prediction_types: ClassVar[tuple[str, ...]] = ()

    def __init__(self, scheduler: SchedulerMixin,
                 prediction_type: str | None = None) -> None:
        if prediction_type is not None and (
                prediction_type not in self.prediction_types):
            raise ConfigError(
                f"prediction_type={prediction_type!r} is not one of "
                f"{type(self).__name__}'s {list(self.prediction_types)}: "
                "set one of those or leave it unset.")
        self.scheduler = scheduler
        self.num_train_timesteps: int = scheduler.config.num_train_timesteps
        self.prediction_type: str = prediction_type or self.prediction_types[0]

    def sample_timesteps(self, sampler: TimeStepSampler,
                         randomness: Randomness,
                         latents: torch.Tensor) -> torch.Tensor:
        """The denoiser's timestep of each sample, B, drawn through
        ``sampler`` (``latents``, B×C×H×W, give the resolution)."""
        raise NotImplementedError

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor,
              timesteps: torch.Tensor) -> torch.Tensor:
        """The denoiser's input: ``latents`` noised with ``noise`` at
        ``timesteps``."""
        raise NotImplementedError

    def target(self, latents: torch.Tensor, noise: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
        """What the denoiser should predict from :meth:`noisy`'s input."""
        raise NotImplementedError

    def loss_context(self, timesteps: torch.Tensor,
                     weight: torch.Tensor | None = None) -> LossContext:
        """What a loss may weigh the samples at ``timesteps`` by, with a
        per-sample ``weight`` (None weighs all alike)."""
        raise NotImplementedError

    def check_loss(self, loss: DiffusionLoss) -> None:
        """Raise a one-line ``ConfigError`` if ``loss`` is undefined under
        this schedule."""
        loss.check_schedule(type(self).__name__, self.prediction_type)


def build_schedule(cfg: dict | DiffusionSchedule, scheduler: SchedulerMixin,
                   prediction_type: str | None = None) -> DiffusionSchedule:
    """The schedule of ``cfg`` (``dict(type=..., **options)``) over the
    model's training ``scheduler``.

    Args:
        cfg (dict | DiffusionSchedule): ``model.schedule``, or a built one
            (which passes through).
        scheduler (SchedulerMixin): The model's training scheduler.
        prediction_type (str, optional): ``model.prediction_type``; None
            takes the schedule's default. Defaults to None.

    Raises:
        ConfigError: If the type or an option is unknown, or the prediction
            type is not one the schedule trains.
    """
    if isinstance(cfg, dict):
        if "prediction_type" in cfg:
            raise ConfigError(
                "schedule.prediction_type: set model.prediction_type "
                "instead.")
        cfg = dict(cfg, scheduler=scheduler, prediction_type=prediction_type)
    return build_component(cfg, "schedule", DiffusionSchedule)
