"""kohya export of an SDXL LoRA: ComfyUI's SDXL names, diffusers reload."""
import numpy as np
import pytest
from safetensors import safe_open

from diffengine.export import export_lora
from diffengine.inference import generate, load_pipeline
from diffengine.models import StableDiffusionXL
from tests.conftest import save_perturbed_step
from tests.oracles.comfyui_keys import comfyui_sdxl_lora_key_map

SAMPLE = dict(num_inference_steps=3, output_type="np", height=64, width=64)


@pytest.fixture(scope="module")
def sdxl_step(tmp_path_factory, tiny_sdxl):
    step = str(tmp_path_factory.mktemp("sdxl") / "step3")
    model = save_perturbed_step(StableDiffusionXL, tiny_sdxl, step, "64x64")
    reference = model.infer(["a red circle"], seed=7, **SAMPLE)[0]
    return step, model, reference


def test_keys_map_one_to_one_onto_comfyui_sdxl_names(sdxl_step, tmp_path):
    step, model, _ = sdxl_step
    kohya = export_lora(step, str(tmp_path / "xl.safetensors"))
    names = {k.split(".")[0] for k in kohya}
    key_map = comfyui_sdxl_lora_key_map(
        model.unet.config, model.text_encoder.config.num_hidden_layers,
        model.text_encoder_2.config.num_hidden_layers)
    assert not names - set(key_map), sorted(names - set(key_map))[:5]
    assert len({key_map[n][0] for n in names}) == len(names)
    adapted = {f"{part}.{name}" for part in model.trainable_parts
               for name, module in getattr(model, part).named_modules()
               if hasattr(module, "lora_A")}
    assert {key_map[n][1] for n in names} == adapted
    assert {n.split("_")[1] for n in names} == {"unet", "te1", "te2"}
    alphas = {k.split("_")[1]: v.item() for k, v in kohya.items()
              if k.endswith(".alpha")}
    assert alphas == {"unet": 2.0, "te1": 8.0, "te2": 8.0}


def test_kohya_file_reloads_in_diffusers_with_the_same_images(
        sdxl_step, tiny_sdxl, tmp_path):
    step, _, reference = sdxl_step
    out = str(tmp_path / "xl.safetensors")
    export_lora(step, out)
    pipe = load_pipeline(tiny_sdxl, out)
    loaded = generate(pipe, "a red circle", [7], **SAMPLE)[0]
    assert np.abs(loaded - reference).max() <= 1e-5
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
    assert metadata["modelspec.architecture"] == (
        "stable-diffusion-xl-v1-base/lora")
    assert metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    assert metadata["diffengine.architecture"] == "stable-diffusion-xl-v1-base"
