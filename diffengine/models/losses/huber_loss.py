"""Pseudo-Huber loss with kohya's timestep schedules of its threshold."""
from __future__ import annotations

import math

import torch

from diffengine.errors import ConfigError
from diffengine.models.losses.base import DiffusionLoss, LossContext, mean_per_sample
from diffengine.registry import MODELS

SCHEDULES = ("constant", "exponential", "snr")


@MODELS.register_module()
class HuberLoss(DiffusionLoss):
    """Pseudo-Huber loss ``2δ(√((p − t)² + δ²) − δ)``, δ per sample.

    Quadratic (the MSE) for errors well below δ and linear above, so
    outliers in the data pull less ("Improving Diffusion Models's
    Data-Corruption Resistance using Scheduled Pseudo-Huber Loss", Khrapov
    et al., 2024). δ follows kohya's ``huber_schedule``:

    - ``"constant"``: δ at every timestep;
    - ``"exponential"``: ``δ^(t/T)``, from 1 (MSE-like) at t = 0 down to δ
      at t = T (under flow matching t/T = σ, as kohya's SD3 and Flux
      trainers);
    - ``"snr"``: ``(1 − δ)/(1 + σ)² + δ`` with ``σ = √((1 − ᾱ)/ᾱ)``, DDPM
      only (kohya refuses it for flow models too).

    Args:
        delta (float): δ (kohya's ``huber_c``), > 0. Defaults to 1.
        schedule (str): One of ``constant``, ``exponential``, ``snr``.
            Defaults to "constant".
        loss_weight (float): Scales the loss. Defaults to 1.
    """

    def __init__(self, delta: float = 1.0, schedule: str = "constant",
                 loss_weight: float = 1.0) -> None:
        super().__init__(loss_weight)
        if delta <= 0:
            raise ConfigError(f"HuberLoss delta={delta} must be > 0.")
        if schedule not in SCHEDULES:
            raise ConfigError(
                f"HuberLoss schedule={schedule!r}; choose one of "
                f"{list(SCHEDULES)}.")
        self.delta = delta
        self.schedule = schedule

    def check_schedule(self, schedule: str, prediction_type: str) -> None:
        if self.schedule == "snr" and prediction_type == "flow":
            raise ConfigError(
                f"HuberLoss schedule='snr' is defined for DDPM, not under "
                f"{schedule}: use schedule='exponential' or 'constant'.")

    def deltas(self, context: LossContext) -> torch.Tensor:
        """δ of each sample, from its timestep."""
        timesteps = context.timesteps
        if self.schedule == "constant":
            return torch.full(timesteps.shape, self.delta,
                              device=timesteps.device)
        if self.schedule == "exponential":
            rate = -math.log(self.delta) / context.num_train_timesteps
            return torch.exp(-rate * timesteps.float())
        sigmas = (context.sigma_squared / context.alpha_squared).float().sqrt()
        return (1 - self.delta) / (1 + sigmas)**2 + self.delta

    def per_sample(self, prediction: torch.Tensor, target: torch.Tensor,
                   context: LossContext) -> torch.Tensor:
        delta = self.deltas(context).view(-1, *[1] * (prediction.ndim - 1))
        squared = (prediction - target)**2
        # 2δ(√(r² + δ²) − δ), written without the cancellation that loses
        # small errors in fp32
        loss = 2 * delta * squared / ((squared + delta**2).sqrt() + delta)
        return mean_per_sample(loss)
