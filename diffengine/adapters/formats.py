"""The two forms of a step folder, and how each loads into a pipeline.

- ``pytorch_lora_weights.safetensors`` (LoRA, DoRA): peft's tensor names
  under the part (``unet.<module>.lora_A.weight``, ``.lora_B.weight``,
  ``.lora_magnitude_vector``) and the peft configs under
  ``lora_adapter_metadata``, as diffusers' ``save_lora_weights`` writes
  them; ``load_lora_weights`` reads it, convolutions and DoRA included.
  peft's names throughout, rather than diffusers' older ``lora.down``:
  diffusers converts a part's names only when its first key is not in
  peft's form, so a file mixing both (attention in the old form,
  convolutions in peft's) loses half its layers.
- ``lycoris_weights.safetensors`` (LoHa, LoKr, which ``load_lora_weights``
  does not read): the LyCORIS single file that ComfyUI and AUTOMATIC1111
  load as it is (``lora_unet_<module>.hada_w1_a`` ..., a scalar ``.alpha``
  per module), with the peft configs under the same metadata key, from
  which :meth:`LycorisFile.load` injects the same adapters and loads the
  file back exactly.

Both carry the training facts under ``diffengine.*`` metadata keys, which
the loaders ignore and ``export_lora`` reads.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

import torch
from diffusers import DiffusionPipeline
from peft import inject_adapter_in_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import save_file
from torch import nn

from diffengine.adapter_file import (
    ADAPTER_METADATA_KEY,
    TRAINING_METADATA_PREFIX,
    AdapterFile,
    add_training_metadata,
    pack_adapter_configs,
)
from diffengine.adapters.base import (
    DIFFUSERS_WEIGHT_NAME,
    LYCORIS_WEIGHT_NAME,
    AdapterKind,
    AdapterPart,
    has_convolutions,
)
from diffengine.adapters.kohya import (
    canonical_name,
    is_text_encoder,
    kohya_modules,
    kohya_names,
    kohya_state_dict,
)
from diffengine.errors import ConfigError

# The name adapters get when loaded into a pipeline.
ADAPTER_NAME = "lora"
# DoRA's magnitude in a peft state dict.
MAGNITUDE = "lora_magnitude_vector"


def adapted_modules(pipe: DiffusionPipeline) -> dict[str, nn.Module]:
    """The pipeline's model components (``unet``, ``text_encoder``, ...)."""
    return {name: component for name, component in pipe.components.items()
            if isinstance(component, nn.Module)}


class StepFormat:
    """How a step folder holds adapters, and how a pipeline loads them.

    Attributes:
        weight_name (str): The file of the step folder.
    """

    weight_name: str

    def write(self, directory: str, parts: Mapping[str, AdapterPart],
              pipeline_class: type[DiffusionPipeline],
              prefixes: Mapping[str, str],
              training: Mapping[str, str]) -> None:
        """Write the step file of ``parts`` into ``directory``.

        Args:
            directory (str): The step folder.
            parts (Mapping[str, AdapterPart]): The adapter of each part.
            pipeline_class (type[DiffusionPipeline]): The family's pipeline.
            prefixes (Mapping[str, str]): The family's kohya prefixes.
            training (Mapping[str, str]): ``diffengine.*`` metadata, keys
                without the prefix.
        """
        raise NotImplementedError

    def load(self, pipe: DiffusionPipeline, lora: AdapterFile,
             prefixes: Mapping[str, str], scale: float) -> None:
        """Add the adapters of ``lora`` to ``pipe`` at strength ``scale``."""
        raise NotImplementedError

    def fuse(self, pipe: DiffusionPipeline) -> None:
        """Merge the loaded adapters into the weights and drop them."""
        raise NotImplementedError


class DiffusersFile(StepFormat):
    """``pytorch_lora_weights.safetensors``, read by ``load_lora_weights``."""

    weight_name = DIFFUSERS_WEIGHT_NAME

    def write(self, directory, parts, pipeline_class, prefixes, training):
        kwargs = {}
        for part, adapter in parts.items():
            state = adapter.state
            if is_text_encoder(part):
                # transformers 5.x inserts the adapter name before the last
                # dot of a text-encoder key; peft's bare name would leave
                # the magnitudes unloaded.
                state = {f"{k}.weight" if k.endswith(MAGNITUDE) else k: v
                         for k, v in state.items()}
            kwargs[f"{part}_lora_layers"] = state
            kwargs[f"{part}_lora_adapter_metadata"] = adapter.config
        pipeline_class.save_lora_weights(directory, safe_serialization=True,
                                         **kwargs)
        add_training_metadata(os.path.join(directory, self.weight_name),
                              training)

    def load(self, pipe, lora, prefixes, scale):
        if any(k.endswith(".dora_scale") for k in lora.state_dict):
            raise ValueError(
                f"{lora.path} is a kohya DoRA file, whose dora_scale "
                "diffusers drops; load its step folder instead.")
        pipe.load_lora_weights(lora.path, adapter_name=ADAPTER_NAME)
        pipe.set_adapters([ADAPTER_NAME], adapter_weights=[scale])

    def fuse(self, pipe):
        # every part that can hold one: FluxPipeline fuses the transformer
        # alone unless told
        pipe.fuse_lora(components=list(pipe._lora_loadable_modules),
                       adapter_names=[ADAPTER_NAME])
        # Drop the adapter layers; the fused weights stay.
        pipe.unload_lora_weights()


class LycorisFile(StepFormat):
    """``lycoris_weights.safetensors``: the LyCORIS file the UIs load, which
    this project loads with the peft configs it carries."""

    weight_name = LYCORIS_WEIGHT_NAME

    def write(self, directory, parts, pipeline_class, prefixes, training):
        tensors = kohya_state_dict(parts, prefixes)
        kinds = {adapter.kind for adapter in parts.values()}
        first = next(iter(parts.values()))
        has_conv = has_convolutions(training, tensors)
        metadata = {
            "format": "pt",
            ADAPTER_METADATA_KEY: pack_adapter_configs(
                {part: adapter.config for part, adapter in parts.items()}),
            # kohya's keys for the network, as LyCORIS' trainers write them
            "ss_network_module": first.kind.network_module,
            "ss_network_args": json.dumps(
                first.kind.network_args(first.config, has_conv)),
            **{f"{TRAINING_METADATA_PREFIX}{k}": str(v)
               for k, v in training.items()},
        }
        if len(kinds) > 1:
            metadata[f"{TRAINING_METADATA_PREFIX}kinds"] = ", ".join(
                f"{part} {adapter.kind.name}"
                for part, adapter in parts.items())
        os.makedirs(directory, exist_ok=True)
        save_file(tensors, os.path.join(directory, self.weight_name),
                  metadata=metadata)

    def load(self, pipe, lora, prefixes, scale):
        if not lora.adapter_configs:
            raise ValueError(
                f"{lora.path} holds no peft configs ({ADAPTER_METADATA_KEY}); "
                "only LyCORIS files that diffengine wrote load here.")
        components = adapted_modules(pipe)
        names: dict[str, tuple[str, str]] = {}
        for part, config in lora.adapter_configs.items():
            if part not in components:
                raise ValueError(
                    f"{lora.path} adapts {part!r}, which "
                    f"{type(pipe).__name__} lacks.")
            # named before the injection adds the adapters' own submodules
            for kohya, module in kohya_names(part, components[part],
                                             prefixes[part]).items():
                names[kohya] = (part, module)
            peft_config = lora.kind(part).from_dict(config,
                                                    inference_mode=True)
            inject_adapter_in_model(peft_config, components[part],
                                    adapter_name=ADAPTER_NAME)
        states: dict[str, dict[str, torch.Tensor]] = {p: {} for p in
                                                      lora.adapter_configs}
        for kohya, tensors in kohya_modules(lora.state_dict).items():
            if kohya not in names:
                raise ValueError(
                    f"{lora.path}: {kohya!r} names no module of the base "
                    f"model's {sorted(lora.adapter_configs)}.")
            part, module = names[kohya]
            kind = lora.kind(part)
            config = lora.adapter_configs[part]
            scale_of_module = kind.module_scale(
                config, canonical_name(part, module), tensors)
            for key, value in kind.from_kohya(tensors,
                                              scale_of_module).items():
                states[part][f"{module}.{key}"] = value
        for part, state in states.items():
            result = set_peft_model_state_dict(components[part], state,
                                               adapter_name=ADAPTER_NAME)
            missing = [k for k in result.missing_keys
                       if f".{ADAPTER_NAME}" in k]
            if result.unexpected_keys or missing:
                raise ValueError(
                    f"{lora.path} does not match its {part} config: "
                    f"{len(missing)} tensors missing (e.g. {missing[:2]}), "
                    f"{len(result.unexpected_keys)} unexpected (e.g. "
                    f"{result.unexpected_keys[:2]}).")
            for layer in components[part].modules():
                if isinstance(layer, BaseTunerLayer):
                    layer.scale_layer(scale)

    def fuse(self, pipe):
        for module in adapted_modules(pipe).values():
            merge_and_unload(module)


def merge_and_unload(module: nn.Module) -> None:
    """Merge every peft layer of ``module`` into its base layer, in place,
    and put the base layer back where the peft layer was."""
    layers = [(name, layer) for name, layer in module.named_modules()
              if isinstance(layer, BaseTunerLayer)]
    for name, layer in layers:
        layer.merge()
        parent, _, child = name.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        setattr(owner, child, layer.get_base_layer())
    if hasattr(module, "peft_config"):
        del module.peft_config


DIFFUSERS_FILE = DiffusersFile()
LYCORIS_FILE = LycorisFile()
# Every step-file form, in the order a step folder is searched.
STEP_FORMATS = (DIFFUSERS_FILE, LYCORIS_FILE)
FORMATS_BY_WEIGHT_NAME = {f.weight_name: f for f in STEP_FORMATS}


def step_format_of(kinds: Iterable[AdapterKind]) -> StepFormat:
    """The step-file form that holds ``kinds``.

    Raises:
        ConfigError: If they need different forms (LoRA or DoRA, which
            diffusers reads, beside LoHa or LoKr).
    """
    kinds = list(kinds)
    names = {kind.weight_name for kind in kinds}
    if len(names) > 1:
        raise ConfigError(
            f"the adapters {[k.name for k in kinds]} need different step "
            f"files ({', '.join(sorted(names))}); pair LoRA or DoRA with "
            "LoRA or DoRA, LoHa or LoKr with LoHa or LoKr.")
    return FORMATS_BY_WEIGHT_NAME[names.pop()]


def file_format(lora: AdapterFile) -> StepFormat:
    """The step-file form whose loader reads ``lora`` (see
    :attr:`AdapterFile.weight_name`)."""
    return FORMATS_BY_WEIGHT_NAME[lora.weight_name]
