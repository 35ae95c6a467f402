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
      at t = T;
    - ``"snr"``: ``(1 − δ)/(1 + σ)² + δ`` with ``σ = √((1 − ᾱ)/ᾱ)``.

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

    def deltas(self, context: LossContext) -> torch.Tensor:
        """δ of each sample, from its timestep."""
        timesteps = context.timesteps
        if self.schedule == "constant":
            return torch.full(timesteps.shape, self.delta,
                              device=timesteps.device)
        if self.schedule == "exponential":
            num_train_timesteps = len(context.alphas_cumprod)
            rate = -math.log(self.delta) / num_train_timesteps
            return torch.exp(-rate * timesteps.float())
        alphas = context.alphas_cumprod.to(timesteps.device)[timesteps].float()
        sigmas = ((1 - alphas) / alphas).sqrt()
        return (1 - self.delta) / (1 + sigmas)**2 + self.delta

    def per_sample(self, prediction: torch.Tensor, target: torch.Tensor,
                   context: LossContext) -> torch.Tensor:
        delta = self.deltas(context).view(-1, *[1] * (prediction.ndim - 1))
        squared = (prediction - target)**2
        # 2δ(√(r² + δ²) − δ), written without the cancellation that loses
        # small errors in fp32
        loss = 2 * delta * squared / ((squared + delta**2).sqrt() + delta)
        return mean_per_sample(loss)
