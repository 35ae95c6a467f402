"""The adapter kinds a config may name, one module each.

Each kind says how it is configured and injected (its peft config class and
option checks), which file of a step folder holds it
(:attr:`AdapterKind.weight_name`: diffusers' LoRA file or the LyCORIS file,
whose writers and loaders live in :mod:`diffengine.adapters.formats`), and
how one module converts to the kohya/LyCORIS single file. A new kind is a
module with an :class:`AdapterKind` subclass and a line in
:mod:`diffengine.adapters.kinds`.

The modules are layered, each importing only those below it: the kinds
(``base``, ``lora``, ``dora``, ``lycoris``, ``loha``, ``lokr``, ``kinds``,
``kohya``) at the bottom, the file record (:mod:`diffengine.adapter_file`)
above them, the step-file formats (:mod:`diffengine.adapters.formats`) on
top. This package imports the kinds only.
"""
from __future__ import annotations

from diffengine.adapters.base import (
    DIFFUSERS_WEIGHT_NAME,
    LYCORIS_WEIGHT_NAME,
    AdapterKind,
    AdapterPart,
    adapted_convolutions,
    check_target_modules,
    count_trainable_parameters,
)
from diffengine.adapters.dora import DORA
from diffengine.adapters.kinds import (
    ADAPTER_KINDS,
    KINDS_BY_NAME,
    adapter_kind,
    add_adapter,
    kind_of_config,
    kind_of_kohya,
    kind_of_tensors,
)
from diffengine.adapters.loha import LOHA
from diffengine.adapters.lokr import LOKR
from diffengine.adapters.lora import LORA

__all__ = [
    "ADAPTER_KINDS",
    "DIFFUSERS_WEIGHT_NAME",
    "DORA",
    "KINDS_BY_NAME",
    "LOHA",
    "LOKR",
    "LORA",
    "LYCORIS_WEIGHT_NAME",
    "AdapterKind",
    "AdapterPart",
    "adapted_convolutions",
    "adapter_kind",
    "add_adapter",
    "check_target_modules",
    "count_trainable_parameters",
    "kind_of_config",
    "kind_of_kohya",
    "kind_of_tensors",
]
