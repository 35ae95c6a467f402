"""What every diffusion loss shares: one signature, per-sample weights."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossContext:
    """What a loss may weigh a sample by, besides prediction and target.

    The schedule (:mod:`diffengine.models.schedules`) fills it: the noisy
    input of each sample is ``x_t = α_t·x0 + σ_t·ε``, with α_t² = ᾱ_t and
    σ_t² = 1 − ᾱ_t under DDPM, α_t = 1 − σ_t under flow matching.

    Attributes:
        timesteps (Tensor): The denoiser's timestep of each sample, B.
        alpha_squared (Tensor): α_t² of each sample, B.
        sigma_squared (Tensor): σ_t² of each sample, B.
        num_train_timesteps (int): The length of the timestep range.
        prediction_type (str): ``"epsilon"``, ``"v_prediction"`` or
            ``"flow"`` (the velocity ε − x0).
        weight (Tensor, optional): A weight per sample, B (e.g. the prior
            loss weight of DreamBooth class images). None weighs all alike.
    """

    timesteps: torch.Tensor
    alpha_squared: torch.Tensor
    sigma_squared: torch.Tensor
    num_train_timesteps: int
    prediction_type: str
    weight: torch.Tensor | None = None

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio α_t²/σ_t² of each sample, fp32: ᾱ/(1 − ᾱ)
        under DDPM, ((1 − σ)/σ)² under flow matching."""
        return (self.alpha_squared / self.sigma_squared).float()


class DiffusionLoss:
    """Base of the losses: a value per sample, then the weighted mean.

    Subclasses implement :meth:`per_sample`. The batch loss is the mean of
    ``weight × per_sample`` over the batch, times ``loss_weight``; with the
    same per-process batch size, DDP's gradient average over processes is
    then the gradient of the global batch's mean.

    Args:
        loss_weight (float): Scales the loss. Defaults to 1.
    """

    def __init__(self, loss_weight: float = 1.0) -> None:
        self.loss_weight = loss_weight

    def check_schedule(self, schedule: str, prediction_type: str) -> None:
        """Raise a ``ConfigError`` if this loss is undefined for
        ``prediction_type`` (the schedule named ``schedule``'s); every
        prediction type is fine by default."""

    def per_sample(self, prediction: torch.Tensor, target: torch.Tensor,
                   context: LossContext) -> torch.Tensor:
        """The loss of each sample, B, in fp32."""
        raise NotImplementedError

    def __call__(self, prediction: torch.Tensor, target: torch.Tensor,
                 context: LossContext) -> torch.Tensor:
        loss = self.per_sample(prediction.float(), target.float(), context)
        if context.weight is not None:
            loss = loss * context.weight.to(loss)
        return loss.mean() * self.loss_weight


def mean_per_sample(values: torch.Tensor) -> torch.Tensor:
    """The mean of each sample's values: B × ... → B."""
    return values.flatten(1).mean(1)
