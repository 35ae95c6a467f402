"""A sampler whose samples carry their own seed, so runs replay exactly."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from mmengine.dataset import DefaultSampler

from diffengine.registry import DATA_SAMPLERS


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(
        2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


@DATA_SAMPLERS.register_module()
class DeterministicSampler(DefaultSampler):
    """``DefaultSampler`` that yields ``(index, seed)`` pairs.

    The seed depends on the sampler's seed, the epoch and the index only, so
    random crops, flips, noise and timesteps are the same whatever the
    number of processes, the batch split, the DataLoader workers, or an
    interruption and resume. Each rank takes every ``world_size``-th index
    of the shuffled order, as ``DefaultSampler`` does.

    ``skip(n)`` drops the first ``n`` samples of this rank in the next
    epoch it yields, which is how a resumed run continues mid-epoch without
    loading the images it has already trained on.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._skip = 0

    def skip(self, num_samples: int) -> None:
        """Drop ``num_samples`` of this rank at the start of the next epoch."""
        self._skip = num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        skip, self._skip = self._skip, 0
        for index in indices[skip:]:
            yield index, sample_seed(self.seed, self.epoch, index)
