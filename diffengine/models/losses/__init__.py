from diffengine.models.losses.base import DiffusionLoss, LossContext
from diffengine.models.losses.debias_estimation_loss import DeBiasEstimationLoss
from diffengine.models.losses.huber_loss import HuberLoss
from diffengine.models.losses.l2_loss import L2Loss
from diffengine.models.losses.snr_l2_loss import SNRL2Loss

__all__ = [
    "DeBiasEstimationLoss",
    "DiffusionLoss",
    "HuberLoss",
    "L2Loss",
    "LossContext",
    "SNRL2Loss",
]
