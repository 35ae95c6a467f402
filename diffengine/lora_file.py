"""Reading the LoRA files diffengine writes (``step{N}/`` folders).

A step folder holds ``pytorch_lora_weights.safetensors`` as written by
diffusers' ``save_lora_weights``: keys ``unet.<module>.lora.{down,up}.weight``
and ``text_encoder.text_model.<module>.lora_linear_layer.{down,up}.weight``,
the peft adapter config of each part under ``lora_adapter_metadata``, and
the ``diffengine.*`` training metadata that ``LoRACheckpointHook`` adds.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# Where diffusers keeps the adapter configs in the file's metadata.
ADAPTER_METADATA_KEY = "lora_adapter_metadata"
# Prefix of the training metadata (base model, step, dataset, config).
TRAINING_METADATA_PREFIX = "diffengine."
# Ends of the down-projection keys, one per module: diffusers' own names
# (``lora.down``, ``lora_linear_layer.down``), kohya's (``lora_down``) and,
# where diffusers keeps them (CLIP's ``fc1``/``fc2``), peft's (``lora_A``).
DOWN_SUFFIXES = ("down.weight", "lora_A.weight")


def weights_path(lora: str) -> str:
    """The ``.safetensors`` file of a step folder, or ``lora`` if a file."""
    if os.path.isdir(lora):
        path = os.path.join(lora, WEIGHT_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{lora!r} holds no {WEIGHT_NAME}; give a step folder "
                "(work_dirs/<config>/step<N>) or a .safetensors file.")
        return path
    if not os.path.isfile(lora):
        raise FileNotFoundError(f"LoRA {lora!r} does not exist.")
    return lora


@dataclass
class LoRAFile:
    """The weights and metadata of a diffusers-format LoRA file.

    Attributes:
        path (str): The ``.safetensors`` file.
        state_dict (dict[str, Tensor]): Weights, keys as diffusers saves them.
        adapter_configs (dict[str, dict]): peft ``LoraConfig`` fields per part
            (``"unet"``, ``"text_encoder"``); empty when the file has none.
        training (dict[str, str]): ``diffengine.*`` metadata, prefix dropped
            (``base_model``, ``step``, ``resolution``, ``dataset``, ...).
    """

    path: str
    state_dict: dict[str, torch.Tensor]
    adapter_configs: dict[str, dict] = field(default_factory=dict)
    training: dict[str, str] = field(default_factory=dict)

    @property
    def parts(self) -> list[str]:
        """The model parts with adapters, e.g. ``["unet", "text_encoder"]``."""
        return list(dict.fromkeys(k.split(".", 1)[0] for k in self.state_dict))

    def rank(self, part: str) -> int:
        """The configured rank ``r`` of ``part`` (or the largest in the file)."""
        if part in self.adapter_configs:
            return int(self.adapter_configs[part]["r"])
        return max(v.shape[0] for k, v in self.state_dict.items()
                   if k.startswith(f"{part}.") and k.endswith(DOWN_SUFFIXES))

    def alpha(self, part: str) -> float:
        """``lora_alpha`` of ``part``; the rank (strength 1) if not saved."""
        if part in self.adapter_configs:
            return float(self.adapter_configs[part]["lora_alpha"])
        return float(self.rank(part))


def read_lora_file(lora: str) -> LoRAFile:
    """Read a step folder or a diffusers-format ``.safetensors`` LoRA."""
    path = weights_path(lora)
    state_dict = {}
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            state_dict[key] = f.get_tensor(key)
    adapter_configs: dict[str, dict] = {}
    if ADAPTER_METADATA_KEY in metadata:
        for key, value in json.loads(metadata[ADAPTER_METADATA_KEY]).items():
            part, option = key.split(".", 1)
            adapter_configs.setdefault(part, {})[option] = value
    training = {
        k[len(TRAINING_METADATA_PREFIX):]: v for k, v in metadata.items()
        if k.startswith(TRAINING_METADATA_PREFIX)
    }
    return LoRAFile(path, state_dict, adapter_configs, training)


def add_training_metadata(path: str, training: dict[str, str]) -> None:
    """Add ``diffengine.<key>`` entries to the metadata of a LoRA file.

    The file is rewritten with the same tensors and its other metadata
    (diffusers' ``lora_adapter_metadata`` among them) kept.
    """
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    metadata.update({f"{TRAINING_METADATA_PREFIX}{k}": str(v)
                     for k, v in training.items()})
    save_file(tensors, path, metadata=metadata)


def base_model(lora: str, base: str | None = None) -> str:
    """``base`` if given, else the base model recorded in the LoRA file."""
    if base is not None:
        return base
    recorded = read_lora_file(lora).training.get("base_model")
    if recorded is None:
        raise ValueError(
            f"{lora!r} does not record its base model; pass --base.")
    return recorded
