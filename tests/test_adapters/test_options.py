"""Adapter configs: the kind a config names, its checked options."""
import pytest
from peft import LoHaConfig, LoKrConfig, LoraConfig
from torch import nn

from diffengine.adapters import (
    DORA,
    LOHA,
    LOKR,
    LORA,
    adapter_kind,
    kind_of_config,
)
from diffengine.adapters.formats import step_format_of
from diffengine.errors import ConfigError


class Block(nn.Module):

    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(4, 4)
        self.to_out = nn.ModuleList([nn.Linear(4, 4)])
        self.conv1 = nn.Conv2d(4, 4, 3)


def build(cfg, name="unet_lora_config"):
    return adapter_kind(cfg, name).build_config(cfg, Block(), name)


def test_builds_lora_config_with_gaussian_default():
    config = build(dict(type="LoRA", r=4, lora_alpha=2,
                        target_modules=["to_q", "to_out.0"]))
    assert isinstance(config, LoraConfig)
    assert (config.r, config.lora_alpha) == (4, 2)
    assert config.init_lora_weights == "gaussian"
    assert set(config.target_modules) == {"to_q", "to_out.0"}
    assert not config.use_dora


@pytest.mark.parametrize("cfg, kind, config_class", [
    (dict(), LORA, LoraConfig),
    (dict(use_dora=True), DORA, LoraConfig),
    (dict(type="DoRA"), DORA, LoraConfig),
    (dict(type="LoHa"), LOHA, LoHaConfig),
    (dict(type="LoKr"), LOKR, LoKrConfig),
])
def test_type_names_the_kind(cfg, kind, config_class):
    cfg = dict(r=4, target_modules=["to_q", "conv1"], **cfg)
    assert adapter_kind(cfg, "unet_lora_config") is kind
    config = build(cfg)
    assert type(config) is config_class
    assert kind_of_config(config.to_dict()) is kind
    assert kind.matches(config.to_dict())
    assert (kind is DORA) == bool(getattr(config, "use_dora", False))


@pytest.mark.parametrize("kind", ["LoHa", "LoKr"])
def test_a_lora_config_switched_to_lycoris_keeps_its_alpha(kind):
    # the seed configs set lora_alpha; --cfg-options ...type=LoHa keeps it
    config = build(dict(type=kind, r=8, lora_alpha=4, target_modules=["to_q"]))
    assert (config.r, config.alpha) == (8, 4)
    with pytest.raises(ConfigError, match=r"unet_lora_config\.lora_alpha and "
                       r"unet_lora_config\.alpha are both set; "
                       f"{kind} takes alpha"):
        build(dict(type=kind, alpha=2, lora_alpha=4, target_modules=["to_q"]))


@pytest.mark.parametrize("cfg, message", [
    (dict(rank=32), r"unet_lora_config\.rank is not an option of peft's "
     r"LoraConfig\. Did you mean 'r'\?"),
    (dict(type="LoHa", use_tucker=True), r"unet_lora_config\.use_tucker is "
     r"not an option of peft's LoHaConfig\. Did you mean "
     r"'use_effective_conv2d'\?"),
    (dict(type="LoKr", factor=4), r"\.factor is not an option of peft's "
     r"LoKrConfig\. Did you mean 'decompose_factor'\?"),
    (dict(type="LoHa", use_dora=True), r"\.use_dora is not an option of "
     "peft's LoHaConfig"),
    (dict(type="LoKr", decompose_bot=True), r"\.decompose_bot is not an "
     r"option of peft's LoKrConfig\. Did you mean 'decompose_both'\?"),
])
def test_unknown_option_names_it_and_suggests(cfg, message):
    with pytest.raises(ConfigError, match=message):
        build(dict(target_modules=["to_q"], **cfg))


def test_unknown_type():
    with pytest.raises(ConfigError, match=r"type='OFT' is not supported; "
                       r"choose one of \['DoRA', 'LoHa', 'LoKr', 'LoRA'\]"):
        build(dict(type="OFT", target_modules=["to_q"]))
    with pytest.raises(ConfigError, match="type='DoRA' with use_dora=False"):
        build(dict(type="DoRA", use_dora=False, target_modules=["to_q"]))


@pytest.mark.parametrize("kind", ["LoRA", "LoHa", "LoKr"])
def test_target_module_matching_nothing_is_an_error(kind):
    with pytest.raises(ConfigError, match=r"entry 'conv2' matches no layer of "
                       r"Block\. Close names: \['conv1'\]"):
        build(dict(type=kind, target_modules=["to_q", "conv2"]))
    with pytest.raises(ConfigError, match=r"target_modules='.\*k_proj' "
                       "matches no layer"):
        build(dict(type=kind, target_modules=".*k_proj"), "x")


@pytest.mark.parametrize("kind", ["LoRA", "LoHa", "LoKr"])
def test_target_module_naming_a_container_is_an_error(kind):
    # peft would stop with "Target module ModuleList(...) is not supported"
    with pytest.raises(ConfigError, match=r"entry 'to_out' matches to_out, "
                       r"a ModuleList, not a Linear or Conv layer; name the "
                       r"layers inside it instead, e.g. \['0'\]"):
        build(dict(type=kind, target_modules=["to_q", "to_out"]))
    with pytest.raises(ConfigError, match=r"target_modules='to_.\*' "
                       r"matches to_out, a ModuleList"):
        build(dict(type=kind, target_modules="to_.*"), "x")
    assert build(dict(type=kind, target_modules=["to_q", "to_out.0"]))


def test_target_modules_required():
    with pytest.raises(ConfigError, match="target_modules is required"):
        build(dict(r=4), "text_encoder_lora_config")


def test_one_step_file_must_hold_every_part():
    assert step_format_of([LORA, DORA]) is step_format_of([LORA])
    assert step_format_of([LOHA, LOKR]) is step_format_of([LOKR])
    with pytest.raises(ConfigError, match=r"the adapters \['LoHa', 'LoRA'\] "
                       r"need different step files \(lycoris_weights"
                       r"\.safetensors, pytorch_lora_weights\.safetensors\)"):
        step_format_of([LOHA, LORA])
