"""The adapter file record by its earlier name: :mod:`diffengine.adapter_file`.

``LoRAFile`` is :class:`~diffengine.adapter_file.AdapterFile` (which reads
LoHa and LoKr files too) and ``read_lora_file`` is
:func:`~diffengine.adapter_file.read_adapter_file`, kept for code that
imports them from here.
"""
from __future__ import annotations

from diffengine.adapter_file import (
    ADAPTER_METADATA_KEY,
    DOWN_SUFFIXES,
    TRAINING_METADATA_PREFIX,
    AdapterFile,
    add_training_metadata,
    base_model,
    read_adapter_file,
    weights_path,
)

LoRAFile = AdapterFile
read_lora_file = read_adapter_file

__all__ = ["ADAPTER_METADATA_KEY", "DOWN_SUFFIXES", "TRAINING_METADATA_PREFIX",
           "LoRAFile", "add_training_metadata", "base_model", "read_lora_file",
           "weights_path"]
