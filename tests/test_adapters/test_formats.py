"""Step folders of every kind reproduce the trained model in their loader:
``load_lora_weights`` for LoRA and DoRA, the LyCORIS loader for LoHa and
LoKr."""
import os

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open

from diffengine.adapter_file import read_adapter_file
from diffengine.export import merge_lora
from diffengine.inference import generate, load_pipeline
from diffengine.models import StableDiffusion
from tests.conftest import KIND_OPTIONS, kind_configs
from tests.oracles.comfyui_keys import comfyui_lora_key_map

SAMPLE = dict(num_inference_steps=2, output_type="np", height=32, width=32)
STEP_FILES = {"LoRA": "pytorch_lora_weights.safetensors",
              "DoRA": "pytorch_lora_weights.safetensors"}


def adapted_layers(module):
    return sum(isinstance(m, BaseTunerLayer) for m in module.modules())


def outputs(model):
    """The text encoder's and the UNet's outputs of a model or pipeline on
    fixed inputs."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (1, 77), generator=generator)
    sample = torch.randn(1, 4, 32, 32, generator=generator)
    with torch.no_grad():
        text = model.text_encoder(ids)[0]
        return text, model.unet(sample, torch.tensor([500]), text).sample


def difference(a, b) -> float:
    """The largest difference between the outputs of ``a`` and ``b``."""
    return max((x - y).abs().max().item()
               for x, y in zip(outputs(a), outputs(b), strict=True))


def diffusers_pipeline(base):
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("kind", list(KIND_OPTIONS))
def test_step_folder_reproduces_the_model(kind, kind_step, tiny_sd):
    step = kind_step(kind)
    name = STEP_FILES.get(kind.split("-")[0], "lycoris_weights.safetensors")
    assert os.listdir(step.step_dir) == [name]
    if name == "pytorch_lora_weights.safetensors":
        # what users do: diffusers' own loader
        pipe = diffusers_pipeline(tiny_sd)
        pipe.load_lora_weights(step.step_dir)
    else:
        pipe = load_pipeline(tiny_sd, step.step_dir)
    model = step.model
    # every adapted layer came back, convolutions included
    assert adapted_layers(pipe.unet) == adapted_layers(model.unet) == 63
    assert adapted_layers(pipe.text_encoder) == 20
    assert difference(pipe, model) <= 1e-5
    image = generate(pipe, "a red circle", [7], **SAMPLE)[0]
    trained = model.infer(["a red circle"], seed=7, **SAMPLE)[0]
    assert np.abs(image - trained).max() <= 1e-5
    base = generate(diffusers_pipeline(tiny_sd), "a red circle", [7],
                    **SAMPLE)[0]
    assert np.abs(image - base).max() > 1e-2


@pytest.mark.parametrize("kind", ["LoHa", "LoKr-small"])
def test_lycoris_step_file_is_the_file_uis_load(kind, kind_step, tiny_sd):
    step = kind_step(kind)
    source = read_adapter_file(step.step_dir)
    with safe_open(source.path, "pt") as f:
        metadata = f.metadata()
    names = {k.split(".")[0] for k in source.state_dict}
    # kohya names ComfyUI maps, each module with a scalar alpha
    key_map = comfyui_lora_key_map(step.model.unet.config, text_layers=5)
    assert names <= set(key_map)
    assert all(source.state_dict[f"{n}.alpha"].ndim == 0 for n in names)
    assert metadata["ss_network_module"] == "lycoris.kohya"
    algo = KIND_OPTIONS[kind]["type"].lower()
    assert f'"algo": "{algo}"' in metadata["ss_network_args"]
    assert source.adapter_configs["unet"]["peft_type"] == algo.upper()
    assert source.training["base_model"] == tiny_sd
    # which diffusers' load_lora_weights does not read: its kohya
    # converter knows no hada_ / lokr_ tensors
    with pytest.raises(ValueError, match="have not been correctly renamed"):
        diffusers_pipeline(tiny_sd).load_lora_weights(source.path)


# (DoRA at strength 0 keeps its magnitudes, in diffusers as in peft)
@pytest.mark.parametrize("kind", ["LoHa-Tucker", "LoKr"])
def test_loaded_strength(kind, kind_step, tiny_sd):
    step = kind_step(kind)
    base = diffusers_pipeline(tiny_sd)
    off = load_pipeline(tiny_sd, step.step_dir, lora_scale=0.0)
    assert difference(off, base) <= 1e-5
    half = load_pipeline(tiny_sd, step.step_dir, lora_scale=0.5)
    assert min(difference(half, base), difference(half, step.model)) > 1e-3


@pytest.mark.parametrize("kind", ["DoRA", "LoHa-Tucker", "LoKr-small"])
def test_merged_model_equals_the_loaded_one(kind, kind_step, tiny_sd,
                                            tmp_path):
    step = kind_step(kind)
    merged = merge_lora(step.step_dir, tiny_sd, str(tmp_path / "merged"))
    assert adapted_layers(merged.unet) == adapted_layers(
        merged.text_encoder) == 0
    reloaded = diffusers_pipeline(str(tmp_path / "merged"))
    assert difference(reloaded, step.model) <= 1e-5


def test_a_step_file_holds_one_family(tiny_sd):
    configs = kind_configs("LoHa")
    configs["text_encoder_lora_config"] = kind_configs("LoRA")[
        "text_encoder_lora_config"]
    with pytest.raises(ValueError, match=r"the adapters \['LoHa', 'LoRA'\] "
                       "need different step files"):
        StableDiffusion(tiny_sd, **configs)


def test_loha_unet_with_lokr_text_encoder(tiny_sd, tmp_path):
    configs = kind_configs("LoHa")
    configs["text_encoder_lora_config"] = kind_configs("LoKr")[
        "text_encoder_lora_config"]
    model = StableDiffusion(tiny_sd, **configs)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param += 0.3 * torch.randn_like(param)
    model.eval()
    model.save_lora_weights(str(tmp_path))
    source = read_adapter_file(str(tmp_path))
    assert {p: source.kind(p).name for p in source.parts} == {
        "unet": "LoHa", "text_encoder": "LoKr"}
    pipe = load_pipeline(tiny_sd, str(tmp_path))
    assert difference(pipe, model) <= 1e-5
