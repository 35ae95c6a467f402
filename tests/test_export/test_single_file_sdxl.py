"""SDXL single-file checkpoints: sgm's layout, read back by diffusers."""
import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
)

from diffengine.errors import ConfigError
from diffengine.export import merge_lora, to_single_file
from diffengine.models import StableDiffusionXL
from diffengine.testing import (
    SDXL_TEXT_2_CONFIG,
    SDXL_TEXT_CONFIG,
    SDXL_UNET_CONFIG,
    SDXL_VAE_CONFIG,
    save_sdxl_pipeline,
    write_char_tokenizer,
)
from tests.conftest import save_perturbed_step
from tests.oracles.original_layout import (
    layout_difference,
    original_sdxl_checkpoint,
)

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")
SAMPLE = dict(num_inference_steps=3, output_type="np", height=64, width=64)


def sdxl_shaped_pipeline(path: str) -> str:
    """A small SDXL pipeline whose two text encoders differ in width, as
    SDXL's (768 and 1280) do: diffusers tells the encoders of a single
    file apart by their widths."""
    torch.manual_seed(0)
    tokenizer = write_char_tokenizer(f"{path}/tokenizer")
    tokenizer_2 = write_char_tokenizer(f"{path}/tokenizer_2")
    projection, time_dim = 24, 8

    def text_config(width: int) -> CLIPTextConfig:
        return CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width,
            intermediate_size=2 * width, num_hidden_layers=2,
            num_attention_heads=4, projection_dim=projection,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id)

    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(2, 4),
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=projection + 6 * time_dim,
        cross_attention_dim=32 + 48, norm_num_groups=32)
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 64, 64), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D", ) * 4,
        up_block_types=("UpDecoderBlock2D", ) * 4, norm_num_groups=32,
        latent_channels=4, scaling_factor=0.13025, force_upcast=True)
    return save_sdxl_pipeline(
        path, unet, vae, CLIPTextModel(text_config(32)),
        CLIPTextModelWithProjection(text_config(48)), tokenizer, tokenizer_2)


@pytest.fixture(scope="module")
def sdxl_base(tmp_path_factory) -> str:
    return sdxl_shaped_pipeline(str(tmp_path_factory.mktemp("sdxl") / "base"))


@pytest.fixture(scope="module")
def sdxl_step(tmp_path_factory, sdxl_base) -> str:
    step = str(tmp_path_factory.mktemp("sdxl") / "step3")
    save_perturbed_step(StableDiffusionXL, sdxl_base, step, "64x64")
    return step


def sdxl_difference(tensors, pipe) -> tuple[list, list, list]:
    """(missing, unexpected, wrong shape) against sgm's layout."""
    return layout_difference(tensors, original_sdxl_checkpoint(
        pipe.unet, pipe.vae, pipe.text_encoder.config,
        pipe.text_encoder_2.config))


def assert_same_weights(ours, theirs) -> None:
    for part in PARTS:
        mine = getattr(ours, part).state_dict()
        read = getattr(theirs, part).state_dict()
        assert mine.keys() == read.keys(), part
        assert all(torch.equal(mine[k], read[k]) for k in mine), part


def test_merged_sdxl_round_trips_through_from_single_file(
        sdxl_step, sdxl_base, tmp_path):
    out = str(tmp_path / "merged-xl.safetensors")
    merged = merge_lora(sdxl_step, sdxl_base, out, format="single-file")
    tensors = load_file(out)
    assert sdxl_difference(tensors, merged) == ([], [], [])
    # OpenCLIP's fused attention and transposed projection, by value
    encoder = merged.text_encoder_2.text_model.encoder.layers[1].self_attn
    assert torch.equal(
        tensors["conditioner.embedders.1.model.transformer.resblocks.1.attn."
                "in_proj_weight"],
        torch.cat([encoder.q_proj.weight, encoder.k_proj.weight,
                   encoder.v_proj.weight]))
    assert torch.equal(tensors["conditioner.embedders.1.model.text_projection"],
                       merged.text_encoder_2.text_projection.weight.T)
    assert tensors["model.diffusion_model.label_emb.0.0.weight"].shape == (
        32 * 4, 24 + 6 * 8)

    loaded = StableDiffusionXLPipeline.from_single_file(
        out, config=sdxl_base, local_files_only=True)
    assert_same_weights(merged, loaded)  # bit for bit in float32
    loaded.set_progress_bar_config(disable=True)
    merged.set_progress_bar_config(disable=True)
    draw = [pipe("a red circle", generator=torch.Generator().manual_seed(7),
                 **SAMPLE).images[0] for pipe in (merged, loaded)]
    # the same weights; the UNets' outputs still differ by float rounding
    # (2e-4 of 1 here, other kernels on the tensors read from the file),
    # which three steps of this perturbed LoRA amplify
    assert np.abs(draw[0] - draw[1]).max() < 0.05
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
    assert metadata["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
    assert metadata["modelspec.resolution"] == "64x64"


def test_float16_sdxl_single_file(sdxl_step, sdxl_base, tmp_path):
    out = str(tmp_path / "half-xl.safetensors")
    merged = merge_lora(sdxl_step, sdxl_base, out, format="single-file",
                        dtype="float16")
    assert {v.dtype for v in load_file(out).values()} == {torch.float16}
    loaded = StableDiffusionXLPipeline.from_single_file(
        out, config=sdxl_base, local_files_only=True,
        torch_dtype=torch.float16)
    assert_same_weights(merged, loaded)


def test_sdxl_architecture_has_every_original_tensor():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SDXL_UNET_CONFIG)
        vae = AutoencoderKL(**SDXL_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SDXL_TEXT_CONFIG))
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**SDXL_TEXT_2_CONFIG))
    tensors = to_single_file(unet, vae, text_encoder, text_encoder_2)
    expected = original_sdxl_checkpoint(unet, vae, text_encoder.config,
                                        text_encoder_2.config)
    assert tensors.keys() == expected.keys()
    assert all(tuple(tensors[k].shape) == expected[k] for k in expected)
    counts = {prefix: sum(k.startswith(prefix) for k in tensors)
              for prefix in ("model.diffusion_model.", "first_stage_model.",
                             "conditioner.embedders.0.transformer.text_model.",
                             "conditioner.embedders.1.model.")}
    # sd_xl_base_1.0.safetensors holds 2,515: these and CLIP-L's
    # position_ids and OpenCLIP's logit_scale
    assert list(counts.values()) == [1680, 248, 196, 389]


def test_sdxl_models_it_cannot_write_are_refused(sdxl_base):
    pipe = StableDiffusionXLPipeline.from_pretrained(sdxl_base)
    with pytest.raises(ConfigError, match=r"^the UNet takes SDXL's added "
                       r"conditioning but the model has text_encoder="
                       r"NoneType, text_encoder_2="
                       r"CLIPTextModelWithProjection \(an SDXL refiner"):
        to_single_file(pipe.unet, pipe.vae, None, pipe.text_encoder_2)
    quantized = CLIPTextModelWithProjection(pipe.text_encoder_2.config).to(
        torch.float8_e4m3fn)
    with pytest.raises(ConfigError, match=r"^text_model\.embeddings\."
                       r"token_embedding\.weight is float8_e4m3fn; a "
                       r"single-file checkpoint holds float32, float16 or "
                       r"bfloat16 weights") as refused:
        to_single_file(pipe.unet, pipe.vae, pipe.text_encoder, quantized)
    assert "\n" not in str(refused.value)
