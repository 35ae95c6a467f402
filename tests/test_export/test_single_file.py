"""Single-file checkpoints: the original SD 1.x layout, read back by diffusers."""
import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from diffengine.errors import ConfigError
from diffengine.export import merge_lora, to_single_file
from diffengine.export.single_file import (
    rename_state_dict,
    save_single_file,
    unet_renames,
)
from diffengine.inference import generate, load_pipeline
from diffengine.testing import (
    SD15_TEXT_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    save_pipeline,
    write_char_tokenizer,
)
from tests.conftest import SAMPLE, SD1_LAYOUT_UNET
from tests.oracles.original_layout import layout_difference, original_checkpoint

SETTINGS = {k: v for k, v in SAMPLE.items() if k not in ("prompt", "seed")}


def draw(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return generate(pipe, SAMPLE["prompt"], [SAMPLE["seed"]], **SETTINGS)[0]


def sd1_difference(tensors, pipe) -> tuple[list, list, list]:
    """(missing, unexpected, wrong shape) against ldm's layout."""
    return layout_difference(tensors, original_checkpoint(
        pipe.unet, pipe.vae, pipe.text_encoder.config))


def test_single_file_draws_what_the_lora_draws(lora_step, tiny_sd, tmp_path):
    out = str(tmp_path / "merged.safetensors")
    merged = merge_lora(lora_step.step_dir, tiny_sd, out,
                        format="single-file")
    tensors = load_file(out)
    assert sd1_difference(tensors, merged) == ([], [], [])
    # tiny UNet 250, VAE 82, CLIP 84
    assert len(tensors) == 416
    assert tensors["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4

    loaded = StableDiffusionPipeline.from_single_file(
        out, config=tiny_sd, local_files_only=True)
    image = draw(loaded)
    assert np.abs(image - lora_step.reference).max() <= 1e-4
    assert np.abs(image - draw(load_pipeline(tiny_sd))).max() > 1e-2
    for part in ("unet", "vae", "text_encoder"):
        ours = getattr(merged, part).state_dict()
        theirs = getattr(loaded, part).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), part

    with safe_open(out, "pt") as f:
        metadata = f.metadata()
    assert metadata["modelspec.architecture"] == "stable-diffusion-v1"
    assert metadata["modelspec.title"] == "merged"
    assert metadata["modelspec.resolution"] == "64x64"
    assert tiny_sd in metadata["modelspec.merged_from"]


def test_float16_single_file(lora_step, tiny_sd, tmp_path):
    out = str(tmp_path / "half.safetensors")
    merge_lora(lora_step.step_dir, tiny_sd, out, format="single-file",
               dtype="float16")
    tensors = load_file(out)
    assert {v.dtype for v in tensors.values()} == {torch.float16}
    loaded = StableDiffusionPipeline.from_single_file(
        out, config=tiny_sd, local_files_only=True,
        torch_dtype=torch.float32)
    assert np.abs(draw(loaded) - lora_step.reference).max() < 0.05


def sd1_shaped_pipeline(path: str) -> StableDiffusionPipeline:
    """A small pipeline laid out as SD 1.x (``SD1_LAYOUT_UNET``) with a
    four-level VAE, two resnets a level, as SD's."""
    torch.manual_seed(0)
    tokenizer = write_char_tokenizer(f"{path}/tokenizer")
    unet = UNet2DConditionModel(**SD1_LAYOUT_UNET)
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), layers_per_block=2,
        down_block_types=("DownEncoderBlock2D", ) * 4,
        up_block_types=("UpDecoderBlock2D", ) * 4, norm_num_groups=32,
        latent_channels=4)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    save_pipeline(path, unet, vae, text_encoder, tokenizer)
    return StableDiffusionPipeline.from_pretrained(path)


def test_sd1_layout_round_trips_through_from_single_file(tmp_path):
    pipe = sd1_shaped_pipeline(str(tmp_path / "sd1"))
    tensors = to_single_file(pipe.unet, pipe.vae, pipe.text_encoder)
    assert sd1_difference(tensors, pipe) == ([], [], [])
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in tensors
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in tensors
    assert "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight" in (
        tensors)
    save_single_file(tensors, str(tmp_path / "sd1.safetensors"))
    loaded = StableDiffusionPipeline.from_single_file(
        str(tmp_path / "sd1.safetensors"), config=str(tmp_path / "sd1"),
        local_files_only=True)
    for part in ("unet", "vae", "text_encoder"):
        ours = getattr(pipe, part).state_dict()
        theirs = getattr(loaded, part).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), part


def test_sd15_architecture_has_every_original_tensor():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET_CONFIG)
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG))
    tensors = to_single_file(unet, vae, text_encoder)
    expected = original_checkpoint(unet, vae, text_encoder.config)
    assert tensors.keys() == expected.keys()
    assert all(tuple(tensors[k].shape) == expected[k] for k in expected)
    counts = {prefix: sum(k.startswith(prefix) for k in tensors)
              for prefix in ("model.diffusion_model.", "first_stage_model.",
                             "cond_stage_model.transformer.text_model.")}
    assert list(counts.values()) == [686, 248, 196]


def test_models_it_cannot_write_are_refused(tiny_sd, tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_sd)
    parts = (pipe.vae, pipe.text_encoder)
    sdxl_like = UNet2DConditionModel.from_config(
        pipe.unet.config, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=48)
    with pytest.raises(ConfigError, match=r"^the UNet takes SDXL's added "
                       r"conditioning but the model has text_encoder="
                       r"CLIPTextModel, text_encoder_2=NoneType"):
        to_single_file(sdxl_like, *parts)
    sd2_like = UNet2DConditionModel.from_config(pipe.unet.config,
                                                use_linear_projection=True)
    with pytest.raises(ConfigError, match="use_linear_projection=True"):
        to_single_file(sd2_like, *parts)
    state = dict(pipe.unet.state_dict(), **{"extra_block.weight":
                                             torch.zeros(1)})
    with pytest.raises(ConfigError, match=r"unet: 1 weights .*extra_block"):
        rename_state_dict(state, unet_renames(pipe.unet.config), "", "unet")
    with pytest.raises(ConfigError, match="single-file writes one"):
        merge_lora("step", tiny_sd, str(tmp_path / "folder"),
                   format="single-file")
    with pytest.raises(ConfigError, match="single-file writes one"):
        merge_lora("step", tiny_sd, str(tmp_path / "x.safetensors"))
    assert not list(tmp_path.iterdir())


def test_unfused_adapters_are_refused(lora_step, tiny_sd):
    pipe = load_pipeline(tiny_sd, lora_step.step_dir)
    with pytest.raises(ValueError, match="still carries adapter layers"):
        to_single_file(pipe.unet, pipe.vae, pipe.text_encoder)
