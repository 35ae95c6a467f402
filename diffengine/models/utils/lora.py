"""Building peft adapter configs from diffengine config dicts, checked."""
from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable

from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from diffengine.errors import ConfigError

# Adapter types a config may name in ``type``; each maps to the peft config
# class that builds it. LoRA is what diffusers' ``load_lora_weights`` reads;
# LoHa/LoKr/DoRA get an entry once their save/load round trip is tested.
ADAPTER_CONFIGS: dict[str, type[LoraConfig]] = {"LoRA": LoraConfig}
# Names other trainers use for peft's options (kohya, older diffengine).
OPTION_ALIASES = {
    "rank": "r",
    "alpha": "lora_alpha",
    "network_dim": "r",
    "network_alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "target": "target_modules",
}


def build_lora_config(cfg: dict, module: nn.Module, name: str) -> LoraConfig:
    """Build a peft ``LoraConfig`` from a config dict and check it fits.

    Args:
        cfg (dict): ``type`` plus keyword arguments of the peft config
            (``r``, ``lora_alpha``, ``target_modules``, ...).
        module (nn.Module): The module the adapter will be injected into.
        name (str): The config key, e.g. ``"unet_lora_config"``, named in
            errors.

    Returns:
        LoraConfig: The peft config. ``init_lora_weights`` defaults to
        ``"gaussian"`` as in diffusers' LoRA training scripts.

    Raises:
        ConfigError: If ``type`` is unknown, an option is not a field of the
            peft config, or an entry of ``target_modules`` matches no layer.
    """
    options = dict(cfg)
    adapter_type = options.pop("type", "LoRA")
    if adapter_type not in ADAPTER_CONFIGS:
        raise ConfigError(
            f"{name}.type={adapter_type!r} is not supported; choose one of "
            f"{sorted(ADAPTER_CONFIGS)}.")
    config_class = ADAPTER_CONFIGS[adapter_type]
    fields = {f.name for f in dataclasses.fields(config_class) if f.init}
    for key in options:
        if key not in fields:
            hint = [OPTION_ALIASES[key]] if key in OPTION_ALIASES else (
                difflib.get_close_matches(key, sorted(fields), n=1))
            fix = f" Did you mean {hint[0]!r}?" if hint else ""
            raise ConfigError(
                f"{name}.{key} is not an option of peft's "
                f"{config_class.__name__}.{fix}")
    if "target_modules" not in options:
        raise ConfigError(
            f"{name}.target_modules is required, e.g. "
            "['to_q', 'to_k', 'to_v', 'to_out.0'] for the UNet or "
            "['q_proj', 'k_proj', 'v_proj', 'out_proj'] for CLIP.")
    options.setdefault("init_lora_weights", "gaussian")
    check_target_modules(options["target_modules"], module, name)
    return config_class(**options)


def check_target_modules(target_modules: str | Iterable[str],
                         module: nn.Module, name: str) -> None:
    """Raise if ``target_modules`` (or one entry of it) matches no layer.

    peft matches a list entry against the end of a module name and a string
    as a regex against the whole name; an entry that matches nothing would
    otherwise be dropped silently.
    """
    names = [n for n, _ in module.named_modules() if n]
    if isinstance(target_modules, str):
        if not any(re.fullmatch(target_modules, n) for n in names):
            raise ConfigError(
                f"{name}.target_modules={target_modules!r} matches no layer "
                f"of {type(module).__name__}.")
        return
    for target in target_modules:
        if not any(n == target or n.endswith("." + target) for n in names):
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
            hint = difflib.get_close_matches(target, leaves, n=3)
            fix = f" Close names: {hint}." if hint else ""
            raise ConfigError(
                f"{name}.target_modules entry {target!r} matches no layer "
                f"of {type(module).__name__}.{fix}")


def add_lora_adapter(module: nn.Module, cfg: dict, name: str) -> LoraConfig:
    """Inject a checked LoRA adapter into ``module``; its weights are fp32.

    The adapter trains in fp32 whatever the dtype of the frozen layers it
    wraps (peft casts the layer input to the adapter's dtype), so that small
    updates are not lost to rounding.

    Args:
        module (nn.Module): The frozen module to adapt.
        cfg (dict): The adapter config, as for :func:`build_lora_config`.
        name (str): The config key, named in errors.

    Returns:
        LoraConfig: The peft config of the injected adapter.
    """
    config = build_lora_config(cfg, module, name)
    inject_adapter_in_model(config, module)
    for param in module.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return config


def count_trainable_parameters(module: nn.Module) -> int:
    """The number of parameters of ``module`` that require a gradient."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
