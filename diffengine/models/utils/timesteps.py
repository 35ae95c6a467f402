"""How training timesteps are drawn, one config line each.

``model.timesteps_generator=dict(type=...)``. A sampler draws each sample's
noise level in [0, 1] (:meth:`TimeStepSampler.levels`, larger is noisier),
from that sample's generator (:class:`~diffengine.randomness.Randomness`);
the model's schedule turns it into the denoiser's timestep, so a sampler
means the same (more or less noise) under every schedule:
``FlowMatchSchedule`` takes the level as its σ, ``DDPMSchedule`` a DDPM
index in ``[0, num_train_timesteps)`` (:meth:`TimeStepSampler.__call__`,
where index T − 1 is the noisiest). Weighted schemes map one uniform draw
through the inverse of their distribution function, so the histogram over
many draws is exactly the distribution.
"""
from __future__ import annotations

import math

import torch

from diffengine.errors import ConfigError
from diffengine.models.utils.components import build_component
from diffengine.randomness import Randomness
from diffengine.registry import MODELS


class TimeStepSampler:
    """Base of the samplers: a noise level in [0, 1] per sample."""

    def levels(self, randomness: Randomness) -> torch.Tensor:
        """Each sample's noise level in [0, 1] (1 is pure noise), float32."""
        raise NotImplementedError

    def __call__(self, randomness: Randomness,
                 num_train_timesteps: int) -> torch.Tensor:
        """Each sample's DDPM timestep in ``[0, num_train_timesteps)``."""
        levels = self.levels(randomness)
        timesteps = (levels * num_train_timesteps).long()
        return timesteps.clamp(0, num_train_timesteps - 1)


@MODELS.register_module(name=["UniformTimeSteps", "TimeSteps"])
class UniformTimeSteps(TimeStepSampler):
    """Uniform over all noise levels, as DDPM and rectified flow train.

    Also registered as ``TimeSteps``, its earlier name.
    """

    def levels(self, randomness: Randomness) -> torch.Tensor:
        return randomness.rand()

    def __call__(self, randomness: Randomness,
                 num_train_timesteps: int) -> torch.Tensor:
        return randomness.randint(num_train_timesteps)


#: The earlier name of :class:`UniformTimeSteps`, which configs use.
TimeSteps = UniformTimeSteps


class _WeightedTimeSteps(TimeStepSampler):
    """Levels drawn from a piecewise-constant density, ``bias_multiplier``
    times as high where the subclass biases it, as diffusers'
    ``--timestep_bias_strategy``: :meth:`segments` gives it, :meth:`weights`
    the same density over DDPM indices.

    Args:
        bias_multiplier (float): Defaults to 5.
    """

    def __init__(self, bias_multiplier: float = 5.0) -> None:
        if bias_multiplier <= 0:
            raise ConfigError(f"bias_multiplier={bias_multiplier} must be > 0.")
        self.bias_multiplier = bias_multiplier

    def segments(self) -> tuple[list[float], list[float]]:
        """Edges ``0 = e_0 ≤ … ≤ e_n = 1`` and the relative density of each
        of the n pieces between them."""
        raise NotImplementedError

    def weights(self, num_train_timesteps: int) -> torch.Tensor:
        """Relative weights of the timesteps, ``num_train_timesteps`` long."""
        raise NotImplementedError

    def levels(self, randomness: Randomness) -> torch.Tensor:
        edges, density = (torch.tensor(v, dtype=torch.float64)
                          for v in self.segments())
        mass = density * edges.diff()
        density = density / mass.sum()
        cdf = torch.cat([mass.new_zeros(1), (mass / mass.sum()).cumsum(0)])
        uniform = randomness.rand().cpu().double()
        # the piece holding each draw: the last edge whose CDF is <= it
        piece = (torch.searchsorted(cdf, uniform, right=True) - 1).clamp(
            0, len(mass) - 1)
        levels = edges[piece] + (uniform - cdf[piece]) / density[piece]
        return levels.clamp(0, 1).float().to(randomness.device)

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


@MODELS.register_module()
class LaterTimeSteps(_WeightedTimeSteps):
    """The noisiest ``bias_portion`` of the levels (where composition is
    decided) drawn ``bias_multiplier`` times as often (``later``).

    Args:
        bias_multiplier (float): Defaults to 5.
        bias_portion (float): Defaults to 0.25.
    """

    def __init__(self, bias_multiplier: float = 5.0,
                 bias_portion: float = 0.25) -> None:
        super().__init__(bias_multiplier)
        _check_portion("bias_portion", bias_portion)
        self.bias_portion = bias_portion

    def segments(self) -> tuple[list[float], list[float]]:
        return ([0.0, 1 - self.bias_portion, 1.0],
                [1.0, self.bias_multiplier])

    def weights(self, num_train_timesteps: int) -> torch.Tensor:
        weights = torch.ones(num_train_timesteps)
        biased = int(self.bias_portion * num_train_timesteps)
        if biased:
            weights[-biased:] *= self.bias_multiplier
        return weights


@MODELS.register_module()
class EarlierTimeSteps(LaterTimeSteps):
    """The least noisy ``bias_portion`` of the levels (where fine detail is
    learned) drawn ``bias_multiplier`` times as often (``earlier``), with
    :class:`LaterTimeSteps`' arguments.
    """

    def segments(self) -> tuple[list[float], list[float]]:
        return [0.0, self.bias_portion, 1.0], [self.bias_multiplier, 1.0]

    def weights(self, num_train_timesteps: int) -> torch.Tensor:
        return super().weights(num_train_timesteps).flip(0)


@MODELS.register_module()
class RangeTimeSteps(_WeightedTimeSteps):
    """Levels from ``bias_begin`` to ``bias_end`` drawn ``bias_multiplier``
    times as often (``range``).

    Args:
        bias_multiplier (float): Defaults to 5.
        bias_begin (float): Defaults to 0.25.
        bias_end (float): Defaults to 0.75.
    """

    def __init__(self, bias_multiplier: float = 5.0, bias_begin: float = 0.25,
                 bias_end: float = 0.75) -> None:
        super().__init__(bias_multiplier)
        _check_portion("bias_begin", bias_begin)
        _check_portion("bias_end", bias_end)
        if bias_begin >= bias_end:
            raise ConfigError(
                f"bias_begin={bias_begin} must be below bias_end={bias_end}.")
        self.bias_begin = bias_begin
        self.bias_end = bias_end

    def segments(self) -> tuple[list[float], list[float]]:
        return ([0.0, self.bias_begin, self.bias_end, 1.0],
                [1.0, self.bias_multiplier, 1.0])

    def weights(self, num_train_timesteps: int) -> torch.Tensor:
        weights = torch.ones(num_train_timesteps)
        begin = int(self.bias_begin * num_train_timesteps)
        end = int(self.bias_end * num_train_timesteps)
        weights[begin:end] *= self.bias_multiplier
        return weights


@MODELS.register_module()
class CubicSamplingTimeSteps(TimeStepSampler):
    """Level ``1 − u³`` for uniform u: biased towards the noisy end, as
    T2I-Adapter trains (Mou et al., 2023, section 3.4)."""

    def levels(self, randomness: Randomness) -> torch.Tensor:
        uniform = randomness.rand()
        return 1 - uniform**3


@MODELS.register_module()
class LogitNormalTimeSteps(TimeStepSampler):
    """Level ``sigmoid(mean + std · n)`` for standard normal n: the
    logit-normal weighting of Esser et al. (2024, Stable Diffusion 3), which
    favours the middle of the range; diffusers' SD3 default. ``mean > 0``
    favours noise, as the paper's m; diffusers' ``--logit_mean`` counts the
    other way (its draw indexes the scheduler's descending timesteps).

    Args:
        mean (float): Defaults to 0.
        std (float): Defaults to 1.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0) -> None:
        if std <= 0:
            raise ConfigError(f"LogitNormalTimeSteps std={std} must be > 0.")
        self.mean = mean
        self.std = std

    def levels(self, randomness: Randomness) -> torch.Tensor:
        normal = randomness.randn()
        return torch.sigmoid(self.mean + self.std * normal)


# The mode density of Esser et al. is a density only for s in this range
# (the map below stays monotonic).
MODE_SCALES = (-1.0, 2 / (math.pi - 2))


@MODELS.register_module()
class ModeTimeSteps(TimeStepSampler):
    """Level ``1 − u − s·(cos²(πu/2) − 1 + u)`` for uniform u: "mode
    sampling with heavy tails" of Esser et al. (2024, Stable Diffusion 3,
    section 3.1), diffusers' ``--weighting_scheme mode``. s > 0 favours the
    middle levels, s < 0 the ends; s = 0 is uniform.

    Args:
        mode_scale (float): s, in [-1, 2/(π − 2)]. Defaults to 1.29, as
            diffusers' ``--mode_scale``.
    """

    def __init__(self, mode_scale: float = 1.29) -> None:
        low, high = MODE_SCALES
        if not low <= mode_scale <= high:
            raise ConfigError(
                f"ModeTimeSteps mode_scale={mode_scale} must be in [{low}, "
                f"{high:.4f}] (2/(π − 2)).")
        self.mode_scale = mode_scale

    def levels(self, randomness: Randomness) -> torch.Tensor:
        uniform = randomness.rand()
        levels = 1 - uniform - self.mode_scale * (
            torch.cos(math.pi * uniform / 2)**2 - 1 + uniform)
        return levels.clamp(0, 1)


def shift_levels(levels: torch.Tensor, shift: float) -> torch.Tensor:
    """``s·σ/(1 + (s − 1)·σ)``: the timestep shift of Esser et al. (2024,
    section 5.3.2), which multiplies the odds σ/(1 − σ) by s."""
    return shift * levels / (1 + (shift - 1) * levels)


@MODELS.register_module()
class ShiftedTimeSteps(TimeStepSampler):
    """Another sampler's levels shifted towards noise by ``shift``:
    ``σ' = s·σ/(1 + (s − 1)·σ)`` (Esser et al., 2024, section 5.3.2), which
    multiplies the odds σ/(1 − σ) by s.

    Under ``FlowMatchSchedule`` the schedule's own shift (from the model's
    scheduler config, 3.0 for SD3) applies after this one; both multiply the
    odds, so they compound: give the schedule ``shift=1.0`` to shift by this
    sampler's alone. Under ``DDPMSchedule`` the shifted level picks the DDPM
    index (``⌊σ'·T⌋``).

    Args:
        sampler (dict): The sampler whose levels are shifted. Defaults to
            ``dict(type="UniformTimeSteps")``.
        shift (float): s, > 0; above 1 is noisier. Defaults to 3.
    """

    def __init__(self, sampler: dict | None = None,
                 shift: float = 3.0) -> None:
        if shift <= 0:
            raise ConfigError(f"ShiftedTimeSteps shift={shift} must be > 0.")
        self.sampler = build_component(
            sampler or dict(type="UniformTimeSteps"),
            "timesteps_generator.sampler", TimeStepSampler)
        self.shift = shift

    def levels(self, randomness: Randomness) -> torch.Tensor:
        return shift_levels(self.sampler.levels(randomness), self.shift)
