"""The rectified-flow objective of Stable Diffusion 3 and Flux."""
from __future__ import annotations

import math

import torch
from diffusers import SchedulerMixin

from diffengine.errors import ConfigError
from diffengine.models.losses import LossContext
from diffengine.models.schedules.base import DiffusionSchedule
from diffengine.models.utils.timesteps import TimeStepSampler, shift_levels
from diffengine.randomness import Randomness
from diffengine.registry import MODELS

TIME_SHIFT_TYPES = ("exponential", "linear")


@MODELS.register_module()
class FlowMatchSchedule(DiffusionSchedule):
    """Rectified flow (Esser et al., 2024, Stable Diffusion 3): the noisy
    input ``(1 − σ)·x0 + σ·ε``, the target the velocity ``ε − x0``, the
    denoiser's timestep ``σ·T`` (T = ``num_train_timesteps``, 1000 for SD3
    and Flux: a float).

    σ is the sampler's noise level (:meth:`TimeStepSampler.levels`),
    continuous as in kohya's SD3 trainer (not diffusers' 1000-value
    table), then shifted towards noise as the model's scheduler config
    (``FlowMatchEulerDiscreteScheduler``) says:

    - a static shift s: ``σ' = s·σ/(1 + (s − 1)·σ)`` (the config's
      ``shift``; SD3 has 3.0);
    - with ``use_dynamic_shifting`` (Flux) a shift by resolution instead:
      ``mu`` linear in the image sequence length ``(H/p)·(W/p)`` of the
      latents, from ``base_shift`` at ``base_image_seq_len`` to
      ``max_shift`` at ``max_image_seq_len`` (diffusers'
      ``calculate_shift``), and ``σ' = e^mu/(e^mu + (1/σ − 1))``
      (``time_shift_type="linear"``: ``mu/(mu + (1/σ − 1))``), as the
      scheduler's ``time_shift`` does.

    Each shift multiplies the odds σ/(1 − σ) by a constant (s, e^mu or mu).
    The config's sampling-only settings (``shift_terminal``, Karras,
    exponential or beta sigmas) do not apply to training.

    Args:
        scheduler (SchedulerMixin): The model's training scheduler; its
            config gives the shift.
        prediction_type (str, optional): Only ``"flow"``. Defaults to None.
        shift (float, optional): s, overriding the config's. Defaults to
            None.
        use_dynamic_shifting (bool, optional): Shift by resolution, overriding
            the config's. Defaults to None.
        patch_size (int): p, latent pixels per side of a token of the
            denoiser. Defaults to 2 (SD3, Flux).
    """

    prediction_types = ("flow", )

    def __init__(self, scheduler: SchedulerMixin,
                 prediction_type: str | None = None,
                 shift: float | None = None,
                 use_dynamic_shifting: bool | None = None,
                 patch_size: int = 2) -> None:
        super().__init__(scheduler, prediction_type)
        config = scheduler.config
        self.shift = config.get("shift", 1.0) if shift is None else shift
        if self.shift <= 0:
            raise ConfigError(
                f"FlowMatchSchedule shift={self.shift} must be > 0.")
        self.use_dynamic_shifting = bool(
            config.get("use_dynamic_shifting", False)
            if use_dynamic_shifting is None else use_dynamic_shifting)
        if patch_size < 1:
            raise ConfigError(
                f"FlowMatchSchedule patch_size={patch_size} must be >= 1.")
        self.patch_size = patch_size
        # diffusers' defaults where a config lacks them
        self.base_image_seq_len = config.get("base_image_seq_len", 256)
        self.max_image_seq_len = config.get("max_image_seq_len", 4096)
        self.base_shift = config.get("base_shift", 0.5)
        self.max_shift = config.get("max_shift", 1.15)
        self.time_shift_type = config.get("time_shift_type", "exponential")
        if self.time_shift_type not in TIME_SHIFT_TYPES:
            raise ConfigError(
                f"time_shift_type={self.time_shift_type!r} of the scheduler "
                f"config; FlowMatchSchedule knows {list(TIME_SHIFT_TYPES)}.")

    def mu(self, latents: torch.Tensor) -> float:
        """The resolution-dependent shift parameter of ``latents``
        (B×C×H×W), as diffusers' ``calculate_shift``."""
        height, width = latents.shape[-2:]
        seq_len = (height // self.patch_size) * (width // self.patch_size)
        slope = (self.max_shift - self.base_shift) / (
            self.max_image_seq_len - self.base_image_seq_len)
        intercept = self.base_shift - slope * self.base_image_seq_len
        return seq_len * slope + intercept

    def shifted(self, sigmas: torch.Tensor,
                latents: torch.Tensor) -> torch.Tensor:
        """``sigmas`` shifted as the schedule says, for ``latents``."""
        if not self.use_dynamic_shifting:
            return shift_levels(sigmas, self.shift)
        mu = self.mu(latents)
        scale = math.exp(mu) if self.time_shift_type == "exponential" else mu
        return scale / (scale + (1 / sigmas - 1))

    def sample_timesteps(self, sampler: TimeStepSampler,
                         randomness: Randomness,
                         latents: torch.Tensor) -> torch.Tensor:
        sigmas = self.shifted(sampler.levels(randomness), latents)
        return sigmas * self.num_train_timesteps

    def sigmas(self, timesteps: torch.Tensor,
               like: torch.Tensor) -> torch.Tensor:
        """σ = t/T of each sample, shaped to broadcast over ``like``."""
        sigmas = timesteps.to(like.device, like.dtype) / (
            self.num_train_timesteps)
        return sigmas.view(-1, *[1] * (like.ndim - 1))

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor,
              timesteps: torch.Tensor) -> torch.Tensor:
        sigmas = self.sigmas(timesteps, latents)
        # the order of FlowMatchEulerDiscreteScheduler.scale_noise
        return sigmas * noise + (1.0 - sigmas) * latents

    def target(self, latents: torch.Tensor, noise: torch.Tensor,
               timesteps: torch.Tensor) -> torch.Tensor:
        return noise - latents

    def loss_context(self, timesteps: torch.Tensor,
                     weight: torch.Tensor | None = None) -> LossContext:
        sigmas = timesteps.float() / self.num_train_timesteps
        return LossContext(timesteps=timesteps,
                           alpha_squared=(1 - sigmas)**2,
                           sigma_squared=sigmas**2,
                           num_train_timesteps=self.num_train_timesteps,
                           prediction_type=self.prediction_type,
                           weight=weight)
