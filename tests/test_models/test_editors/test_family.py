"""A family is data: its declarations load the parts, name the adapter
options and build the pipeline."""
import shutil

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from diffengine.errors import ConfigError
from diffengine.models import StableDiffusion, StableDiffusionXL
from diffengine.models.editors import TextEncoder
from tests.conftest import TEXT_TARGETS, UNET_TARGETS

UNET_LORA = dict(r=2, target_modules=UNET_TARGETS)
TEXT_LORA = dict(r=2, target_modules=TEXT_TARGETS)


class TwoEncoders(StableDiffusion):
    """SD 1.x with a second text encoder that takes no adapter (as SD3's
    T5); only the declarations differ."""

    text_encoders = (
        TextEncoder("text_encoder", CLIPTextModel, CLIPTokenizer),
        TextEncoder("text_encoder_2", CLIPTextModel, CLIPTokenizer,
                    lora=False),
    )


@pytest.fixture(scope="module")
def two_encoders_folder(tiny_sd, tmp_path_factory):
    """The tiny SD folder with a copy of its text encoder and tokenizer as
    ``text_encoder_2`` and ``tokenizer_2``."""
    folder = tmp_path_factory.mktemp("family") / "two-encoders"
    shutil.copytree(tiny_sd, folder)
    shutil.copytree(folder / "text_encoder", folder / "text_encoder_2")
    shutil.copytree(folder / "tokenizer", folder / "tokenizer_2")
    return str(folder)


def test_declared_parts_are_loaded(two_encoders_folder):
    model = TwoEncoders(two_encoders_folder, unet_lora_config=UNET_LORA,
                        text_encoder_lora_config=TEXT_LORA)
    assert model.denoiser is model.unet
    assert type(model.scheduler).__name__ == "DDPMScheduler"
    assert isinstance(model.text_encoder_2, CLIPTextModel)
    assert isinstance(model.tokenizer_2, CLIPTokenizer)
    # lora=False: loaded and frozen, not adapted
    assert model.text_encoder_names == ("text_encoder", )
    assert model.trainable_parts == ["unet", "text_encoder"]
    assert not any(p.requires_grad
                   for p in model.text_encoder_2.parameters())


def test_a_missing_declared_part_names_the_folder(tiny_sd):
    with pytest.raises(ConfigError, match=(
            rf"model='{tiny_sd}' lacks the subfolders "
            r"\['tokenizer_2', 'text_encoder_2'\]")) as error:
        TwoEncoders(tiny_sd, unet_lora_config=UNET_LORA)
    assert "\n" not in str(error.value)


def test_text_encoder_lora_needs_an_encoder_that_takes_it(
        two_encoders_folder):
    class FrozenText(TwoEncoders):
        text_encoders = (TextEncoder("text_encoder", CLIPTextModel,
                                     CLIPTokenizer, lora=False), )

    with pytest.raises(ConfigError, match="text_encoder_lora_config is set, "
                       "but none of FrozenText's text encoders"):
        FrozenText(two_encoders_folder, text_encoder_lora_config=TEXT_LORA)


@pytest.mark.parametrize("family", [StableDiffusion, StableDiffusionXL])
def test_the_other_denoiser_option_is_refused(family, tiny_sd):
    with pytest.raises(ConfigError, match=(
            r"^transformer_lora_config is set, but \w+'s denoiser is its "
            r"unet: rename it to unet_lora_config\.$")):
        family(tiny_sd, transformer_lora_config=UNET_LORA)


def test_the_pipeline_is_built_from_the_declarations(tiny_sd):
    model = StableDiffusion(tiny_sd, unet_lora_config=UNET_LORA)
    parts = model.pipeline_parts()
    assert parts["unet"] is model.unet
    assert parts["text_encoder"] is model.text_encoder
    assert parts["tokenizer"] is model.tokenizer
    assert parts["vae"] is model.vae
    assert parts["safety_checker"] is None
    pipe = model.pipeline()
    assert pipe.unet is model.unet and pipe.vae is model.vae


@pytest.mark.parametrize("option", ["compile_denoiser", "compile_unet"])
def test_compile_denoiser_and_its_earlier_name(tiny_sd, option):
    model = StableDiffusion(tiny_sd, unet_lora_config=UNET_LORA,
                            **{option: True})
    assert model.unet._compiled_call_impl is not None  # compiled in place


def test_compile_options_are_one(tiny_sd):
    with pytest.raises(ConfigError, match="compile_denoiser and compile_unet "
                       "are both set"):
        StableDiffusion(tiny_sd, unet_lora_config=UNET_LORA,
                        compile_denoiser=True, compile_unet=True)


def test_latents_are_shifted_only_when_the_vae_has_a_shift(tiny_sd):
    model = StableDiffusion(tiny_sd, unet_lora_config=UNET_LORA)
    sample = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    factor = model.vae.config.scaling_factor
    assert model.vae.config.get("shift_factor") is None
    assert torch.equal(model.scale_latents(sample), sample * factor)
    model.vae.register_to_config(shift_factor=0.25)  # as SD3's and Flux's
    torch.testing.assert_close(model.scale_latents(sample),
                               (sample - 0.25) * factor)


def test_the_latent_encoder_id_without_quant_conv(tiny_sd):
    """SD3's and Flux's VAEs have no quant_conv (use_quant_conv=False)."""
    model = StableDiffusion(tiny_sd, unet_lora_config=UNET_LORA)
    with_conv = model.latent_encoder_id()
    model.vae.quant_conv = None
    without = model.latent_encoder_id()
    assert len(without) == 64 and without != with_conv
