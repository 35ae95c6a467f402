"""Mean squared error, the loss Stable Diffusion trains with."""
from __future__ import annotations

import torch

from diffengine.models.losses.base import DiffusionLoss, LossContext, mean_per_sample
from diffengine.registry import MODELS


@MODELS.register_module()
class L2Loss(DiffusionLoss):
    """MSE between prediction and target, every timestep alike.

    Args:
        loss_weight (float): Scales the loss. Defaults to 1.
    """

    def per_sample(self, prediction: torch.Tensor, target: torch.Tensor,
                   context: LossContext) -> torch.Tensor:
        return mean_per_sample((prediction - target)**2)
