"""The adapter kinds on SDXL: the shared model base gives them both text
encoders, ``lora_te1_`` / ``lora_te2_`` names and the same numbers."""
import numpy as np
import pytest
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from diffengine.export import export_lora
from diffengine.inference import generate, load_pipeline
from diffengine.models import StableDiffusionXL
from tests.conftest import kind_configs, perturb_lora
from tests.oracles.comfyui_keys import comfyui_sdxl_lora_key_map
from tests.oracles.comfyui_weights import rebuild_error

SAMPLE = dict(num_inference_steps=2, output_type="np", height=64, width=64,
              guidance_scale=7.5)


@pytest.mark.parametrize("kind", ["DoRA", "LoHa", "LoKr"])
def test_sdxl_step_folder_and_export(kind, tiny_sdxl, tmp_path):
    model = StableDiffusionXL(tiny_sdxl, **kind_configs(kind))
    perturb_lora(model)
    model.eval()
    step = str(tmp_path / "step1")
    model.save_lora_weights(step)
    trained = model.infer(["a red circle"], seed=7, **SAMPLE)[0]
    if kind == "DoRA":
        pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(step)
    else:
        pipe = load_pipeline(tiny_sdxl, step)
    loaded = generate(pipe, "a red circle", [7], **SAMPLE)[0]
    assert np.abs(loaded - trained).max() <= 1e-5

    out = str(tmp_path / "xl.safetensors")
    export_lora(step, out)
    exported = load_file(out)
    assert {k.split("_")[1] for k in exported} == {"unet", "te1", "te2"}
    key_map = comfyui_sdxl_lora_key_map(
        model.unet.config, model.text_encoder.config.num_hidden_layers,
        model.text_encoder_2.config.num_hidden_layers)
    worst, convs = rebuild_error(model, exported, key_map=key_map)
    assert worst <= 1e-5 and convs > 0
