"""The Flux configs' LoRA target sets on FLUX.1 [dev]'s architecture, built
on the meta device (no weights): how many parameters each trains, and that
the "all linear layers" set is the set kohya's sd-scripts trains."""
import os

import pytest
import torch
from diffusers import FluxTransformer2DModel
from mmengine.config import Config
from peft import LoraConfig, inject_adapter_in_model

from diffengine.export.flux import original_module
from tests.conftest import REPO

FLUX_DIR = os.path.join(REPO, "configs", "flux_lora")
ATTENTION = os.path.join(FLUX_DIR, "flux_dev_lora_pokemon_blip.py")
ALL_LINEAR = os.path.join(FLUX_DIR, "flux_dev_lora_all_linear_pokemon_blip.py")
# black-forest-labs/FLUX.1-dev's transformer/config.json
FLUX_1_DEV = dict(
    patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
    attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
    pooled_projection_dim=768, guidance_embeds=True,
    axes_dims_rope=(16, 56, 56))
# What kohya's networks/lora_flux.py adapts in each block of BFL's model.
KOHYA_DOUBLE = {f"{stream}_{layer}" for stream in ("img", "txt")
                for layer in ("attn.qkv", "attn.proj", "mlp.0", "mlp.2",
                              "mod.lin")}
KOHYA_SINGLE = {"linear1", "linear2", "modulation.lin"}


def adapted_flux_1_dev(config: str) -> FluxTransformer2DModel:
    """FLUX.1 [dev]'s transformer on the meta device with a rank-1 LoRA on
    the targets of ``config``."""
    targets = Config.fromfile(config).model.transformer_lora_config
    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_1_DEV)
    return inject_adapter_in_model(
        LoraConfig(r=1, target_modules=targets.target_modules), transformer)


def adapted_modules(transformer: FluxTransformer2DModel) -> list[str]:
    return [name.removesuffix(".lora_A")
            for name, _ in transformer.named_modules()
            if name.endswith(".lora_A")]


@pytest.mark.parametrize("config, per_rank, modules", [
    (ATTENTION, 1_634_304, 19 * 8 + 38 * 3),
    (ALL_LINEAR, 5_369_856, 19 * 14 + 38 * 6),
], ids=["attention", "all-linear"])
def test_parameters_per_rank_on_flux_1_dev(config, per_rank, modules):
    transformer = adapted_flux_1_dev(config)
    base = sum(p.numel() for name, p in transformer.named_parameters()
               if "lora_" not in name)
    adapter = sum(p.numel() for name, p in transformer.named_parameters()
                  if "lora_" in name)
    assert base == 11_901_408_320
    assert adapter == per_rank
    assert len(adapted_modules(transformer)) == modules


def test_all_linear_is_what_kohya_trains():
    """In BFL's names, every double block's image and text attention, MLP
    and modulation and every single block's linear1, linear2 and
    modulation; no embedder, not the final layer."""
    originals = {original_module(name)[0] for name in adapted_modules(
        adapted_flux_1_dev(ALL_LINEAR))}
    assert originals == (
        {f"double_blocks.{i}.{layer}" for i in range(19)
         for layer in KOHYA_DOUBLE}
        | {f"single_blocks.{i}.{layer}" for i in range(38)
           for layer in KOHYA_SINGLE})
