"""The trained adapters of a model as files: what a step folder holds.

A model whose frozen base carries adapters (:mod:`diffengine.adapters`)
mixes in :class:`AdapterIO`: its ``state_dict`` is the trainable weights
only, each adapted part's weights come out in peft's names, and
:meth:`AdapterIO.save_adapter_weights` writes the step file that diffusers'
``load_lora_weights`` (LoRA, DoRA) or the LyCORIS loaders (LoHa, LoKr) read,
with the adapter configs and the training facts in its metadata.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from diffusers import DiffusionPipeline
from peft import PeftConfig, get_peft_model_state_dict

from diffengine.adapters import (
    AdapterKind,
    AdapterPart,
    adapted_convolutions,
    adapter_kind,
    count_trainable_parameters,
)
from diffengine.adapters.formats import StepFormat, step_format_of
from diffengine.adapters.kohya import canonical_text_encoder_keys, is_text_encoder
from diffengine.architectures import ARCHITECTURES


class AdapterIO:
    """Adapters on the parts of a ``torch.nn.Module`` and their files.

    The host sets :attr:`base_model`, :attr:`architecture`,
    :attr:`pipeline_class` and :attr:`prediction_type` (all recorded in the
    step file), calls :meth:`check_adapters` before its base loads and
    :meth:`add_adapters` once its parts are frozen.

    Attributes:
        adapter_configs (dict[str, PeftConfig]): The injected config of
            each adapted part, in the order the parts were given.
        adapter_kinds (dict[str, AdapterKind]): The kind of each part.
        step_format (StepFormat): The step file that holds them all.
    """

    base_model: str
    architecture: str
    pipeline_class: type[DiffusionPipeline]
    prediction_type: str

    def check_adapters(self, options: Mapping[str, tuple[dict | None, str]]
                       ) -> None:
        """Check the adapter config of each part before anything loads.

        Args:
            options (Mapping[str, tuple[dict | None, str]]): For each part
                (``"unet"``, ``"text_encoder"``, ...), its config (None
                leaves it frozen) and the option that set it, named in
                errors.

        Raises:
            ConfigError: For an unknown kind or option, or kinds that need
                different step files.
        """
        self.adapter_configs: dict[str, PeftConfig] = {}
        self.adapter_kinds: dict[str, AdapterKind] = {}
        self._adapter_options = {part: option for part, option in
                                 options.items() if option[0] is not None}
        for part, (cfg, key) in self._adapter_options.items():
            self.adapter_kinds[part] = adapter_kind(cfg, key)
            # checked before the model loads, so a typo fails at once
            self.adapter_kinds[part].options(cfg, key)
        # one step file holds every part: refuse a mix before any injection
        self.step_format: StepFormat = step_format_of(
            self.adapter_kinds.values())

    def add_adapters(self) -> None:
        """Inject the adapters :meth:`check_adapters` checked into their
        parts (attributes of the host)."""
        for part, (cfg, key) in self._adapter_options.items():
            self.adapter_configs[part] = self.adapter_kinds[part].inject(
                getattr(self, part), cfg, key)

    @property
    def lora_configs(self) -> dict[str, PeftConfig]:
        """:attr:`adapter_configs`, by the name it had when only LoRA
        trained (deprecated: it holds LoHa and LoKr configs too)."""
        warnings.warn("lora_configs is now adapter_configs",
                      DeprecationWarning, stacklevel=2)
        return self.adapter_configs

    @property
    def trainable_parts(self) -> list[str]:
        """Names of the submodules that carry trained adapters."""
        return list(self.adapter_configs)

    def trainable_parameter_counts(self) -> dict[str, int]:
        """Trainable parameters of each adapted part, e.g. ``{"unet": n}``."""
        return {part: count_trainable_parameters(getattr(self, part))
                for part in self.adapter_configs}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict:
        """Only the trainable adapter weights: the frozen base is not saved."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", "")
        trainable = {prefix + n for n, p in self.named_parameters()
                     if p.requires_grad}
        return type(state)((k, v) for k, v in state.items() if k in trainable)

    @contextlib.contextmanager
    def trainable_weights(self, state_dict: dict[str, torch.Tensor]
                          ) -> Iterator[None]:
        """Hold ``state_dict`` (as :meth:`state_dict` gives) in the adapters
        inside the block, and the current weights again after it."""
        current = {k: v.detach().clone() for k, v in self.state_dict().items()}
        self.load_state_dict(state_dict, strict=False)
        try:
            yield
        finally:
            self.load_state_dict(current, strict=False)

    def adapter_state_dicts(
            self, state_dict: dict[str, torch.Tensor] | None = None
    ) -> dict[str, dict[str, torch.Tensor]]:
        """The adapters of each trained part with peft's names
        (``<module>.lora_A.weight``, ``<module>.hada_w1_a``, ...), text-encoder
        modules named ``text_model.encoder.layers.N...``.

        Args:
            state_dict (dict, optional): Trainable weights as
                :meth:`state_dict` gives them (e.g. a checkpoint's, which a
                hook such as EMA may have changed). Defaults to the model's
                own.
        """
        state_dict = self.state_dict() if state_dict is None else state_dict
        state_dicts = {}
        for part in self.adapter_configs:
            prefix = f"{part}."
            part_state = {k[len(prefix):]: v for k, v in state_dict.items()
                          if k.startswith(prefix)}
            state = get_peft_model_state_dict(getattr(self, part),
                                              state_dict=part_state)
            if is_text_encoder(part):
                state = canonical_text_encoder_keys(state)
            state_dicts[part] = {
                k: v.detach().float().cpu().contiguous()
                for k, v in state.items()
            }
        return state_dicts

    def lora_state_dicts(
            self, state_dict: dict[str, torch.Tensor] | None = None
    ) -> dict[str, dict[str, torch.Tensor]]:
        """:meth:`adapter_state_dicts`, by the name it had when only LoRA
        trained (deprecated: it holds LoHa and LoKr weights too)."""
        warnings.warn("lora_state_dicts() is now adapter_state_dicts()",
                      DeprecationWarning, stacklevel=2)
        return self.adapter_state_dicts(state_dict)

    def adapter_metadata(self, part: str) -> dict:
        """The peft config of ``part`` as a dict, with sets sorted so that
        the same weights always give the same file."""
        return {
            k: sorted(v) if isinstance(v, (set, frozenset)) else v
            for k, v in self.adapter_configs[part].to_dict().items()
        }

    def save_adapter_weights(self, save_directory: str,
                             metadata: dict[str, str] | None = None,
                             state_dict: dict[str, torch.Tensor] | None = None
                             ) -> None:
        """Write the step file: ``pytorch_lora_weights.safetensors`` for
        ``load_lora_weights`` (LoRA, DoRA) or the LyCORIS file
        ``lycoris_weights.safetensors`` (LoHa, LoKr).

        The adapter configs go into the file's metadata, so that the alpha
        (and with it the strength) survives the round trip; so do the base
        model, the architecture, the prediction type and ``metadata``,
        under ``diffengine.*`` keys that the loaders ignore and
        ``export_lora`` reads.

        Args:
            save_directory (str): The step folder.
            metadata (dict[str, str], optional): More training facts (step,
                dataset, ...), keys without the ``diffengine.`` prefix.
            state_dict (dict, optional): The trainable weights to write, as
                :meth:`state_dict` gives them. Defaults to the model's own.
        """
        parts = {
            part: AdapterPart(self.adapter_kinds[part],
                              self.adapter_metadata(part), state)
            for part, state in self.adapter_state_dicts(state_dict).items()
        }
        training = {"base_model": self.base_model,
                    "architecture": self.architecture,
                    "prediction_type": self.prediction_type,
                    "adapted_convolutions": sum(
                        adapted_convolutions(getattr(self, part))
                        for part in parts),
                    **({} if self.quantization is None else {
                        "quantization": self.quantization.describe()}),
                    **self.training_metadata(),
                    **(metadata or {})}
        self.step_format.write(
            save_directory, parts, self.pipeline_class,
            ARCHITECTURES[self.architecture].kohya_prefixes, training)

    # the name the checkpoint hook and the tools call it by
    save_lora_weights = save_adapter_weights

    def training_metadata(self) -> dict[str, str]:
        """What a family adds to every step file's ``diffengine.*``
        metadata (Flux: the guidance it trained with)."""
        return {}
