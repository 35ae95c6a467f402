"""The tiny and full-size-shaped models of diffengine.testing: SD3 and
SD3.5, Flux.1 dev and schnell."""
import numpy as np
import pytest
import torch
from diffusers import (
    FluxPipeline,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from peft import LoraConfig, inject_adapter_in_model

from diffengine.architectures import (
    SD3_MEDIUM,
    SD35_MEDIUM,
    sd3_architecture,
)
from diffengine.errors import ConfigError
from diffengine.testing import (
    SD35_MEDIUM_TRANSFORMER_CONFIG,
    make_tiny_flux,
    make_tiny_sd3,
    sd35_medium_shaped_models,
    write_char_tokenizer,
    write_t5_tokenizer,
)
from tests.conftest import SD3_TARGETS


@pytest.mark.parametrize("variant, qk_norm, dual, architecture", [
    ("sd3.5", "rms_norm", [0], SD35_MEDIUM),
    ("sd3", None, [], SD3_MEDIUM),
])
def test_tiny_sd3_loads_offline_and_draws(variant, qk_norm, dual,
                                          architecture, tiny_sd3,
                                          tiny_sd3_medium):
    path = tiny_sd3 if variant == "sd3.5" else tiny_sd3_medium
    pipe = StableDiffusion3Pipeline.from_pretrained(path)
    config = pipe.transformer.config
    assert (config.qk_norm, list(config.dual_attention_layers)) == (qk_norm,
                                                                    dual)
    assert (config.patch_size, config.in_channels, config.num_layers) == (
        2, 16, 2)
    assert sd3_architecture(config) is architecture
    vae = pipe.vae.config
    assert (vae.latent_channels, vae.scaling_factor, vae.shift_factor) == (
        16, 1.5305, 0.0609)
    assert pipe.vae.quant_conv is None and pipe.vae.post_quant_conv is None
    # T5 is where the CLIP embeddings are padded to
    assert pipe.text_encoder_3.config.d_model >= (
        pipe.text_encoder.config.hidden_size
        + pipe.text_encoder_2.config.hidden_size)
    assert pipe.tokenizer_3("a red circle").input_ids[-1] == 1  # </s>
    assert len(set(pipe.tokenizer_3("a red circle").input_ids)) > 5
    assert pipe.scheduler.config.shift == 3.0

    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, height=64, width=64,
                 output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (64, 64, 3) and np.isfinite(image).all()
    assert image.std() > 0


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"variant='sd4'; choose one of "
                       r"\['sd3', 'sd3\.5'\]"):
        make_tiny_sd3(str(tmp_path), variant="sd4")


def meta_transformer(config: dict) -> SD3Transformer2DModel:
    with torch.device("meta"):
        transformer = SD3Transformer2DModel.from_config(config)
    return transformer.requires_grad_(False)


def test_sd35_medium_architecture_on_the_meta_device():
    transformer = meta_transformer(SD35_MEDIUM_TRANSFORMER_CONFIG)
    assert sum(p.numel() for p in transformer.parameters()) == 2_243_171_520
    assert sd3_architecture(transformer.config) is SD35_MEDIUM
    rank = 4
    for targets, per_rank in ((SD3_TARGETS[:4], 454_656),
                              (SD3_TARGETS, 746_496)):
        transformer = meta_transformer(SD35_MEDIUM_TRANSFORMER_CONFIG)
        inject_adapter_in_model(LoraConfig(r=rank, target_modules=targets),
                                transformer)
        assert sum(p.numel() for p in transformer.parameters()
                   if p.requires_grad) == per_rank * rank
        # by suffix the second attention of blocks 0-12 is adapted too
        assert hasattr(transformer.transformer_blocks[12].attn2.to_q,
                       "lora_A")


def test_sd35_medium_shaped_parts_on_the_meta_device(tmp_path):
    tokenizer = write_char_tokenizer(str(tmp_path / "tokenizer"))
    tokenizer_3 = write_t5_tokenizer(str(tmp_path / "tokenizer_3"))
    transformer, vae, (clip_l, clip_g, t5) = sd35_medium_shaped_models(
        tokenizer, tokenizer_3, "meta")

    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(transformer) == 2_243_171_520
    assert vae.config.latent_channels == 16 and vae.quant_conv is None
    # the published CLIP-L and OpenCLIP bigG with their projections
    assert count(clip_l) == 123_650_304
    assert count(clip_g) == 694_659_840
    assert t5.config.d_model == transformer.config.joint_attention_dim
    assert (clip_l.config.projection_dim + clip_g.config.projection_dim
            == transformer.config.pooled_projection_dim)


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_make_tiny_flux_loads_and_draws(tmp_path, variant):
    path = make_tiny_flux(str(tmp_path / variant), variant=variant)
    pipe = FluxPipeline.from_pretrained(path)
    latent_channels = pipe.vae.config.latent_channels
    assert pipe.transformer.config.in_channels == 4 * latent_channels == 64
    config = pipe.transformer.config
    assert sum(config.axes_dims_rope) == config.attention_head_dim
    assert config.guidance_embeds == (variant == "dev")
    assert pipe.scheduler.config.use_dynamic_shifting == (variant == "dev")
    image = pipe("a red circle", height=64, width=64, num_inference_steps=2,
                 max_sequence_length=32,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    assert np.asarray(image).std() > 0


def test_make_tiny_flux_rejects_unknown_variant(tmp_path):
    with pytest.raises(ConfigError, match="variant='pro'"):
        make_tiny_flux(str(tmp_path), variant="pro")
