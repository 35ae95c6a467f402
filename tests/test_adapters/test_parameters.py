"""Trainable parameters of each kind: counted from the layer shapes on the
SD1.5 architecture, and logged when a model is built."""
import pytest
import torch
from diffusers import UNet2DConditionModel
from mmengine.logging import MMLogger
from peft.tuners.lokr.layer import factorization
from torch import nn

from diffengine.adapters import add_adapter, count_trainable_parameters
from diffengine.models import StableDiffusion
from diffengine.testing import SD15_UNET_CONFIG
from tests.conftest import UNET_CONV_TARGETS, UNET_TARGETS, kind_configs

KIND_CONFIGS = {"LoRA": {}, "DoRA": dict(use_dora=True),
                "LoHa": dict(type="LoHa"), "LoKr": dict(type="LoKr")}


def layer_parameters(kind: str, layer: nn.Module, r: int) -> int:
    """An adapter's parameters on one linear or convolution layer, from the
    kind's factorisation of ΔW (out × in × kernel)."""
    out, inputs = layer.weight.shape[:2]
    kernel = layer.weight[0, 0].numel()
    if kind in ("LoRA", "DoRA"):
        # A: r × in × kernel, B: out × r (DoRA: a magnitude per output)
        return r * (inputs * kernel + out) + (out if kind == "DoRA" else 0)
    if kind == "LoHa":
        # two rank-r products of (out × r)(r × in·kernel)
        return 2 * r * (out + inputs * kernel)
    # LoKr: W1 (a × c) full, W2 (b × d·kernel) full or rank-r, with
    # out = a·b and in = c·d split near their square roots
    a, b = factorization(out)
    c, d = factorization(inputs)
    w2 = b * d * kernel if r >= max(b, d) / 2 else r * (b + d * kernel)
    return a * c + w2


def expected_parameters(unet: nn.Module, targets: list[str], kind: str,
                        r: int) -> int:
    return sum(
        layer_parameters(kind, layer, r)
        for name, layer in unet.named_modules()
        if isinstance(layer, (nn.Linear, nn.Conv2d)) and any(
            name == t or name.endswith("." + t) for t in targets))


# kind, targets, the count at rank 8 (the table in docs/adapters.md)
SD15_AT_RANK_8 = [
    ("LoRA", UNET_TARGETS, 1_594_368),  # 199,296 × 8
    ("DoRA", UNET_TARGETS, 1_694_208),
    ("LoHa", UNET_TARGETS, 3_188_736),
    ("LoKr", UNET_TARGETS, 138_592),
    ("LoRA", UNET_CONV_TARGETS, 6_622_208),
    ("DoRA", UNET_CONV_TARGETS, 6_805_248),
    ("LoHa", UNET_CONV_TARGETS, 13_244_416),
    ("LoKr", UNET_CONV_TARGETS, 378_416),
]


@pytest.mark.parametrize("kind, targets, count", SD15_AT_RANK_8)
def test_sd15_parameters_at_rank_8(kind, targets, count):
    # The SD1.5 architecture on the meta device: shapes without memory.
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
    unet.requires_grad_(False)
    expected = expected_parameters(unet, targets, kind, 8)
    add_adapter(unet, dict(r=8, target_modules=targets, **KIND_CONFIGS[kind]),
                "unet_lora_config")
    assert count_trainable_parameters(unet) == expected == count


@pytest.mark.parametrize("kind", ["DoRA", "LoHa", "LoKr"])
def test_the_count_is_logged_with_the_kind(kind, tiny_sd, tmp_path):
    log_file = tmp_path / "count.log"
    MMLogger.get_instance(f"count-{kind}", log_file=str(log_file))
    model = StableDiffusion(tiny_sd, **kind_configs(kind))
    unet, text = (model.trainable_parameter_counts()[p]
                  for p in ("unet", "text_encoder"))
    frozen = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    assert unet == expected_parameters(frozen, UNET_CONV_TARGETS, kind, 4)
    assert (f"{kind}: {unet + text:,} trainable parameters (unet {unet:,}, "
            f"text_encoder {text:,}); frozen base in float32"
            ) in log_file.read_text()
