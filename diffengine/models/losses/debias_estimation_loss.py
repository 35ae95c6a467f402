"""Debiased-estimation weighted MSE (Yu et al., 2023)."""
from __future__ import annotations

import torch

from diffengine.errors import ConfigError
from diffengine.models.losses.base import DiffusionLoss, LossContext, mean_per_sample
from diffengine.registry import MODELS

# SNR is infinite at timestep 0 of some schedules; kohya's sd-scripts clip it
# here (``apply_debiased_estimation``) so the weight stays finite.
MAX_SNR = 1000.0


@MODELS.register_module()
class DeBiasEstimationLoss(DiffusionLoss):
    """MSE weighted by 1/√SNR (epsilon) or 1/√(SNR + 1) (v-prediction).

    "Debias the Training of Diffusion Models" (Yu et al., 2023): the 1/√SNR
    weight undoes the bias towards low-noise timesteps of the plain MSE. SNR
    is clipped at 1000 as kohya's sd-scripts clip it. The v-prediction form
    adds one to the SNR as the original diffengine does. The paper defines
    it for epsilon and v-prediction only, so a flow-matching schedule
    refuses it.

    Args:
        loss_weight (float): Scales the loss. Defaults to 1.
    """

    def check_schedule(self, schedule: str, prediction_type: str) -> None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(
                f"loss=DeBiasEstimationLoss is defined for epsilon and "
                f"v-prediction, not under {schedule} ({prediction_type}): "
                "use SNRL2Loss or L2Loss.")

    def weights(self, context: LossContext) -> torch.Tensor:
        """The weight of each sample's MSE."""
        snr = context.snr().clamp(max=MAX_SNR)
        if context.prediction_type == "v_prediction":
            snr = snr + 1
        return snr.rsqrt()

    def per_sample(self, prediction: torch.Tensor, target: torch.Tensor,
                   context: LossContext) -> torch.Tensor:
        return mean_per_sample((prediction - target)**2) * self.weights(context)
