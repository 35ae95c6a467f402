"""The noise added to the latents in training, one config line each.

``model.noise_generator=dict(type=...)``. Each generator returns noise
shaped like the latents, drawn sample by sample from a
:class:`~diffengine.randomness.Randomness`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from diffengine.errors import ConfigError
from diffengine.randomness import Randomness
from diffengine.registry import MODELS


@MODELS.register_module()
class WhiteNoise:
    """Standard normal noise, as diffusion models are defined with."""

    def __call__(self, latents: torch.Tensor,
                 randomness: Randomness) -> torch.Tensor:
        return randomness.randn(*latents.shape[1:])


@MODELS.register_module()
class OffsetNoise(WhiteNoise):
    """White noise plus a per-channel constant (Guttenberg, 2023, "Diffusion
    with Offset Noise"), which lets the model learn very dark and very light
    images.

    Args:
        offset_weight (float): Scale of the per-channel offset; 0.05 to 0.1
            is usual. Defaults to 0.05.
    """

    def __init__(self, offset_weight: float = 0.05) -> None:
        if offset_weight < 0:
            raise ConfigError(
                f"OffsetNoise offset_weight={offset_weight} must be >= 0.")
        self.offset_weight = offset_weight

    def __call__(self, latents: torch.Tensor,
                 randomness: Randomness) -> torch.Tensor:
        noise = super().__call__(latents, randomness)
        channels = latents.shape[1]
        offset = randomness.randn(channels, *[1] * (latents.ndim - 2))
        return noise + self.offset_weight * offset


@MODELS.register_module()
class PyramidNoise(WhiteNoise):
    """Multi-resolution ("pyramid") noise (Whitaker, 2023, "Multi-Resolution
    Noise for Diffusion Model Training"; kohya's ``multires_noise``).

    Noise at the latent size plus upsampled noise of ever coarser grids, the
    grid shrinking by a factor r per level (r drawn from [2, 4) per sample
    and level with ``random_multiplier``, else 2) and level i weighted by
    ``discount ** i``, until a grid side reaches 1. Each sample's noise is
    then divided by its own standard deviation, so the result has unit
    variance whatever the batch (a batch-wide renormalisation would make a
    sample's noise depend on the others).

    Args:
        discount (float): Weight ratio between consecutive levels. Defaults
            to 0.9.
        random_multiplier (bool): Draw the shrink factor per level. Defaults
            to True.
        max_levels (int): At most this many coarser levels. Defaults to 10.
    """

    def __init__(self, discount: float = 0.9, random_multiplier: bool = True,
                 max_levels: int = 10) -> None:
        if not 0 < discount <= 1:
            raise ConfigError(
                f"PyramidNoise discount={discount} must be in (0, 1].")
        self.discount = discount
        self.random_multiplier = random_multiplier
        self.max_levels = max_levels

    def __call__(self, latents: torch.Tensor,
                 randomness: Randomness) -> torch.Tensor:
        return torch.cat([self._one(latents.shape[1:], sample)
                          for sample in randomness.split()])

    def _one(self, shape: torch.Size, randomness: Randomness) -> torch.Tensor:
        channels, height, width = shape
        noise = randomness.randn(channels, height, width)
        for level in range(1, self.max_levels + 1):
            factor = (2 + 2 * randomness.rand().item()
                      if self.random_multiplier else 2.0) ** level
            grid = (max(1, int(height / factor)), max(1, int(width / factor)))
            coarse = randomness.randn(channels, *grid)
            noise = noise + self.discount ** level * F.interpolate(
                coarse, size=(height, width), mode="bilinear")
            if min(grid) == 1:
                break
        return noise / noise.std()
