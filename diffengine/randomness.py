"""Per-sample random draws: every number a sample uses comes from its seed.

``DeterministicSampler`` gives each sample a seed of (run seed, epoch,
index). The dataset (crops, flips, caption tricks) and the model (VAE
sample, noise, timesteps, input perturbation) each draw from a generator
seeded with it, through :class:`Randomness`, so a sample's numbers do not
depend on the batch it is in, the process, the device or a resume. No
component draws from the global RNGs.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# Independent streams drawn from one sample seed: the data pipeline's and
# the model's numbers must not be the same draws.
STREAMS = {"data": 1, "model": 2, "validation": 3}


def stream_seed(seed: int, stream: str) -> int:
    """A 63-bit seed for ``stream`` (a key of :data:`STREAMS`) of a sample."""
    state = np.random.SeedSequence([seed, STREAMS[stream]]).generate_state(
        2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


class Randomness:
    """Random draws for a batch, each sample from its own generator.

    Every method returns one value (or tensor) per sample, stacked along a
    first dimension of size ``len(self)``. Generators are CPU generators, so
    the numbers are the same on any device; results are moved to
    ``device``.

    Args:
        generators (Sequence[torch.Generator]): One per sample. The same
            generator may serve several samples, which then draw from it in
            turn (the numbers then depend on the batch).
        device (str | torch.device): Where results go. Defaults to "cpu".
    """

    def __init__(self, generators: Sequence[torch.Generator],
                 device: str | torch.device = "cpu") -> None:
        if not generators:
            raise ValueError("Randomness needs at least one generator.")
        self.generators = list(generators)
        self.device = torch.device(device)

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], stream: str,
                   device: str | torch.device = "cpu") -> Randomness:
        """One generator per sample seed, for ``stream`` ("data", "model")."""
        return cls([torch.Generator().manual_seed(stream_seed(int(s), stream))
                    for s in seeds], device)

    def __len__(self) -> int:
        return len(self.generators)

    def split(self) -> list[Randomness]:
        """One single-sample ``Randomness`` per sample, for draws whose shape
        differs between samples."""
        return [Randomness([g], self.device) for g in self.generators]

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal values, ``len(self) × shape``, float32."""
        return self._stack([torch.randn(shape, generator=g)
                            for g in self.generators])

    def rand(self) -> torch.Tensor:
        """One uniform value in [0, 1) per sample, float32."""
        return self._stack([torch.rand((), generator=g)
                            for g in self.generators])

    def randint(self, high: int) -> torch.Tensor:
        """One integer in [0, high) per sample, int64."""
        return self._stack([torch.randint(high, (), generator=g)
                            for g in self.generators])

    def randperm(self, n: int) -> torch.Tensor:
        """One permutation of ``range(n)`` per sample, ``len(self) × n``."""
        return self._stack([torch.randperm(n, generator=g)
                            for g in self.generators])

    def _stack(self, values: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(values).to(self.device)
