"""How training timesteps are drawn, one config line each.

``model.timesteps_generator=dict(type=...)``. Each sampler returns one
timestep in ``[0, num_train_timesteps)`` per sample, drawn from that
sample's generator (:class:`~diffengine.randomness.Randomness`). Weighted
schemes map one uniform draw through the inverse of their distribution
function, so the histogram over many draws is exactly the distribution.
"""
from __future__ import annotations

import torch

from diffengine.errors import ConfigError
from diffengine.randomness import Randomness
from diffengine.registry import MODELS


@MODELS.register_module()
class TimeSteps:
    """Uniform over all training timesteps, as DDPM trains."""

    def __call__(self, randomness: Randomness,
                 num_train_timesteps: int) -> torch.Tensor:
        return randomness.randint(num_train_timesteps)


class _WeightedTimeSteps(TimeSteps):
    """Timesteps drawn with the weights :meth:`weights` gives."""

    def weights(self, num_train_timesteps: int) -> torch.Tensor:
        """Relative weights of the timesteps, ``num_train_timesteps`` long."""
        raise NotImplementedError

    def __call__(self, randomness: Randomness,
                 num_train_timesteps: int) -> torch.Tensor:
        weights = self.weights(num_train_timesteps).double()
        cdf = (weights / weights.sum()).cumsum(0)
        uniform = randomness.rand().cpu().double()
        timesteps = torch.searchsorted(cdf, uniform, right=True)
        return timesteps.clamp(max=num_train_timesteps - 1).to(
            randomness.device)


def _check_portion(name: str, value: float) -> None:
    if not 0 <= value <= 1:
        raise ConfigError(
            f"{name}={value} is a portion of the timesteps: give a value in "
            "[0, 1].")


def _check_multiplier(value: float) -> None:
    if value <= 0:
        raise ConfigError(f"bias_multiplier={value} must be > 0.")


@MODELS.register_module()
class LaterTimeSteps(_WeightedTimeSteps):
    """The last ``bias_portion`` of the timesteps (the noisiest, where
    composition is decided) drawn ``bias_multiplier`` times as often, as
    diffusers' ``--timestep_bias_strategy later``.

    Args:
        bias_multiplier (float): Defaults to 5.
        bias_portion (float): Defaults to 0.25.
    """

    def __init__(self, bias_multiplier: float = 5.0,
                 bias_portion: float = 0.25) -> None:
        _check_multiplier(bias_multiplier)
        _check_portion("bias_portion", bias_portion)
        self.bias_multiplier = bias_multiplier
        self.bias_portion = bias_portion

    def weights(self, num_train_timesteps: int) -> torch.Tensor:
        weights = torch.ones(num_train_timesteps)
        biased = int(self.bias_portion * num_train_timesteps)
        if biased:
            weights[-biased:] *= self.bias_multiplier
        return weights


@MODELS.register_module()
class EarlierTimeSteps(LaterTimeSteps):
    """The first ``bias_portion`` of the timesteps (the least noisy, where
    fine detail is learned) drawn ``bias_multiplier`` times as often, as
    diffusers' ``--timestep_bias_strategy earlier``.

    Args:
        bias_multiplier (float): Defaults to 5.
        bias_portion (float): Defaults to 0.25.
    """

    def weights(self, num_train_timesteps: int) -> torch.Tensor:
        return super().weights(num_train_timesteps).flip(0)


@MODELS.register_module()
class RangeTimeSteps(_WeightedTimeSteps):
    """Timesteps from ``bias_begin`` to ``bias_end`` (portions of the range)
    drawn ``bias_multiplier`` times as often, as diffusers'
    ``--timestep_bias_strategy range``.

    Args:
        bias_multiplier (float): Defaults to 5.
        bias_begin (float): Defaults to 0.25.
        bias_end (float): Defaults to 0.75.
    """

    def __init__(self, bias_multiplier: float = 5.0, bias_begin: float = 0.25,
                 bias_end: float = 0.75) -> None:
        _check_multiplier(bias_multiplier)
        _check_portion("bias_begin", bias_begin)
        _check_portion("bias_end", bias_end)
        if bias_begin >= bias_end:
            raise ConfigError(
                f"bias_begin={bias_begin} must be below bias_end={bias_end}.")
        self.bias_multiplier = bias_multiplier
        self.bias_begin = bias_begin
        self.bias_end = bias_end

    def weights(self, num_train_timesteps: int) -> torch.Tensor:
        weights = torch.ones(num_train_timesteps)
        begin = int(self.bias_begin * num_train_timesteps)
        end = int(self.bias_end * num_train_timesteps)
        weights[begin:end] *= self.bias_multiplier
        return weights


@MODELS.register_module()
class CubicSamplingTimeSteps(TimeSteps):
    """``t = (1 - u³) · T`` for uniform u: biased towards the noisy end, as
    T2I-Adapter trains (Mou et al., 2023, section 3.4)."""

    def __call__(self, randomness: Randomness,
                 num_train_timesteps: int) -> torch.Tensor:
        uniform = randomness.rand()
        timesteps = ((1 - uniform**3) * num_train_timesteps).long()
        return timesteps.clamp(0, num_train_timesteps - 1)


@MODELS.register_module()
class LogitNormalTimeSteps(TimeSteps):
    """``t = sigmoid(mean + std · n) · T`` for standard normal n: the
    logit-normal weighting of Esser et al. (2024, Stable Diffusion 3), which
    favours the middle of the range.

    Args:
        mean (float): Defaults to 0.
        std (float): Defaults to 1.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if std <= 0:
            raise ConfigError(f"LogitNormalTimeSteps std={std} must be > 0.")
        self.mean = mean
        self.std = std

    def __call__(self, randomness: Randomness,
                 num_train_timesteps: int) -> torch.Tensor:
        normal = randomness.randn()
        fraction = torch.sigmoid(self.mean + self.std * normal)
        timesteps = (fraction * num_train_timesteps).long()
        return timesteps.clamp(0, num_train_timesteps - 1)
