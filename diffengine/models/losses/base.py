"""What every diffusion loss shares: one signature, per-sample weights."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LossContext:
    """What a loss may weigh a sample by, besides prediction and target.

    Attributes:
        timesteps (Tensor): The timestep of each sample, B.
        alphas_cumprod (Tensor): The noise schedule's cumulative alphas,
            ``num_train_timesteps`` long.
        prediction_type (str): ``"epsilon"`` or ``"v_prediction"``.
        weight (Tensor, optional): A weight per sample, B (e.g. the prior
            loss weight of DreamBooth class images). None weighs all alike.
    """

    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor
    prediction_type: str
    weight: torch.Tensor | None = None

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio ᾱ/(1 − ᾱ) of each sample's timestep, fp32."""
        alphas = self.alphas_cumprod.to(self.timesteps.device)[self.timesteps]
        return (alphas / (1 - alphas)).float()


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
