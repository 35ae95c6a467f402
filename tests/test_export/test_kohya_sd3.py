"""kohya export of an SD3 LoRA: the original MMDiT names ComfyUI maps, and
the weights it makes of them equal diffusers' fused ones."""
import pytest
import torch
from diffusers import StableDiffusion3Pipeline
from safetensors import safe_open

from diffengine.adapters.kohya import kohya_modules
from diffengine.errors import ConfigError
from diffengine.export import export_lora
from diffengine.export.mmdit import original_module
from tests.conftest import SD3_TARGETS, TEXT_TARGETS, save_perturbed_sd3_step
from tests.oracles.comfyui_keys import comfyui_sd3_lora_key_map
from tests.oracles.comfyui_weights import comfyui_weight
from tests.oracles.original_layout import original_mmdit_state_dict

# Every linear and convolution of an SD3 transformer, by suffix: the
# embedders, the modulations, both attentions, the feed-forwards and the
# final layer.
EVERY_MODULE = [*SD3_TARGETS, "proj", "net.2", "linear", "linear_1",
                "linear_2", "context_embedder", "proj_out"]
# q and k only (v gets zero blocks), at ranks and strengths of their own.
UNEVEN = dict(r=4, lora_alpha=2, target_modules=["to_q", "to_k"],
              rank_pattern={"to_k": 2}, alpha_pattern={"to_k": 6})
TEXT = dict(r=2, lora_alpha=8, target_modules=[*TEXT_TARGETS, "fc1", "fc2"])


@pytest.fixture(params=["sd3.5", "sd3"])
def base(request, tiny_sd3, tiny_sd3_medium):
    return tiny_sd3 if request.param == "sd3.5" else tiny_sd3_medium


def exported(base, tmp_path, transformer_config, text_config=None):
    step = str(tmp_path / "step5")
    pipe = save_perturbed_sd3_step(base, step, transformer_config,
                                   text_config)
    out = str(tmp_path / "sd3.safetensors")
    return pipe, export_lora(step, out), step, out


def fused_pipeline(base, step):
    pipe = StableDiffusion3Pipeline.from_pretrained(base)
    pipe.load_lora_weights(step)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return pipe


def comfyui_patched(base_pipe, kohya, key_map):
    """Each part's weights as ComfyUI patches them with the kohya file:
    the transformer in the original layout, the text encoders as
    transformers names them."""
    frozen = {
        "transformer": original_mmdit_state_dict(
            base_pipe.transformer.state_dict(), base_pipe.transformer.config),
        "text_encoder": dict(base_pipe.text_encoder.state_dict()),
        "text_encoder_2": dict(base_pipe.text_encoder_2.state_dict()),
    }
    patched = {part: dict(weights) for part, weights in frozen.items()}
    for name, tensors in kohya_modules(kohya).items():
        weight, module = key_map[name]
        part = module.split(".", 1)[0]
        if part == "transformer":
            weight = weight.removeprefix("diffusion_model.")
        else:
            weight = weight.split(".transformer.", 1)[1]
        patched[part][weight] = comfyui_weight(frozen[part][weight],
                                               tensors).float()
    return patched


@pytest.mark.parametrize("transformer_config, text_config", [
    (dict(r=4, lora_alpha=2, target_modules=EVERY_MODULE), TEXT),
    (UNEVEN, {}),
])
def test_comfyui_weights_equal_diffusers_fused_weights(
        base, tmp_path, transformer_config, text_config):
    base_pipe = StableDiffusion3Pipeline.from_pretrained(base)
    trained, kohya, step, _ = exported(base, tmp_path, transformer_config,
                                       text_config)
    if transformer_config["target_modules"] is EVERY_MODULE:
        layers = [n for n, m in base_pipe.transformer.named_modules()
                  if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        adapted = [n for n, m in trained.transformer.named_modules()
                   if hasattr(m, "lora_A")]
        assert sorted(adapted) == sorted(layers)
    key_map = comfyui_sd3_lora_key_map(
        base_pipe.transformer.config,
        base_pipe.text_encoder.config.num_hidden_layers,
        base_pipe.text_encoder_2.config.num_hidden_layers)
    # (a) every name is one ComfyUI maps, onto a weight of the LoRA's shape
    names = set(kohya_modules(kohya))
    assert not names - set(key_map), sorted(names - set(key_map))[:5]
    patched = comfyui_patched(base_pipe, kohya, key_map)
    for name in names:
        weight, module = key_map[name]
        part = module.split(".", 1)[0]
        weight = (weight.removeprefix("diffusion_model.")
                  if part == "transformer"
                  else weight.split(".transformer.", 1)[1])
        down = kohya[f"{name}.lora_down.weight"]
        up = kohya[f"{name}.lora_up.weight"]
        assert (up.shape[0], down.shape[1]) == patched[part][weight].shape[:2]

    # (b) ComfyUI's weights are diffusers' fused ones, part by part
    fused = fused_pipeline(base, step)
    expected = {
        "transformer": original_mmdit_state_dict(
            fused.transformer.state_dict(), fused.transformer.config),
        "text_encoder": fused.text_encoder.state_dict(),
        "text_encoder_2": fused.text_encoder_2.state_dict(),
    }
    for part, weights in expected.items():
        assert weights.keys() == patched[part].keys(), part
        for key, weight in weights.items():
            assert (patched[part][key] - weight).abs().max() <= 1e-5, key
    frozen = original_mmdit_state_dict(base_pipe.transformer.state_dict(),
                                       base_pipe.transformer.config)
    assert sum(not torch.equal(frozen[k], v)
               for k, v in expected["transformer"].items()) >= len(names) // 2


def test_every_transformer_module_has_an_original_name(tiny_sd3):
    transformer = StableDiffusion3Pipeline.from_pretrained(
        tiny_sd3).transformer
    adaptable = [name for name, module in transformer.named_modules()
                 if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))]
    originals = {original_module(name) for name in adaptable}
    assert len(originals) == len(adaptable)
    assert ("joint_blocks.0.x_block.attn2.qkv", 2) in originals
    assert ("final_layer.adaLN_modulation.1", None) in originals


def test_names_alphas_and_metadata(tiny_sd3, tmp_path):
    _, kohya, _, out = exported(tiny_sd3, tmp_path, None)
    names = set(kohya_modules(kohya))
    assert {"lora_unet_joint_blocks_0_x_block_attn_qkv",
            "lora_unet_joint_blocks_0_x_block_attn2_qkv",
            "lora_unet_joint_blocks_0_context_block_attn_qkv",
            "lora_unet_joint_blocks_0_x_block_attn_proj",
            "lora_unet_joint_blocks_0_context_block_attn_proj",
            "lora_unet_joint_blocks_1_context_block_attn_qkv",
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
            "lora_te2_text_model_encoder_layers_1_self_attn_out_proj",
            } <= names
    # the last block's text stream ends after its attention: no proj
    assert "lora_unet_joint_blocks_1_context_block_attn_proj" not in names
    # r=4 alpha 2 fused three times: rank 12, alpha 6 (strength 1/2 kept)
    qkv = "lora_unet_joint_blocks_0_x_block_attn_qkv"
    assert kohya[f"{qkv}.lora_down.weight"].shape == (12, 128)
    assert kohya[f"{qkv}.lora_up.weight"].shape == (384, 12)
    assert kohya[f"{qkv}.alpha"].item() == 6.0
    assert kohya["lora_unet_joint_blocks_0_x_block_attn_proj.alpha"].item() == 2.0
    assert kohya["lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
                 ".alpha"].item() == 8.0
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
    assert metadata["modelspec.architecture"] == (
        "stable-diffusion-3-3-5-medium/lora")
    assert metadata["ss_base_model_version"] == "3-5-medium"
    assert metadata["diffengine.architecture"] == (
        "stable-diffusion-3-3-5-medium")
    # ranks and alphas as trained, not as fused
    assert metadata["modelspec.description"].endswith(
        ": transformer rank 4, alpha 2; text encoder rank 2, alpha 8; "
        "second text encoder rank 2, alpha 8")
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == (
        "Dynamic", "Dynamic")


def test_step_folder_reloads_the_injected_model(tiny_sd3, tmp_path):
    step = str(tmp_path / "step2")
    trained = save_perturbed_sd3_step(tiny_sd3, step)
    loaded = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    loaded.load_lora_weights(step)
    generator = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 8, 8, generator=generator),
        encoder_hidden_states=torch.randn(1, 10, 64, generator=generator),
        pooled_projections=torch.randn(1, 64, generator=generator),
        timestep=torch.tensor([500.0]))
    ids = torch.randint(0, 100, (1, 77), generator=generator)
    with torch.no_grad():
        for model in ("transformer", ):
            assert (getattr(trained, model)(**inputs).sample
                    - getattr(loaded, model)(**inputs).sample
                    ).abs().max() <= 1e-5
        for text in ("text_encoder", "text_encoder_2"):
            want, got = getattr(trained, text)(ids), getattr(loaded, text)(ids)
            assert (want.text_embeds - got.text_embeds).abs().max() <= 1e-5
            assert (want.last_hidden_state - got.last_hidden_state
                    ).abs().max() <= 1e-5
        base = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
        assert (base.transformer(**inputs).sample
                - loaded.transformer(**inputs).sample).abs().max() > 1e-3


def test_kohya_file_has_no_effect_in_diffusers(tiny_sd3, tmp_path):
    _, _, _, out = exported(tiny_sd3, tmp_path, None)
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    parts = ("transformer", "text_encoder", "text_encoder_2")
    before = {part: {k: v.clone() for k, v in
                     getattr(pipe, part).state_dict().items()}
              for part in parts}
    pipe.load_lora_weights(out)
    for part in parts:
        after = getattr(pipe, part).state_dict()
        assert not any("lora" in k for k in after), part
        assert all(torch.equal(before[part][k], after[k])
                   for k in before[part]), part


def test_other_kinds_are_refused(tiny_sd3, tmp_path):
    step = str(tmp_path / "step1")
    save_perturbed_sd3_step(
        tiny_sd3, step,
        dict(r=4, lora_alpha=2, target_modules=SD3_TARGETS, use_dora=True),
        {})
    with pytest.raises(ConfigError, match=r"transformer is DoRA, which has "
                       r"no kohya form for SD3 .* use --format diffusers"):
        export_lora(step, str(tmp_path / "dora.safetensors"))


def test_diffusers_export_loads_as_the_step_folder(tiny_sd3, tmp_path):
    step = str(tmp_path / "step3")
    save_perturbed_sd3_step(tiny_sd3, step)
    out = str(tmp_path / "sd3_diffusers.safetensors")
    export_lora(step, out, format="diffusers")
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
    assert metadata["modelspec.architecture"] == (
        "stable-diffusion-3-3-5-medium/lora")
    assert (metadata["ss_network_dim"], metadata["ss_network_alpha"]) == (
        "Dynamic", "Dynamic")
    from_step, from_file = (StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
                            for _ in range(2))
    parts = ["transformer", "text_encoder", "text_encoder_2"]
    for pipe, source in ((from_step, step), (from_file, out)):
        pipe.load_lora_weights(source)
        pipe.fuse_lora(components=parts)
        pipe.unload_lora_weights()
    # the file's ups carry the strength its configs no longer do
    for part in parts:
        want = getattr(from_step, part).state_dict()
        got = getattr(from_file, part).state_dict()
        assert want.keys() == got.keys()
        assert all((want[k] - got[k]).abs().max() <= 1e-6 for k in want), part
