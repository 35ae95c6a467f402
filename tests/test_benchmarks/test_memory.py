"""The memory benchmark's measuring and arithmetic."""
import os

import pytest
import torch
from diffusers import FluxTransformer2DModel

from benchmarks.memory import (
    extrapolate,
    full_size,
    part_parameters,
    peak_resident_bytes,
    reset_peak_resident,
    tensor_bytes,
    weight_bytes,
)
from diffengine.testing import FLUX_TRANSFORMER_CONFIG

MIB = 2**20


def test_a_slice_scales_to_flux_dev():
    with torch.device("meta"):
        slice_ = FluxTransformer2DModel(**{
            **FLUX_TRANSFORMER_CONFIG, "num_layers": 2,
            "num_single_layers": 4}, guidance_embeds=True)
    parts = part_parameters(slice_)
    assert full_size(parts, (2, 4)) == sum(
        p.numel() for p in slice_.parameters())
    # FLUX.1 [dev]'s transformer, from the blocks of the slice
    assert full_size(parts) == 11_901_408_320


def test_extrapolate_through_two_block_counts():
    # 4 bytes fixed and 6 per 1 double + 2 single blocks
    estimate, per_unit = extrapolate({(1, 2): 10, (2, 4): 16})
    assert (estimate, per_unit) == (4 + 6 * 19, 6)
    # one count alone is scaled by the blocks, fixed part and all
    assert extrapolate({(2, 4): 16}) == (8 * 19, 8)


def test_quantized_weights_count_values_and_scales():
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    linear = torch.nn.Linear(64, 32, bias=False, dtype=torch.bfloat16)
    assert weight_bytes(linear) == 64 * 32 * 2
    quantize_(linear, Int8WeightOnlyConfig())
    weight = linear.weight
    assert type(weight) is not torch.Tensor
    # one byte a value plus a scale per output row
    assert 64 * 32 < tensor_bytes(weight) <= 64 * 32 + 32 * 4 + 64


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                    reason="Linux only")
def test_reset_peak_resident_forgets_freed_memory():
    block = torch.ones(256 * MIB, dtype=torch.uint8)
    peak = peak_resident_bytes()
    del block
    reset_peak_resident()
    assert peak_resident_bytes() < peak - 200 * MIB
