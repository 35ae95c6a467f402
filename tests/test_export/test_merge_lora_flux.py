"""merge_lora of a Flux.1 LoRA: a whole diffusers folder with the LoRA
fused into the transformer and CLIP-L, T5 and the VAE as they were."""
import os

import torch
from diffusers import FluxPipeline

from diffengine.export import merge_lora
from tests.conftest import TEXT_TARGETS, save_perturbed_flux_step
from tests.test_export.test_merge_lora_sd3 import largest_difference


def test_merged_folder_loads_whole_with_the_fused_weights(tiny_flux,
                                                          tmp_path):
    step = str(tmp_path / "step4")
    save_perturbed_flux_step(
        FluxPipeline.from_pretrained(tiny_flux), step,
        dict(r=4, lora_alpha=2, target_modules=["to_q", "to_k", "proj_mlp"]),
        dict(r=2, lora_alpha=8, target_modules=TEXT_TARGETS))
    out = str(tmp_path / "merged")
    merge_lora(step, tiny_flux, out)
    assert sorted(os.listdir(out)) == sorted(
        ["model_index.json", "scheduler", "transformer", "vae",
         "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"])
    merged = FluxPipeline.from_pretrained(out)
    fused = FluxPipeline.from_pretrained(tiny_flux)
    fused.load_lora_weights(step)
    fused.fuse_lora(components=["transformer", "text_encoder"])
    fused.unload_lora_weights()
    base = FluxPipeline.from_pretrained(tiny_flux)
    for part in ("transformer", "text_encoder"):
        assert not any("lora" in n for n, _ in
                       getattr(merged, part).named_parameters())
        assert largest_difference(getattr(fused, part),
                                  getattr(merged, part)) <= 1e-6, part
        assert largest_difference(getattr(base, part),
                                  getattr(merged, part)) > 1e-3, part
    for part in ("text_encoder_2", "vae"):
        assert largest_difference(getattr(base, part),
                                  getattr(merged, part)) == 0.0, part
    merged.set_progress_bar_config(disable=True)
    image = merged("a red circle", num_inference_steps=2, height=32,
                   width=32, max_sequence_length=16,
                   generator=torch.Generator().manual_seed(0),
                   output_type="np").images[0]
    assert image.shape == (32, 32, 3)
