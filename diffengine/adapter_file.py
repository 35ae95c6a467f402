"""The adapter files diffengine writes (``step{N}/`` folders), as a record.

:class:`AdapterFile` holds the weights and metadata of one file of any
adapter kind; :mod:`diffengine.adapters.formats` writes them and loads them
into pipelines. A step folder holds one file:
``pytorch_lora_weights.safetensors`` for LoRA and DoRA, as diffusers'
``save_lora_weights`` writes it (keys ``unet.<module>.lora_A.weight``;
folders from earlier versions have diffusers' ``lora.down.weight`` /
``lora_linear_layer.down.weight``), or ``lycoris_weights.safetensors`` for
LoHa and LoKr, LyCORIS' single file (``lora_unet_<module>.hada_w1_a``, ...).
Both keep the peft config of each part under ``lora_adapter_metadata`` and
the ``diffengine.*`` training metadata that ``LoRACheckpointHook`` adds.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from diffengine.adapters.base import (
    DIFFUSERS_WEIGHT_NAME,
    LYCORIS_WEIGHT_NAME,
    AdapterKind,
)
from diffengine.adapters.kinds import (
    kind_of_config,
    kind_of_kohya,
    kind_of_tensors,
)
from diffengine.adapters.kohya import kohya_modules
from diffengine.errors import ConfigError, MissingFileError

__all__ = ["ADAPTER_METADATA_KEY", "DOWN_SUFFIXES", "TRAINING_METADATA_PREFIX",
           "WEIGHT_NAMES", "AdapterFile", "add_training_metadata",
           "base_model", "pack_adapter_configs", "read_adapter_file",
           "unpack_adapter_configs", "weights_path"]

# Where diffusers keeps the adapter configs in a file's metadata.
ADAPTER_METADATA_KEY = "lora_adapter_metadata"
# Prefix of the training metadata (base model, step, dataset, config).
TRAINING_METADATA_PREFIX = "diffengine."
# The files a step folder may hold, in the order it is searched.
WEIGHT_NAMES = (DIFFUSERS_WEIGHT_NAME, LYCORIS_WEIGHT_NAME)

# Ends of the down-projection keys, one per module: diffusers' own names
# (``lora.down``, ``lora_linear_layer.down``), kohya's (``lora_down``) and
# peft's (``lora_A``).
DOWN_SUFFIXES = ("down.weight", "lora_A.weight")


def pack_adapter_configs(configs: Mapping[str, Mapping]) -> str:
    """``{part: config}`` as diffusers writes it: JSON of ``part.option``."""
    return json.dumps({f"{part}.{option}": value
                       for part, config in configs.items()
                       for option, value in config.items()},
                      indent=2, sort_keys=True)


def unpack_adapter_configs(text: str) -> dict[str, dict]:
    """Undo :func:`pack_adapter_configs`."""
    configs: dict[str, dict] = {}
    for key, value in json.loads(text).items():
        part, option = key.split(".", 1)
        configs.setdefault(part, {})[option] = value
    return configs


def add_training_metadata(path: str, training: Mapping[str, str]) -> None:
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


def weights_path(lora: str) -> str:
    """The ``.safetensors`` file of a step folder, or ``lora`` if a file."""
    if os.path.isdir(lora):
        for weight_name in WEIGHT_NAMES:
            path = os.path.join(lora, weight_name)
            if os.path.isfile(path):
                return path
        names = " or ".join(WEIGHT_NAMES)
        raise MissingFileError(
            f"{lora!r} holds no {names}; give a step folder "
            "(work_dirs/<config>/step<N>) or a .safetensors file.")
    if not os.path.isfile(lora):
        raise MissingFileError(f"LoRA {lora!r} does not exist.")
    return lora


@dataclass
class AdapterFile:
    """The weights and metadata of an adapter file of any kind (LoRA, DoRA,
    LoHa, LoKr).

    Attributes:
        path (str): The ``.safetensors`` file.
        state_dict (dict[str, Tensor]): Weights, keys as saved.
        adapter_configs (dict[str, dict]): peft config fields per part
            (``"unet"``, ``"text_encoder"``); empty when the file has none.
        training (dict[str, str]): ``diffengine.*`` metadata, prefix dropped
            (``base_model``, ``step``, ``resolution``, ``dataset``, ...).
    """

    path: str
    state_dict: dict[str, torch.Tensor]
    adapter_configs: dict[str, dict] = field(default_factory=dict)
    training: dict[str, str] = field(default_factory=dict)

    @property
    def is_kohya(self) -> bool:
        """Whether keys are kohya names (``lora_unet_...``), not parts."""
        return bool(self.state_dict) and all(
            k.startswith("lora_") for k in self.state_dict)

    @property
    def weight_name(self) -> str:
        """The step file whose loader reads this one: diffusers' (LoRA and
        DoRA files, kohya LoRA files) or the LyCORIS one (LoHa, LoKr)."""
        if self.is_kohya and any(
                kind_of_kohya(tensors).weight_name == LYCORIS_WEIGHT_NAME
                for tensors in kohya_modules(self.state_dict).values()):
            return LYCORIS_WEIGHT_NAME
        return DIFFUSERS_WEIGHT_NAME

    @property
    def parts(self) -> list[str]:
        """The model parts with adapters, e.g. ``["unet", "text_encoder"]``."""
        if self.is_kohya:
            return list(self.adapter_configs)
        return list(dict.fromkeys(k.split(".", 1)[0] for k in self.state_dict))

    def kind(self, part: str) -> AdapterKind:
        """The adapter kind of ``part``: from its config, else its keys."""
        if part in self.adapter_configs:
            return kind_of_config(self.adapter_configs[part])
        return kind_of_tensors(k for k in self.state_dict
                               if k.startswith(f"{part}."))

    def rank(self, part: str) -> int:
        """The configured rank ``r`` of ``part`` (or the largest in the file)."""
        if part in self.adapter_configs:
            return int(self.adapter_configs[part]["r"])
        return max(v.shape[0] for k, v in self.state_dict.items()
                   if k.startswith(f"{part}.") and k.endswith(DOWN_SUFFIXES))

    def alpha(self, part: str) -> float:
        """The configured alpha of ``part``; the rank (strength 1) if not
        saved."""
        if part in self.adapter_configs:
            config = self.adapter_configs[part]
            return float(config[self.kind(part).alpha_option])
        return float(self.rank(part))


def read_adapter_file(lora: str) -> AdapterFile:
    """Read a step folder or an adapter ``.safetensors`` file."""
    path = weights_path(lora)
    state_dict = {}
    with safe_open(path, framework="pt") as f:
        metadata = f.metadata() or {}
        for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            state_dict[key] = f.get_tensor(key)
    adapter_configs: dict[str, dict] = {}
    if ADAPTER_METADATA_KEY in metadata:
        adapter_configs = unpack_adapter_configs(metadata[ADAPTER_METADATA_KEY])
    training = {
        k[len(TRAINING_METADATA_PREFIX):]: v for k, v in metadata.items()
        if k.startswith(TRAINING_METADATA_PREFIX)
    }
    return AdapterFile(path, state_dict, adapter_configs, training)


def base_model(lora: str, base: str | None = None) -> str:
    """``base`` if given, else the base model recorded in the LoRA file."""
    if base is not None:
        return base
    recorded = read_adapter_file(lora).training.get("base_model")
    if recorded is None:
        raise ConfigError(
            f"{lora!r} does not record its base model; pass --base.")
    return recorded
