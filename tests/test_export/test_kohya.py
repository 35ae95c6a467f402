"""kohya export: keys ComfyUI and A1111 take, alphas at the trained strength."""
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from diffengine.adapter_file import DOWN_SUFFIXES, AdapterFile, read_adapter_file
from diffengine.adapters import LORA
from diffengine.adapters.kohya import canonical_text_encoder_keys
from diffengine.export import export_lora, to_kohya
from diffengine.export.metadata import export_metadata
from diffengine.export.standalone_lora import at_strength_one
from diffengine.inference import generate, load_pipeline
from tests.conftest import SAMPLE, SD1_LAYOUT_UNET, TEXT_TARGETS, UNET_TARGETS
from tests.oracles.comfyui_keys import comfyui_lora_key_map


def sd1_layout_lora(unet_targets, text_targets, text_layers=3,
                    unet_options=None, text_options=None):
    """A LoRA file (in memory) on a UNet laid out as SD 1.x's.

    SD 1.x: three cross-attention levels then a plain one, two resnets per
    level; the demo model has the opposite order and one resnet, so both
    layouts are covered.
    """
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD1_LAYOUT_UNET)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64,
        num_hidden_layers=text_layers, num_attention_heads=4))
    state_dict, configs, modules = {}, {}, {}
    for part, module, targets, extra in (
            ("unet", unet, unet_targets, unet_options),
            ("text_encoder", text_encoder, text_targets, text_options)):
        options = dict(r=4, lora_alpha=8, **(extra or {}))
        config = LoraConfig(target_modules=targets, init_lora_weights=False,
                            **options)
        inject_adapter_in_model(config, module)
        modules[part] = {n: m for n, m in module.named_modules()
                         if hasattr(m, "lora_A")}
        state = convert_state_dict_to_diffusers(
            get_peft_model_state_dict(module))
        if part == "text_encoder":
            state = canonical_text_encoder_keys(state)
        state_dict.update({f"{part}.{k}": v for k, v in state.items()})
        configs[part] = config.to_dict()
    lora = AdapterFile("memory", state_dict, configs)
    return lora, unet, text_encoder, modules


@pytest.mark.parametrize("unet_targets, text_targets", [
    (UNET_TARGETS, TEXT_TARGETS),
    # every linear and conv ComfyUI maps in a transformer block / resnet
    ([*UNET_TARGETS, "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
      "conv1", "conv2", "time_emb_proj"],
     [*TEXT_TARGETS, "fc1", "fc2"]),
])
def test_kohya_keys_map_one_to_one_onto_comfyui_sd1_names(unet_targets,
                                                          text_targets):
    lora, unet, text_encoder, modules = sd1_layout_lora(unet_targets,
                                                        text_targets)
    kohya = to_kohya(lora)
    names = {k.split(".")[0] for k in kohya}
    assert {k.split(".", 1)[1] for k in kohya} == {
        "lora_down.weight", "lora_up.weight", "alpha"}
    assert len(kohya) == 3 * len(names)

    key_map = comfyui_lora_key_map(unet.config, text_layers=3)
    assert not names - set(key_map), sorted(names - set(key_map))[:5]
    # one name per LoRA module, no two on the same ComfyUI weight
    assert len({key_map[n][0] for n in names}) == len(names)
    covered = {key_map[n][1] for n in names}
    assert covered == {f"unet.{m}" for m in modules["unet"]} | {
        f"text_encoder.{m}" for m in modules["text_encoder"]}
    # and the name leads to the module the weights belong to
    parts = {"unet": unet, "text_encoder": text_encoder}
    for name in names:
        part, module = key_map[name][1].split(".", 1)
        weight = parts[part].get_submodule(module).base_layer.weight
        down, up = kohya[f"{name}.lora_down.weight"], kohya[f"{name}.lora_up.weight"]
        assert (up.shape[0], down.shape[1]) == weight.shape[:2]
    # A1111/ComfyUI spelling although transformers 5.x has no text_model
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names


def test_kohya_file_loads_in_diffusers_with_the_same_images(lora_step, tiny_sd,
                                                            tmp_path):
    out = str(tmp_path / "my_lora.safetensors")
    kohya = export_lora(lora_step.step_dir, out, format="kohya")
    source = read_adapter_file(lora_step.step_dir)
    assert sum(k.endswith(".lora_down.weight") for k in kohya) == sum(
        k.endswith(DOWN_SUFFIXES) for k in source.state_dict)
    # alpha != rank on both parts: unet 2 / 4, text encoder 8 / 2
    alphas = {k.split("_")[1]: v.item() for k, v in kohya.items()
              if k.endswith(".alpha")}
    assert alphas == {"unet": 2.0, "te": 8.0}

    settings = {k: v for k, v in SAMPLE.items() if k not in ("prompt", "seed")}
    pipe = load_pipeline(tiny_sd, out)
    loaded = generate(pipe, SAMPLE["prompt"], [SAMPLE["seed"]], **settings)[0]
    assert np.abs(loaded - lora_step.reference).max() <= 1e-5

    # The same weights with diffusers' own alpha (= rank) lose the strength.
    rank_alpha = {k: (torch.tensor(float(kohya[k.replace(".alpha",
                                                         ".lora_down.weight")]
                                         .shape[0]))
                      if k.endswith(".alpha") else v)
                  for k, v in kohya.items()}
    save_file(rank_alpha, str(tmp_path / "rank_alpha.safetensors"))
    pipe = load_pipeline(tiny_sd, str(tmp_path / "rank_alpha.safetensors"))
    wrong = generate(pipe, SAMPLE["prompt"], [SAMPLE["seed"]], **settings)[0]
    assert np.abs(wrong - lora_step.reference).max() > 1e-2


def test_export_metadata_for_a1111_and_comfyui(lora_step, tiny_sd, tmp_path):
    out = str(tmp_path / "shapes.safetensors")
    export_lora(lora_step.step_dir, out, format="kohya", dtype="float16")
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
        assert f.get_tensor(next(k for k in f.keys()  # noqa: SIM118
                                 if k.endswith("down.weight"))).dtype == (
                                     torch.float16)
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1/lora"
    assert metadata["modelspec.title"] == metadata["ss_output_name"] == "shapes"
    assert metadata["modelspec.resolution"] == "64x48"
    assert metadata["ss_resolution"] == "(64, 48)"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert metadata["ss_sd_model_name"] == tiny_sd
    # UNet r=4 alpha 2 beside text encoder r=2 alpha 8: no one number
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == (
        "Dynamic", "Dynamic")
    assert metadata["modelspec.description"].endswith(
        ": UNet rank 4, alpha 2; text encoder rank 2, alpha 8")
    assert (metadata["diffengine.text_encoder.rank"],
            metadata["diffengine.text_encoder.alpha"]) == ("2", "8")
    assert metadata["ss_steps"] == metadata["diffengine.step"] == "6"
    # no diffusers adapter configs: kohya files carry alpha per module
    assert "lora_adapter_metadata" not in metadata


@pytest.mark.parametrize("unet_options, text_options, dim, alpha, described", [
    # the same rank and alpha everywhere: kohya's one number
    (None, None, "4", "8", "UNet rank 4, alpha 8; text encoder rank 4, "
     "alpha 8"),
    # rsLoRA: kohya's alpha is strength x rank = 8 / sqrt(4) * 4
    (dict(use_rslora=True), dict(use_rslora=True), "4", "16",
     "UNet rank 4, alpha 16; text encoder rank 4, alpha 16"),
    # one rank, alphas that differ within the UNet
    (dict(alpha_pattern={"attn2.to_q": 2}), None, "4", "Dynamic",
     "UNet rank 4, alphas 2-8; text encoder rank 4, alpha 8"),
    # ranks that differ within the text encoder
    (None, dict(rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 4}),
     "Dynamic", "Dynamic", "UNet rank 4, alpha 8; text encoder ranks 2-4, "
     "alphas 4-8"),
])
def test_rank_and_alpha_metadata_say_what_they_describe(
        unet_options, text_options, dim, alpha, described, tmp_path):
    lora, *_ = sd1_layout_lora(["to_q", "to_k"], ["q_proj", "v_proj"],
                               unet_options=unet_options,
                               text_options=text_options)
    save_file({k: v.contiguous() for k, v in lora.state_dict.items()},
              tmp_path / "lora.safetensors")
    lora.path = str(tmp_path / "lora.safetensors")
    metadata = export_metadata(lora, "title")
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == (
        dim, alpha)
    assert metadata["modelspec.description"].endswith(f": {described}")


def test_unet_only_metadata(tmp_path):
    lora, *_ = sd1_layout_lora(["to_q"], ["q_proj"])
    unet_only = AdapterFile(
        str(tmp_path / "u.safetensors"),
        {k: v for k, v in lora.state_dict.items() if k.startswith("unet.")},
        {"unet": lora.adapter_configs["unet"]})
    save_file(unet_only.state_dict, unet_only.path)
    metadata = export_metadata(unet_only, "title")
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == (
        "4", "8")
    assert metadata["modelspec.description"].endswith(": UNet rank 4, alpha 8")


def test_diffusers_export_folds_the_strength_into_the_ups(lora_step, tiny_sd,
                                                         tmp_path):
    """The step's keys; each up × its module's alpha ÷ rank (unet 2 / 4,
    text encoder 8 / 2) and the configs at strength 1, so that diffusers
    draws the trained model and a loader that reads no alpha (ComfyUI, for
    diffusers' names) applies B·A at the trained strength."""
    out = str(tmp_path / "diffusers.safetensors")
    export_lora(lora_step.step_dir, out, format="diffusers")
    source = read_adapter_file(lora_step.step_dir)
    exported = read_adapter_file(out)
    assert exported.state_dict.keys() == source.state_dict.keys()
    strengths = {"unet": 2 / 4, "text_encoder": 8 / 2}
    for key, value in source.state_dict.items():
        scale = (strengths[key.split(".")[0]] if key.endswith(".lora_B.weight")
                 else 1)
        assert torch.equal(exported.state_dict[key], value * scale), key
    for part, config in exported.adapter_configs.items():
        assert config == dict(source.adapter_configs[part],
                              lora_alpha=config["r"], alpha_pattern={},
                              use_rslora=False)
    assert load_file(out)["unet.down_blocks.1.attentions.0.transformer_blocks."
                          "0.attn1.to_q.lora_A.weight"].shape == (4, 64)
    settings = {k: v for k, v in SAMPLE.items() if k not in ("prompt", "seed")}
    pipe = load_pipeline(tiny_sd, out)
    loaded = generate(pipe, SAMPLE["prompt"], [SAMPLE["seed"]], **settings)[0]
    assert np.abs(loaded - lora_step.reference).max() <= 1e-5


def test_diffusers_export_folds_patterns_and_rslora():
    """Each module's own strength: rank and alpha patterns, rsLoRA's
    alpha ÷ √rank."""
    for options, strengths in (
            (dict(alpha_pattern={"attn2.to_q": 2},
                  rank_pattern={"attn2.to_q": 8}), {"attn2.to_q": 2 / 8}),
            (dict(use_rslora=True), {})):
        lora, *_ = sd1_layout_lora(["to_q", "to_k"], ["q_proj"],
                                   unet_options=options)
        tensors, configs = at_strength_one(lora)
        config = lora.adapter_configs["unet"]
        rank = config["r"]
        default = config["lora_alpha"] / (rank ** 0.5 if options.get(
            "use_rslora") else rank)
        ups = {k: v for k, v in lora.state_dict.items()
               if k.startswith("unet.") and k.endswith(".lora.up.weight")}
        layers = {".".join(k.split(".")[-5:-3]) for k in ups}
        assert layers == {"attn1.to_q", "attn1.to_k", "attn2.to_q",
                          "attn2.to_k"}
        for key, up in ups.items():
            scale = next((v for k, v in strengths.items() if k in key),
                         default)
            assert torch.allclose(tensors[key], up * scale), key
        assert configs["unet"]["alpha_pattern"] == (
            config.get("rank_pattern") or {})
        assert configs["unet"]["lora_alpha"] == rank
@pytest.mark.parametrize("unet_options, text_options, strengths", [
    (dict(alpha_pattern={"attn2.to_q": 2}, rank_pattern={"attn2.to_q": 8}),
     dict(alpha_pattern={"k_proj": 1}, rank_pattern={"v_proj": 2}),
     {8 / 4, 2 / 8, 1 / 4, 8 / 2}),
    (dict(use_rslora=True), dict(use_rslora=True), {8 / 4 ** 0.5}),
])
def test_alphas_give_peft_strength_of_every_module(unet_options, text_options,
                                                   strengths):
    lora, unet, _, modules = sd1_layout_lora(
        ["to_q", "to_k"], ["q_proj", "k_proj", "v_proj"],
        unet_options=unet_options, text_options=text_options)
    kohya = to_kohya(lora)
    key_map = comfyui_lora_key_map(unet.config, text_layers=3)
    exported = {}
    for name in {k.split(".")[0] for k in kohya}:
        part, module = key_map[name][1].split(".", 1)
        rank = kohya[f"{name}.lora_down.weight"].shape[0]
        exported[(part, module)] = kohya[f"{name}.alpha"].item() / rank
    # what peft applies in the trained model, module by module
    expected = {(part, name): module.scaling["default"]
                for part in modules for name, module in modules[part].items()}
    assert exported.keys() == expected.keys()
    for key, value in expected.items():
        assert exported[key] == pytest.approx(value, rel=1e-6), key
    assert set(expected.values()) == strengths


def test_module_scale_reads_patterns_and_defaults():
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn{}.to_q"
    rank = {"lora_A.weight": torch.zeros(4, 8)}
    config = dict(r=4, lora_alpha=8, alpha_pattern={"attn2.to_q": 2})
    assert LORA.module_scale(config, name.format(1), rank) == 2.0
    assert LORA.module_scale(config, name.format(2), rank) == 0.5
    # text-encoder patterns written against transformers 5.x names match too
    text = dict(r=2, lora_alpha=2,
                alpha_pattern={"encoder.layers.0.self_attn.q_proj": 6})
    assert LORA.module_scale(
        text, "text_model.encoder.layers.0.self_attn.q_proj", rank) == 3.0
    # no saved config: diffusers loads the file at strength 1
    assert LORA.module_scale(None, name.format(1), rank) == 1.0


def test_unsupported_lora_files_are_refused(tmp_path):
    odd = AdapterFile("odd.safetensors", {
        "unet.a.to_q.lora.down.weight": torch.zeros(2, 4),
        "unet.a.to_q.lora.up.weight": torch.zeros(4, 2),
        "unet.a.to_q.lora_embedding_A": torch.zeros(4)})
    with pytest.raises(ValueError, match=r"odd\.safetensors: 1 tensors are "
                       r"not LoRA weights \(lora_A\.weight, lora_B\.weight\), "
                       r"e\.g\. \['a\.to_q\.lora_embedding_A'\]"):
        to_kohya(odd)
    prior = AdapterFile("prior.safetensors", {
        "prior.a.q_proj.lora_linear_layer.down.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"\['prior'\] are not "
                       "stable-diffusion-v1's"):
        to_kohya(prior)
    future = AdapterFile("flux2.safetensors", {}, training={
        "architecture": "flux-2-dev"})
    with pytest.raises(ValueError, match="architecture 'flux-2-dev' has no "
                       "export"):
        to_kohya(future)
    with pytest.raises(ValueError, match=r"must end with \.safetensors"):
        export_lora(str(tmp_path), str(tmp_path / "x.pt"))
