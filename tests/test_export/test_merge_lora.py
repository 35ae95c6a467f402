"""merge_lora: a full diffusers model that draws what the LoRA draws."""
import os

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from diffengine.export import merge_lora
from diffengine.inference import generate, load_pipeline
from tests.conftest import SAMPLE
from tests.oracles.comfyui_keys import unet_diffusers_to_ldm
from tests.oracles.original_layout import comfyui_clip_load, vae_diffusers_to_ldm


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


def test_merged_folder_loads_whole_in_comfyui(lora_step, tiny_sd, tmp_path):
    out = str(tmp_path / "merged")
    merged = merge_lora(lora_step.step_dir, tiny_sd, out)
    text = load_file(os.path.join(out, "text_encoder", "model.safetensors"))
    loaded = StableDiffusionPipeline.from_pretrained(out)
    missing, unexpected = comfyui_clip_load(text, loaded.text_encoder.config)
    assert (missing, unexpected) == ([], [])
    assert len(text) == 84
    # ComfyUI's load_unet and VAE place every diffusers weight
    for part, names in (("unet", unet_diffusers_to_ldm(loaded.unet.config)),
                        ("vae", vae_diffusers_to_ldm(loaded.vae.config))):
        weights = load_file(os.path.join(
            out, part, "diffusion_pytorch_model.safetensors"))
        assert all(k.rsplit(".", 1)[0] in names for k in weights), part

    # the text encoder transformers loads is the fused one, exactly
    fused = merged.text_encoder.state_dict()
    state = loaded.text_encoder.state_dict()
    assert fused.keys() == state.keys()
    assert max((fused[k] - state[k]).abs().max().item() for k in fused) == 0.0
    assert all(torch.equal(text[f"text_model.{k}"], v)
               for k, v in state.items())
    base = load_pipeline(tiny_sd).text_encoder.state_dict()
    assert any(not torch.equal(base[k], state[k]) for k in state)


def test_float16_folder(lora_step, tiny_sd, tmp_path):
    out = str(tmp_path / "half")
    merge_lora(lora_step.step_dir, tiny_sd, out, dtype="float16")
    weights = load_file(os.path.join(out, "unet",
                                     "diffusion_pytorch_model.safetensors"))
    assert {v.dtype for v in weights.values()} == {torch.float16}
    text = load_file(os.path.join(out, "text_encoder", "model.safetensors"))
    assert {v.dtype for v in text.values()} == {torch.float16}
    assert all(k.startswith("text_model.") for k in text)
