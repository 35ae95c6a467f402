import pytest
from peft import LoraConfig
from torch import nn

from diffengine.errors import ConfigError
from diffengine.models.utils import build_lora_config


class Block(nn.Module):

    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(4, 4)
        self.to_out = nn.ModuleList([nn.Linear(4, 4)])


def test_builds_lora_config_with_gaussian_default():
    config = build_lora_config(
        dict(type="LoRA", r=4, lora_alpha=2, target_modules=["to_q", "to_out.0"]),
        Block(), "unet_lora_config")
    assert isinstance(config, LoraConfig)
    assert (config.r, config.lora_alpha) == (4, 2)
    assert config.init_lora_weights == "gaussian"
    assert set(config.target_modules) == {"to_q", "to_out.0"}


def test_unknown_option_names_it_and_suggests():
    with pytest.raises(ConfigError, match=r"unet_lora_config\.rank is not an "
                       r"option of peft's LoraConfig\. Did you mean 'r'\?"):
        build_lora_config(dict(rank=32, target_modules=["to_q"]), Block(),
                          "unet_lora_config")


def test_unknown_type():
    with pytest.raises(ConfigError, match=r"type='LoHa' is not supported"):
        build_lora_config(dict(type="LoHa", target_modules=["to_q"]), Block(),
                          "unet_lora_config")


def test_target_module_matching_nothing_is_an_error():
    with pytest.raises(ConfigError, match=r"entry 'to_qq' matches no layer of "
                       r"Block\. Close names: \['to_q'\]"):
        build_lora_config(dict(target_modules=["to_q", "to_qq"]), Block(),
                          "unet_lora_config")
    with pytest.raises(ConfigError, match=r"target_modules='.\*k_proj' "
                       "matches no layer"):
        build_lora_config(dict(target_modules=".*k_proj"), Block(), "x")


def test_target_modules_required():
    with pytest.raises(ConfigError, match="target_modules is required"):
        build_lora_config(dict(r=4), Block(), "text_encoder_lora_config")
