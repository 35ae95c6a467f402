"""The model families as other tools name them: lookup by name, kohya
prefixes, the variant of a transformer config, and the family of an
adapter file, recorded or inferred."""
import pytest
import torch

from diffengine.adapter_file import AdapterFile
from diffengine.architectures import (
    ARCHITECTURES,
    FLUX_DEV,
    FLUX_SCHNELL,
    SD1,
    SD3_MEDIUM,
    SD35_LARGE,
    SD35_MEDIUM,
    SDXL,
    architecture_of,
    flux_architecture,
    is_flux,
    is_sd3,
    sd3_architecture,
)
from diffengine.errors import ConfigError
from diffengine.testing import SD35_MEDIUM_TRANSFORMER_CONFIG

KNOWN = ["flux-1-dev", "flux-1-schnell", "stable-diffusion-3-3-5-large",
         "stable-diffusion-3-3-5-medium", "stable-diffusion-3-3-medium",
         "stable-diffusion-v1", "stable-diffusion-xl-v1-base"]


def adapter_file(*parts: str, **training: str) -> AdapterFile:
    """An in-memory adapter file with one LoRA module in each part."""
    return AdapterFile("memory.safetensors", {
        f"{part}.block.to_q.{name}": torch.zeros(2, 2)
        for part in parts for name in ("lora_A.weight", "lora_B.weight")},
        training=dict(training))


def test_every_architecture_is_found_by_its_model_spec_name():
    assert sorted(ARCHITECTURES) == KNOWN
    assert all(ARCHITECTURES[name].name == name for name in KNOWN)
    assert ARCHITECTURES["stable-diffusion-v1"] is SD1
    assert ARCHITECTURES["stable-diffusion-xl-v1-base"] is SDXL
    assert ARCHITECTURES["flux-1-dev"] is FLUX_DEV


def test_kohya_prefixes_and_versions_of_the_unet_families():
    # A1111 takes lora_te_ for SD 1.x, not diffusers' lora_te1_
    assert SD1.kohya_prefixes == {"unet": "lora_unet_",
                                  "text_encoder": "lora_te_"}
    assert SDXL.kohya_prefixes == {"unet": "lora_unet_",
                                   "text_encoder": "lora_te1_",
                                   "text_encoder_2": "lora_te2_"}
    assert (SD1.base_model_version, SD1.resolution) == ("sd_v1", 512)
    assert (SDXL.base_model_version, SDXL.resolution) == ("sdxl_base_v1-0",
                                                          1024)


def test_flux_variants_share_prefixes_and_version_and_differ_in_name():
    for architecture in (FLUX_DEV, FLUX_SCHNELL):
        # CLIP-L only: T5 takes no LoRA
        assert architecture.kohya_prefixes == {"transformer": "lora_unet_",
                                               "text_encoder": "lora_te1_"}
        assert architecture.base_model_version == "flux1"
        assert architecture.resolution == 1024
    assert (FLUX_DEV.name, FLUX_SCHNELL.name) == ("flux-1-dev",
                                                  "flux-1-schnell")


def test_sd3_architectures_from_configs():
    large = dict(SD35_MEDIUM_TRANSFORMER_CONFIG, num_layers=38,
                 num_attention_heads=38, dual_attention_layers=())
    medium = dict(SD35_MEDIUM_TRANSFORMER_CONFIG, qk_norm=None,
                  dual_attention_layers=())
    assert sd3_architecture(large) is SD35_LARGE
    assert sd3_architecture(medium) is SD3_MEDIUM
    for architecture in (SD3_MEDIUM, SD35_MEDIUM, SD35_LARGE):
        assert architecture.kohya_prefixes == {
            "transformer": "lora_unet_", "text_encoder": "lora_te1_",
            "text_encoder_2": "lora_te2_"}
        assert architecture.resolution == 1024
    assert [a.name for a in (SD3_MEDIUM, SD35_MEDIUM, SD35_LARGE)] == [
        "stable-diffusion-3-3-medium", "stable-diffusion-3-3-5-medium",
        "stable-diffusion-3-3-5-large"]


def test_sd35_medium_is_told_by_its_second_attention():
    assert sd3_architecture(SD35_MEDIUM_TRANSFORMER_CONFIG) is SD35_MEDIUM
    assert sd3_architecture({"qk_norm": "rms_norm",
                             "dual_attention_layers": [0]}) is SD35_MEDIUM
    assert sd3_architecture({"qk_norm": "rms_norm"}) is SD35_LARGE
    assert sd3_architecture({}) is SD3_MEDIUM


@pytest.mark.parametrize("config, architecture", [
    ({"guidance_embeds": True}, FLUX_DEV),
    ({"guidance_embeds": False}, FLUX_SCHNELL),
    ({}, FLUX_SCHNELL),
])
def test_flux_dev_embeds_the_guidance_and_schnell_does_not(config,
                                                           architecture):
    assert flux_architecture(config) is architecture


def test_family_predicates():
    assert [is_sd3(a) for a in (SD1, SDXL, SD3_MEDIUM, SD35_MEDIUM,
                                SD35_LARGE, FLUX_DEV, FLUX_SCHNELL)] == [
        False, False, True, True, True, False, False]
    assert [is_flux(a) for a in (SD1, SDXL, SD35_MEDIUM, FLUX_DEV,
                                 FLUX_SCHNELL)] == [
        False, False, False, True, True]


@pytest.mark.parametrize("name", KNOWN)
def test_a_recorded_architecture_wins_over_the_parts(name):
    # an SD 1.x-looking file that says what it was trained for
    lora = adapter_file("unet", "text_encoder", architecture=name)
    assert architecture_of(lora) is ARCHITECTURES[name]


@pytest.mark.parametrize("parts, architecture", [
    (("unet", ), SD1),
    (("unet", "text_encoder"), SD1),
    (("unet", "text_encoder", "text_encoder_2"), SDXL),
    (("text_encoder_2", ), SDXL),
    (("transformer", ), SD35_MEDIUM),
    (("transformer", "text_encoder", "text_encoder_2"), SD35_MEDIUM),
])
def test_an_unrecorded_architecture_is_inferred_from_the_parts(parts,
                                                               architecture):
    assert architecture_of(adapter_file(*parts)) is architecture


def test_an_unknown_recorded_architecture_is_refused_naming_the_known():
    lora = adapter_file("transformer", architecture="flux-2-dev")
    with pytest.raises(ConfigError) as error:
        architecture_of(lora)
    assert str(error.value) == (
        "memory.safetensors: architecture 'flux-2-dev' has no export; "
        f"known: {KNOWN}.")
