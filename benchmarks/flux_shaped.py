"""FLUX.1 [dev] and [schnell]'s architecture with random weights, for the
GPU sweep: speed, memory and FLOP figures without a download.

The makers are :mod:`diffengine.testing`'s (``make_flux_shaped``,
``flux_shaped_models``); here is the slice of FLUX.1 a CPU can train.
"""
from __future__ import annotations

import torch

from diffengine.testing import flux_shaped_models, make_flux_shaped

# A slice of FLUX.1 [dev] a CPU can train: its width, 1 double- and 2
# single-stream blocks (of 19 and 38), 0.69 B parameters.
SLICE_BLOCKS = dict(num_layers=1, num_single_layers=2)


def make_flux_slice(path: str, seed: int = 0,
                    device: str | torch.device = "cpu") -> str:
    """:func:`~diffengine.testing.make_flux_shaped` [dev] with
    :data:`SLICE_BLOCKS`."""
    return make_flux_shaped(path, "dev", seed, device, **SLICE_BLOCKS)


__all__ = ["SLICE_BLOCKS", "flux_shaped_models", "make_flux_shaped",
           "make_flux_slice"]
