"""The registry of adapter kinds: which kind a config, a saved config, a
part's peft tensors or a kohya module is."""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from peft import PeftConfig
from torch import nn

from diffengine.adapters.base import AdapterKind
from diffengine.adapters.dora import DORA
from diffengine.adapters.loha import LOHA
from diffengine.adapters.lokr import LOKR
from diffengine.adapters.lora import LORA
from diffengine.errors import ConfigError

# Every kind, in the order saved configs and files are matched against them.
ADAPTER_KINDS: tuple[AdapterKind, ...] = (
    LORA,  # LoRA and LoCon; peft's LoraConfig
    DORA,  # LoRA with use_dora=True (or type="DoRA")
    LOHA,  # LyCORIS LoHa; peft's LoHaConfig
    LOKR,  # LyCORIS LoKr; peft's LoKrConfig
)
KINDS_BY_NAME = {kind.name: kind for kind in ADAPTER_KINDS}


def adapter_kind(cfg: Mapping, name: str) -> AdapterKind:
    """The kind a config dict asks for: its ``type`` (``"LoRA"`` by
    default), DoRA for ``type="LoRA"`` with ``use_dora=True``.

    Raises:
        ConfigError: If ``type`` names no kind.
    """
    kind_name = cfg.get("type", LORA.name)
    if kind_name not in KINDS_BY_NAME:
        raise ConfigError(
            f"{name}.type={kind_name!r} is not supported; choose one of "
            f"{sorted(KINDS_BY_NAME)}.")
    kind = KINDS_BY_NAME[kind_name]
    if kind is LORA and cfg.get("use_dora"):
        return DORA
    return kind


def add_adapter(module: nn.Module, cfg: Mapping, name: str) -> PeftConfig:
    """Inject the checked adapter of ``cfg`` into ``module`` (see
    :meth:`AdapterKind.inject`)."""
    return adapter_kind(cfg, name).inject(module, cfg, name)


def kind_of_config(config: Mapping) -> AdapterKind:
    """The kind of a saved peft config (``to_dict()``).

    Raises:
        ValueError: If no kind matches its ``peft_type``.
    """
    for kind in ADAPTER_KINDS:
        if kind.matches(config):
            return kind
    raise ValueError(f"peft_type {config.get('peft_type')!r} is none of "
                     f"{[k.name for k in ADAPTER_KINDS]}.")


def kind_of_tensors(keys: Iterable[str]) -> AdapterKind:
    """The kind of a part's peft tensors (``<module>.lora_A.weight``, ...),
    for files saved without a config."""
    keys = list(keys)
    for kind in (DORA, LOHA, LOKR):
        own = set(kind.parameters) - set(LORA.parameters)
        if any(f".{p}" in k for k in keys for p in own):
            return kind
    return LORA


def kind_of_kohya(names: Iterable[str]) -> AdapterKind:
    """The kind of one kohya module from the names of its tensors."""
    names = list(names)
    for kind in (DORA, LOHA, LOKR, LORA):
        if kind.owns_kohya(names):
            return kind
    raise ValueError(f"tensors {names} are no adapter kind's.")
