"""merge_lora: a full diffusers model that draws what the LoRA draws."""
import os

import numpy as np
from diffusers import StableDiffusionPipeline

from diffengine.export import merge_lora
from diffengine.inference import generate, load_pipeline
from tests.conftest import SAMPLE


def test_merged_model_equals_the_lora_loaded_pipeline(lora_step, tiny_sd,
                                                      tmp_path):
    out = str(tmp_path / "merged")
    merge_lora(lora_step.step_dir, tiny_sd, out)
    assert sorted(os.listdir(out)) == sorted(
        ["model_index.json", "scheduler", "text_encoder", "tokenizer", "unet",
         "vae"])
    merged = StableDiffusionPipeline.from_pretrained(out)
    # the adapters are fused in, not carried along
    assert not any("lora" in n for n, _ in merged.unet.named_parameters())
    assert not any("lora" in n for n, _ in merged.text_encoder.named_parameters())

    settings = {k: v for k, v in SAMPLE.items() if k not in ("prompt", "seed")}
    merged.set_progress_bar_config(disable=True)
    fused = generate(merged, SAMPLE["prompt"], [SAMPLE["seed"]], **settings)[0]
    assert np.abs(fused - lora_step.reference).max() <= 1e-4
    base = generate(load_pipeline(tiny_sd), SAMPLE["prompt"], [SAMPLE["seed"]],
                    **settings)[0]
    assert np.abs(fused - base).max() > 1e-2


def test_merge_at_half_strength(lora_step, tiny_sd, tmp_path):
    out = str(tmp_path / "half")
    merge_lora(lora_step.step_dir, tiny_sd, out, lora_scale=0.5)
    settings = {k: v for k, v in SAMPLE.items() if k not in ("prompt", "seed")}
    merged = StableDiffusionPipeline.from_pretrained(out)
    merged.set_progress_bar_config(disable=True)
    fused = generate(merged, SAMPLE["prompt"], [SAMPLE["seed"]], **settings)[0]
    half = generate(load_pipeline(tiny_sd, lora_step.step_dir, lora_scale=0.5),
                    SAMPLE["prompt"], [SAMPLE["seed"]], **settings)[0]
    assert np.abs(fused - half).max() <= 1e-4
    assert np.abs(fused - lora_step.reference).max() > 1e-3
