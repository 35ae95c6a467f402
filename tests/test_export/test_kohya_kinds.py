"""kohya/LyCORIS exports of every kind: the weights ComfyUI rebuilds from
them (tests/oracles/comfyui_weights.py) are the trained ones."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from diffengine.adapter_file import AdapterFile, read_adapter_file
from diffengine.adapters.kohya import kohya_modules
from diffengine.export import export_lora
from diffengine.export.standalone_lora import dora_base_weights
from diffengine.inference import load_pipeline
from tests.conftest import KIND_OPTIONS
from tests.oracles.comfyui_weights import rebuild_error

# The tensors ComfyUI's adapter of each kind loads (any other would be
# reported as "lora key not loaded").
LOADED = {
    "LoRA": {"lora_up.weight", "lora_down.weight", "alpha"},
    "DoRA": {"lora_up.weight", "lora_down.weight", "alpha", "dora_scale"},
    "LoHa": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1",
             "hada_t2", "alpha"},
    "LoKr": {"lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a",
             "lokr_w2_b", "lokr_t2", "alpha"},
}


@pytest.mark.parametrize("kind", list(KIND_OPTIONS))
def test_comfyui_rebuilds_the_trained_weights(kind, kind_step, tmp_path):
    step = kind_step(kind)
    out = str(tmp_path / f"{kind}.safetensors")
    export_lora(step.step_dir, out)
    exported = load_file(out)
    family = kind.split("-")[0]
    suffixes = {k.split(".", 1)[1] for k in exported}
    assert suffixes <= LOADED[family]
    assert "alpha" in suffixes
    worst, convs = rebuild_error(step.model, exported)
    assert worst <= 1e-5
    # the tiny UNet's resnet, sampler and projection convolutions
    assert convs == 31
    if family != "DoRA":
        # other strengths scale the change alike in ComfyUI and peft
        worst, _ = rebuild_error(step.model, exported, strength=0.5)
        assert worst <= 1e-5


def test_lokr_full_factors_carry_the_strength(kind_step, tmp_path):
    step = kind_step("LoKr")
    out = str(tmp_path / "lokr.safetensors")
    export_lora(step.step_dir, out)
    unet = [t for name, t in kohya_modules(load_file(out)).items()
            if name.startswith("lora_unet_")]
    full = [t for t in unet if "lokr_w2" in t]
    decomposed = [t for t in unet if "lokr_w2_b" in t]
    assert full and decomposed
    # UIs ignore alpha beside two full factors: LyCORIS' alpha = rank, the
    # strength (alpha 3 / r 4) in lokr_w1
    assert {t["alpha"].item() for t in full} == {4.0}
    assert {t["alpha"].item() for t in decomposed} == {3.0}


def lycoris_dora_weight(frozen, tensors, strength=1.0):
    """LyCORIS' (and DoRA's) reading: W + f·ΔW re-normalised per output row
    to ``dora_scale``."""
    delta = tensors["lora_up.weight"].flatten(1) @ tensors[
        "lora_down.weight"].flatten(1)
    factor = tensors["alpha"].item() / tensors["lora_down.weight"].shape[0]
    adapted = frozen + factor * delta.reshape(frozen.shape)
    norm = adapted.reshape(adapted.shape[0], -1).norm(dim=1)
    return adapted * (tensors["dora_scale"] / norm.reshape(
        -1, *[1] * (frozen.ndim - 1)))


def test_dora_scale_for_lycoris_is_peft_magnitude(kind_step, tmp_path):
    step = kind_step("DoRA")
    out = str(tmp_path / "dora.safetensors")
    export_lora(step.step_dir, out, dora_reader="lycoris")
    exported = load_file(out)
    worst, _ = rebuild_error(step.model, exported,
                                    rebuild=lycoris_dora_weight)
    assert worst <= 1e-5
    # ComfyUI divides by the frozen weight's norm: this file is off there,
    # which is why the default export writes dora_scale for ComfyUI
    worst, _ = rebuild_error(step.model, exported)
    assert worst > 1e-3
    name = ("lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_"
            "to_q")
    layer = step.model.unet.get_submodule(
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q")
    magnitude = layer.lora_magnitude_vector["default"].weight
    assert torch.equal(exported[f"{name}.dora_scale"],
                       magnitude.detach().reshape(-1, 1))


def test_a_dora_export_is_not_loaded_where_diffusers_would_drop_it(
        kind_step, tiny_sd, tmp_path):
    out = str(tmp_path / "dora.safetensors")
    export_lora(kind_step("DoRA").step_dir, out)
    with pytest.raises(ValueError, match="is a kohya DoRA file, whose "
                       "dora_scale diffusers drops; load its step folder"):
        load_pipeline(tiny_sd, out)


def test_dora_export_needs_the_base(kind_step, tmp_path):
    source = read_adapter_file(kind_step("DoRA").step_dir)
    unrecorded = AdapterFile(source.path, source.state_dict,
                          source.adapter_configs, training={})
    with pytest.raises(ValueError, match="records no base model; its "
                       "dora_scale for ComfyUI depends on the base weights: "
                       "pass --base"):
        dora_base_weights(unrecorded, None, "comfyui")
    assert dora_base_weights(unrecorded, None, "lycoris") is None
    with pytest.raises(ValueError, match=r"dora_reader='a1111'"):
        export_lora(source.path, str(tmp_path / "x.safetensors"),
                    dora_reader="a1111")


@pytest.mark.parametrize("kind, module, args", [
    ("LoRA", "networks.lora", {"conv_dim": "4", "conv_alpha": "3"}),
    ("DoRA", "lycoris.kohya", {"algo": "lora", "conv_dim": "4",
                               "conv_alpha": "3", "dora_wd": "True",
                               "wd_on_output": "True"}),
    # flattened convolution factors (2-D): the step file's record says so
    ("LoHa", "lycoris.kohya", {"algo": "loha", "conv_dim": "4",
                               "conv_alpha": "3", "use_tucker": "False"}),
    ("LoHa-Tucker", "lycoris.kohya", {"algo": "loha", "conv_dim": "4",
                                      "conv_alpha": "3", "use_tucker": "True"}),
    ("LoKr-small", "lycoris.kohya", {"algo": "lokr", "conv_dim": "1",
                                     "conv_alpha": "3", "factor": "-1",
                                     "decompose_both": "True",
                                     "use_tucker": "True"}),
])
def test_network_metadata_as_lycoris_writes_it(kind, module, args, kind_step,
                                               tmp_path):
    out = str(tmp_path / "x.safetensors")
    export_lora(kind_step(kind).step_dir, out)
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
    assert metadata["ss_network_module"] == module
    assert json.loads(metadata["ss_network_args"]) == args
    assert metadata["modelspec.description"].startswith(
        f"{kind.split('-')[0]} trained with diffengine")


@pytest.mark.parametrize("kind", ["LoHa", "LoKr-small"])
def test_lycoris_export_loads_back_in_this_project(kind, kind_step, tiny_sd,
                                                   tmp_path):
    step = kind_step(kind)
    out = str(tmp_path / "export.safetensors")
    export_lora(step.step_dir, out, dtype="float16")
    pipe = load_pipeline(tiny_sd, out)
    from_step = load_pipeline(tiny_sd, step.step_dir)
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 32, 32, generator=generator)
    text = torch.randn(1, 77, 32, generator=generator)
    with torch.no_grad():
        loaded = pipe.unet(sample, torch.tensor([500]), text).sample
        expected = from_step.unet(sample, torch.tensor([500]), text).sample
    # float16 weights: close, not equal
    assert 0 < (loaded - expected).abs().max() <= 2e-2
