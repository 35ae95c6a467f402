"""kohya export of a Flux.1 LoRA: the original (Black Forest Labs) names
ComfyUI maps, the weights it makes of them equal diffusers' fused ones, and
diffusers' own Flux loader reads the file back."""
import pytest
import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel

from diffengine.adapters.kohya import kohya_modules
from diffengine.errors import ConfigError
from diffengine.export import export_lora
from diffengine.export.flux import original_module
from tests.conftest import TEXT_TARGETS, save_perturbed_flux_step
from tests.oracles.comfyui_keys import (
    SWAPPED,
    comfyui_flux_lora_key_map,
    flux_diffusers_to_original,
)
from tests.oracles.comfyui_weights import comfyui_weight
from tests.oracles.original_layout import original_flux_state_dict

# Every linear of a Flux transformer, by suffix: the embedders, the
# modulations, both streams' attention and feed-forwards, the single
# blocks' fused input and output, and the final layer.
EVERY_MODULE = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                "add_k_proj", "add_v_proj", "to_add_out", "proj", "net.2",
                "linear", "linear_1", "linear_2", "x_embedder",
                "context_embedder", "proj_mlp", "proj_out"]
# q and k only (v and the MLP input get zero blocks), at ranks and
# strengths of their own.
UNEVEN = dict(r=4, lora_alpha=2, target_modules=["to_q", "to_k"],
              rank_pattern={"to_k": 2}, alpha_pattern={"to_k": 6})
TEXT = dict(r=2, lora_alpha=8, target_modules=[*TEXT_TARGETS, "fc1", "fc2"])
# What diffusers' kohya Flux converter (``_convert_kohya_flux_lora_to_
# diffusers``) reads: it splits a single block's linear1 at Flux.1's full
# width (3072), reads the final layer without its alpha, and names the
# embedders without ``transformer.``, so its loader drops them; those are
# left out of the round trip (ComfyUI's test above covers them).
DIFFUSERS_READABLE = dict(
    r=4, lora_alpha=2, rank_pattern={"to_k": 2},
    alpha_pattern={"to_k": 6},
    target_modules=(
        r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj"
        r"|add_k_proj|add_v_proj|to_add_out)|ff\.net\.(0\.proj|2)"
        r"|ff_context\.net\.(0\.proj|2)|norm1\.linear|norm1_context\.linear)"
        r"|single_transformer_blocks\.\d+\.(proj_out|norm\.linear)"))


def tiny_flux(guidance_embeds: bool = True) -> FluxPipeline:
    """A tiny Flux.1 pipeline, the same weights at every call: a
    transformer of 2 double and 2 single blocks (heads of 16, rope axes
    summing to them) and a CLIP-L-shaped text encoder; no VAE, no T5."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=2, num_single_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        pooled_projection_dim=32, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6))
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, vocab_size=1000, projection_dim=32,
        bos_token_id=0, eos_token_id=2))
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
        text_encoder=text_encoder, tokenizer=None, text_encoder_2=None,
        tokenizer_2=None, transformer=transformer)


def exported(tmp_path, transformer_config, text_config=None, training=None,
             guidance_embeds=True):
    step = str(tmp_path / "step5")
    pipe = save_perturbed_flux_step(tiny_flux(guidance_embeds), step,
                                    transformer_config, text_config,
                                    training)
    out = str(tmp_path / "flux.safetensors")
    return pipe, export_lora(step, out), step, out


# FluxPipeline.fuse_lora fuses the transformer only unless told
COMPONENTS = ["transformer", "text_encoder"]


def fused_pipeline(step):
    pipe = tiny_flux()
    pipe.load_lora_weights(step)
    pipe.fuse_lora(components=COMPONENTS)
    pipe.unload_lora_weights()
    return pipe


def original_weight(weight: str, part: str) -> str:
    """A ComfyUI weight's name in the original transformer layout, or in
    the state dict of transformers 5's ``CLIPTextModel`` (no
    ``text_model.``)."""
    return (weight.removeprefix("diffusion_model.") if part == "transformer"
            else weight.split(".transformer.text_model.", 1)[1])


def comfyui_patched(base_pipe, kohya, key_map):
    """Each part's weights as ComfyUI patches them with the kohya file:
    the transformer in the original layout, CLIP as transformers names
    it."""
    frozen = {
        "transformer": original_flux_state_dict(
            base_pipe.transformer.state_dict(), base_pipe.transformer.config),
        "text_encoder": dict(base_pipe.text_encoder.state_dict()),
    }
    patched = {part: dict(weights) for part, weights in frozen.items()}
    for name, tensors in kohya_modules(kohya).items():
        weight, module = key_map[name]
        part = module.split(".", 1)[0]
        weight = original_weight(weight, part)
        patched[part][weight] = comfyui_weight(frozen[part][weight],
                                               tensors).float()
    return patched


@pytest.mark.parametrize("transformer_config, text_config", [
    (dict(r=4, lora_alpha=2, target_modules=EVERY_MODULE), TEXT),
    (UNEVEN, None),
    # the MLP input alone: q, k and v of linear1 as zero blocks
    (dict(r=2, lora_alpha=4, target_modules=["proj_mlp"]), None),
])
def test_comfyui_weights_equal_diffusers_fused_weights(
        tmp_path, transformer_config, text_config):
    base_pipe = tiny_flux()
    trained, kohya, step, _ = exported(tmp_path, transformer_config,
                                       text_config)
    if transformer_config["target_modules"] is EVERY_MODULE:
        layers = [n for n, m in base_pipe.transformer.named_modules()
                  if isinstance(m, torch.nn.Linear)]
        adapted = [n for n, m in trained.transformer.named_modules()
                   if hasattr(m, "lora_A")]
        assert sorted(adapted) == sorted(layers)
    key_map = comfyui_flux_lora_key_map(
        base_pipe.transformer.config,
        base_pipe.text_encoder.config.num_hidden_layers)
    # (a) every name is one ComfyUI maps, onto a weight of the LoRA's shape
    names = set(kohya_modules(kohya))
    assert not names - set(key_map), sorted(names - set(key_map))[:5]
    patched = comfyui_patched(base_pipe, kohya, key_map)
    for name in names:
        weight, module = key_map[name]
        part = module.split(".", 1)[0]
        down = kohya[f"{name}.lora_down.weight"]
        up = kohya[f"{name}.lora_up.weight"]
        assert (up.shape[0], down.shape[1]) == patched[part][
            original_weight(weight, part)].shape

    # (b) ComfyUI's weights are diffusers' fused ones, part by part
    fused = fused_pipeline(step)
    expected = {
        "transformer": original_flux_state_dict(
            fused.transformer.state_dict(), fused.transformer.config),
        "text_encoder": fused.text_encoder.state_dict(),
    }
    for part, weights in expected.items():
        assert weights.keys() == patched[part].keys(), part
        for key, weight in weights.items():
            assert (patched[part][key] - weight).abs().max() <= 1e-5, key
    frozen = original_flux_state_dict(base_pipe.transformer.state_dict(),
                                      base_pipe.transformer.config)
    assert sum(not torch.equal(frozen[k], v)
               for k, v in expected["transformer"].items()) >= len(names) // 2


def test_every_transformer_module_has_an_original_name():
    transformer = tiny_flux().transformer
    adaptable = [name for name, module in transformer.named_modules()
                 if isinstance(module, torch.nn.Linear)]
    originals = {original_module(name) for name in adaptable}
    assert len(originals) == len(adaptable)
    assert ("single_blocks.1.linear1", 3) in originals
    assert ("double_blocks.0.txt_attn.qkv", 2) in originals
    assert ("guidance_in.out_layer", None) in originals
    assert ("final_layer.adaLN_modulation.1", None) in originals


def transformer_inputs():
    generator = torch.Generator().manual_seed(0)
    return dict(
        hidden_states=torch.randn(1, 16, 4, generator=generator),
        encoder_hidden_states=torch.randn(1, 5, 32, generator=generator),
        pooled_projections=torch.randn(1, 32, generator=generator),
        timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
        img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3))


def test_diffusers_reads_the_kohya_file_back(tmp_path):
    _, _, step, out = exported(tmp_path, DIFFUSERS_READABLE, TEXT)
    from_step, from_file = tiny_flux(), tiny_flux()
    from_step.load_lora_weights(step)
    from_file.load_lora_weights(out)
    inputs = transformer_inputs()
    ids = torch.randint(0, 1000, (1, 77),
                        generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = from_step.transformer(**inputs).sample
        got = from_file.transformer(**inputs).sample
        base = tiny_flux().transformer(**inputs).sample
        assert (want - got).abs().max() <= 1e-5
        assert (want - base).abs().max() > 1e-3
        assert (from_step.text_encoder(ids).last_hidden_state
                - from_file.text_encoder(ids).last_hidden_state
                ).abs().max() <= 1e-5
    for pipe in (from_step, from_file):
        pipe.fuse_lora(components=COMPONENTS)
        pipe.unload_lora_weights()
    for part in COMPONENTS:
        want = getattr(from_step, part).state_dict()
        got = getattr(from_file, part).state_dict()
        assert want.keys() == got.keys(), part
        for key in want:
            assert (want[key] - got[key]).abs().max() <= 1e-5, key


def test_names_alphas_and_metadata(tmp_path):
    _, kohya, _, out = exported(
        tmp_path, dict(r=4, lora_alpha=2, target_modules=EVERY_MODULE), TEXT,
        training={"guidance_scale": "3.5"})
    names = set(kohya_modules(kohya))
    assert {"lora_unet_double_blocks_0_img_attn_qkv",
            "lora_unet_double_blocks_0_txt_attn_qkv",
            "lora_unet_double_blocks_1_img_attn_proj",
            "lora_unet_double_blocks_1_txt_attn_proj",
            "lora_unet_double_blocks_0_img_mlp_0",
            "lora_unet_double_blocks_0_txt_mlp_2",
            "lora_unet_double_blocks_0_img_mod_lin",
            "lora_unet_double_blocks_0_txt_mod_lin",
            "lora_unet_single_blocks_1_linear1",
            "lora_unet_single_blocks_1_linear2",
            "lora_unet_single_blocks_0_modulation_lin",
            "lora_unet_img_in", "lora_unet_txt_in",
            "lora_unet_time_in_in_layer", "lora_unet_guidance_in_out_layer",
            "lora_unet_vector_in_in_layer",
            "lora_unet_final_layer_linear",
            "lora_unet_final_layer_adaLN_modulation_1",
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
            } <= names
    # r=4 alpha 2 fused three times: rank 12, alpha 6 (strength 1/2 kept)
    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    assert kohya[f"{qkv}.lora_down.weight"].shape == (12, 32)
    assert kohya[f"{qkv}.lora_up.weight"].shape == (96, 12)
    assert kohya[f"{qkv}.alpha"].item() == 6.0
    # q, k, v and the MLP input fused four times: rank 16, alpha 8
    linear1 = "lora_unet_single_blocks_0_linear1"
    assert kohya[f"{linear1}.lora_down.weight"].shape == (16, 32)
    assert kohya[f"{linear1}.lora_up.weight"].shape == (3 * 32 + 128, 16)
    assert kohya[f"{linear1}.alpha"].item() == 8.0
    assert kohya["lora_unet_double_blocks_0_img_attn_proj.alpha"].item() == 2.0
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
    assert metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert metadata["ss_base_model_version"] == "flux1"
    assert metadata["ss_guidance_scale"] == "3.5"
    assert metadata["modelspec.description"].endswith(
        ": transformer rank 4, alpha 2; text encoder rank 2, alpha 8")
    assert metadata["ss_network_dim"] == "Dynamic"


def test_schnell_is_told_by_its_guidance_embedder(tmp_path):
    _, kohya, _, out = exported(
        tmp_path, dict(r=2, lora_alpha=2, target_modules=["to_q"]),
        guidance_embeds=False)
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
    assert metadata["modelspec.architecture"] == "flux-1-schnell/lora"
    assert "ss_guidance_scale" not in metadata
    assert "lora_unet_single_blocks_0_linear1.alpha" in kohya


def test_other_kinds_are_refused(tmp_path):
    step = str(tmp_path / "step1")
    save_perturbed_flux_step(
        tiny_flux(), step,
        dict(r=4, lora_alpha=2, target_modules=["to_q"], use_dora=True))
    with pytest.raises(ConfigError, match=r"transformer is DoRA, which has "
                       r"no kohya form for Flux\.1 .* use --format diffusers"):
        # lycoris: no base model to read (the tiny one has no folder)
        export_lora(step, str(tmp_path / "dora.safetensors"),
                    dora_reader="lycoris")


# Everything in the blocks, q, k, v and the MLP input of the single blocks
# included (their fused linear1), at uneven ranks and strengths.
BLOCKS = dict(
    r=4, lora_alpha=2, rank_pattern={"to_k": 2, "proj_mlp": 3},
    alpha_pattern={"to_k": 6, "proj_mlp": 1},
    target_modules=(
        r"transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj"
        r"|add_k_proj|add_v_proj|to_add_out)|ff\.net\.(0\.proj|2)"
        r"|ff_context\.net\.(0\.proj|2)|norm1\.linear|norm1_context\.linear)"
        r"|single_transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v)|proj_mlp"
        r"|proj_out|norm\.linear)"))


def test_diffusers_reads_the_kohya_file_of_a_real_width_flux(tmp_path):
    """At Flux.1's width (3072 = 24 heads of 128, the MLP 4 times it), where
    diffusers' kohya converter splits linear1 as 3072, 3072, 3072, 12288:
    the LoRA it reads from the kohya file is, module for module, the one
    trained and the one the step folder loads, and the transformer draws
    the same with either. One double and one single block: 0.5 billion
    parameters; the three adapters share them."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
        attention_head_dim=128, num_attention_heads=24,
        joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=None,
        text_encoder=None, tokenizer=None, text_encoder_2=None,
        tokenizer_2=None, transformer=transformer)
    generator = torch.Generator().manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, 4, generator=generator),
        encoder_hidden_states=torch.randn(1, 5, 32, generator=generator),
        pooled_projections=torch.randn(1, 32, generator=generator),
        timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
        img_ids=torch.zeros(16, 3), txt_ids=torch.zeros(5, 3))
    with torch.no_grad():
        base = transformer(**inputs).sample
    step = str(tmp_path / "step5")
    save_perturbed_flux_step(pipe, step, BLOCKS)  # adapter "default"
    out = str(tmp_path / "flux.safetensors")
    kohya = export_lora(step, out)
    # four slots of the largest rank, 4
    assert kohya["lora_unet_single_blocks_0_linear1.lora_up.weight"].shape \
        == (3 * 3072 + 12288, 16)
    pipe.load_lora_weights(step, adapter_name="step")
    pipe.load_lora_weights(out, adapter_name="kohya")
    layers = {name: module for name, module in transformer.named_modules()
              if isinstance(module, BaseTunerLayer)}
    assert len(layers) == 14 + 6
    for name, layer in layers.items():
        trained = layer.get_delta_weight("default")
        assert trained.abs().max() > 0, name
        for adapter in ("step", "kohya"):
            difference = (layer.get_delta_weight(adapter) - trained).abs()
            assert difference.max() <= 1e-5, (name, adapter)
    samples = {}
    with torch.no_grad():
        for adapter in ("default", "step", "kohya"):
            for layer in layers.values():
                layer.set_adapter(adapter)
            samples[adapter] = transformer(**inputs).sample
    scale = samples["default"].abs().max()
    assert (samples["default"] - base).abs().max() > 1e-3 * scale
    for adapter in ("step", "kohya"):
        assert ((samples[adapter] - samples["default"]).abs().max()
                <= 1e-5 * scale), adapter


def test_comfyui_reads_the_diffusers_named_file_at_the_trained_strength(
        tmp_path):
    """``--format diffusers`` for other UIs: ComfyUI maps diffusers' Flux
    names (``flux_to_diffusers``: q, k, v and the MLP input into their
    slices of the fused weights) and, with no ``.alpha``, applies B·A at
    scale 1; the strength folded into the ups makes that diffusers' fused
    transformer."""
    base_pipe = tiny_flux()
    step = str(tmp_path / "step5")
    save_perturbed_flux_step(tiny_flux(), step, dict(UNEVEN, target_modules=[
        *UNEVEN["target_modules"], "proj_mlp", "norm_out.linear",
        "add_v_proj", "net.2"]))
    out = str(tmp_path / "flux_diffusers.safetensors")
    tensors = export_lora(step, out, format="diffusers")
    assert not [k for k in tensors if k.endswith(".alpha")]
    config = base_pipe.transformer.config
    names = flux_diffusers_to_original(config)
    patched = original_flux_state_dict(base_pipe.transformer.state_dict(),
                                       config)
    ups = [k for k in tensors if k.endswith(".lora_B.weight")]
    for up in ups:
        module = up.removeprefix("transformer.").removesuffix(
            ".lora_B.weight")
        delta = (tensors[up].double()
                 @ tensors[up.replace("lora_B", "lora_A")].double()).float()
        target = names[f"{module}.weight"]
        if isinstance(target, tuple) and target[1] == SWAPPED:
            target, delta = target[0], torch.cat(delta.chunk(2)[::-1])
        if isinstance(target, tuple):
            name, start, rows = target
            patched[name][start:start + rows] += delta
        else:
            patched[target] += delta
    fused = fused_pipeline(step)
    want = original_flux_state_dict(fused.transformer.state_dict(), config)
    assert want.keys() == patched.keys()
    for key, weight in want.items():
        assert (patched[key] - weight).abs().max() <= 1e-5, key
    # each double block's q, k, v of the text, both MLP outputs; each
    # single block's q, k and MLP input; the final modulation. At strengths
    # 2 / 4 and to_k's 6 / 2, which the ups carry.
    assert len(ups) == 2 * 5 + 2 * 3 + 1
