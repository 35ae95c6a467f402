"""merge_lora of an SD3 LoRA: a whole diffusers folder with the LoRA fused."""
import os

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from diffengine.errors import ConfigError
from diffengine.export import merge_lora
from tests.conftest import save_perturbed_sd3_step


@pytest.fixture(scope="module")
def sd3_step(tmp_path_factory, tiny_sd3):
    step = str(tmp_path_factory.mktemp("sd3") / "step4")
    save_perturbed_sd3_step(tiny_sd3, step)
    return step


def largest_difference(want: torch.nn.Module, got: torch.nn.Module) -> float:
    want, got = want.state_dict(), got.state_dict()
    assert want.keys() == got.keys()
    return max((want[k] - got[k]).abs().max().item() for k in want)


def test_merged_folder_loads_whole_with_the_fused_weights(sd3_step, tiny_sd3,
                                                          tmp_path):
    out = str(tmp_path / "merged")
    merge_lora(sd3_step, tiny_sd3, out)
    assert sorted(os.listdir(out)) == sorted(
        ["model_index.json", "scheduler", "transformer", "vae",
         "text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer",
         "tokenizer_2", "tokenizer_3"])
    merged = StableDiffusion3Pipeline.from_pretrained(out)
    fused = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    fused.load_lora_weights(sd3_step)
    fused.fuse_lora()
    fused.unload_lora_weights()
    base = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    for part in ("transformer", "text_encoder", "text_encoder_2"):
        assert not any("lora" in n for n, _ in
                       getattr(merged, part).named_parameters())
        assert largest_difference(getattr(fused, part),
                                  getattr(merged, part)) <= 1e-6, part
        assert largest_difference(getattr(base, part),
                                  getattr(merged, part)) > 1e-3, part
    # T5 and the VAE come through as they were
    for part in ("text_encoder_3", "vae"):
        assert largest_difference(getattr(base, part),
                                  getattr(merged, part)) == 0.0, part
    merged.set_progress_bar_config(disable=True)
    image = merged("a red circle", num_inference_steps=2, height=64,
                   width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_single_file_is_refused_before_anything_is_written(sd3_step, tiny_sd3,
                                                           tmp_path):
    out = tmp_path / "merged.safetensors"
    with pytest.raises(ConfigError, match=r"--format single-file writes "
                       r"Stable Diffusion 1\.x and SDXL checkpoints, and this "
                       r"base's denoiser is a SD3Transformer2DModel; use "
                       r"--format diffusers\."):
        merge_lora(sd3_step, tiny_sd3, str(out), format="single-file")
    assert not out.exists()
