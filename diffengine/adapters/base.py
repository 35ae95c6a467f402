"""What every adapter kind shares: checked options, injection, the strength
of each module, and the module's form in kohya/LyCORIS files.

A kind (one module each: ``lora.py``, ``dora.py``, ``loha.py``, ``lokr.py``)
subclasses :class:`AdapterKind`, names its peft config class and its
tensors, and converts one module between peft's tensors and the names
ComfyUI and AUTOMATIC1111 read (``lora_down.weight``, ``hada_w1_a``,
``lokr_w1``, ... and a scalar ``alpha``).
"""
from __future__ import annotations

import dataclasses
import difflib
import numbers
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from peft import PeftConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import get_pattern_key
from torch import nn

from diffengine.errors import ConfigError, did_you_mean

# The files of a step folder, one per loader (diffengine.adapters.formats
# writes and loads them): diffusers' ``load_lora_weights`` reads the first,
# LyCORIS' loaders (ComfyUI, AUTOMATIC1111) the second.
DIFFUSERS_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LYCORIS_WEIGHT_NAME = "lycoris_weights.safetensors"

# transformers 5.x ``CLIPTextModel`` names its layers without this level;
# every other stack (and kohya's names) has it.
TEXT_MODEL = "text_model."


class AdapterKind:
    """One kind of adapter; the registry holds one instance of each.

    Subclasses set the class attributes and implement the kohya
    conversions (:meth:`to_kohya`, :meth:`from_kohya`).

    Attributes:
        name (str): The config ``type`` and the name in logs.
        config_class (type[PeftConfig]): peft's config of the kind.
        peft_type (str): peft's name of it (``LORA``, ``LOHA``, ``LOKR``).
        alpha_option (str): The config field holding alpha.
        parameters (tuple[str, ...]): Names of one module's tensors in a
            peft state dict, after the module name (``lora_A.weight``).
        kohya_keys (tuple[str, ...]): Tensor names that mark a module of
            this kind in a kohya/LyCORIS file.
        weight_name (str): The step file that holds the kind
            (``DIFFUSERS_WEIGHT_NAME`` or ``LYCORIS_WEIGHT_NAME``).
        network_module (str): kohya's ``ss_network_module`` of its files.
        algo (str): LyCORIS' ``algo`` in ``ss_network_args``; empty for
            kohya's own LoRA.
        aliases (Mapping[str, str]): Other trainers' option names and the
            peft option each means; named in the error when used.
        synonyms (Mapping[str, str]): Options of other kinds taken as this
            kind's (``lora_alpha`` as LoHa's ``alpha``), so that a config
            which only switches ``type`` keeps its other keys.
        defaults (Mapping[str, Any]): Options set when the config does not.
    """

    name: ClassVar[str]
    config_class: ClassVar[type[PeftConfig]]
    peft_type: ClassVar[str]
    alpha_option: ClassVar[str]
    parameters: ClassVar[tuple[str, ...]]
    kohya_keys: ClassVar[tuple[str, ...]]
    weight_name: ClassVar[str]
    network_module: ClassVar[str] = "lycoris.kohya"
    algo: ClassVar[str] = ""
    aliases: ClassVar[Mapping[str, str]] = {}
    synonyms: ClassVar[Mapping[str, str]] = {}
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __repr__(self) -> str:
        return self.name

    # ---- configs -----------------------------------------------------
    def config_fields(self) -> set[str]:
        return {f.name for f in dataclasses.fields(self.config_class) if f.init}

    def options(self, cfg: Mapping, name: str) -> dict:
        """The keyword arguments of :attr:`config_class` that ``cfg`` gives.

        Raises:
            ConfigError: If an option is not a field of the peft config (the
                message suggests the right name) or ``target_modules`` is
                missing.
        """
        options = {k: v for k, v in cfg.items() if k != "type"}
        for synonym, option in self.synonyms.items():
            if synonym in options:
                if option in options:
                    raise ConfigError(
                        f"{name}.{synonym} and {name}.{option} are both set; "
                        f"{self.name} takes {option}: drop {synonym}.")
                options[option] = options.pop(synonym)
        fields = self.config_fields()
        for key in options:
            if key not in fields:
                fix = (f" Did you mean {self.aliases[key]!r}?"
                       if key in self.aliases else did_you_mean(key, fields))
                raise ConfigError(
                    f"{name}.{key} is not an option of peft's "
                    f"{self.config_class.__name__}.{fix}")
        if "target_modules" not in options:
            raise ConfigError(
                f"{name}.target_modules is required, e.g. "
                "['to_q', 'to_k', 'to_v', 'to_out.0'] for the UNet (add "
                "'conv1', 'conv2', 'conv_shortcut', 'proj_in', 'proj_out', "
                "'conv' for its convolutions) or ['q_proj', 'k_proj', "
                "'v_proj', 'out_proj'] for CLIP.")
        options = {**self.defaults, **options}
        check_values(options, name)
        try:  # what peft's own checks refuse, before any model is loaded
            self.config_class(**options)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"{name}: {err}") from err
        return options

    def build_config(self, cfg: Mapping, module: nn.Module,
                     name: str) -> PeftConfig:
        """The peft config of ``cfg``, checked against ``module``.

        Args:
            cfg (Mapping): ``type`` plus keyword arguments of the peft config
                (``r``, the alpha, ``target_modules``, ...).
            module (nn.Module): The module the adapter will be injected into.
            name (str): The config key, e.g. ``"unet_lora_config"``, named in
                errors.

        Raises:
            ConfigError: As :meth:`options`, or if an entry of
                ``target_modules`` matches no layer.
        """
        options = self.options(cfg, name)
        check_target_modules(options["target_modules"], module, name)
        return self.config_class(**options)

    def inject(self, module: nn.Module, cfg: Mapping, name: str) -> PeftConfig:
        """Inject a checked adapter into ``module``; its weights are fp32.

        The adapter trains in fp32 whatever the dtype of the frozen layers
        it wraps (peft casts the layer input to the adapter's dtype), so
        that small updates are not lost to rounding.

        Returns:
            PeftConfig: The config of the injected adapter.
        """
        config = self.build_config(cfg, module, name)
        inject_adapter_in_model(config, module)
        for param in module.parameters():
            if param.requires_grad:
                param.data = param.data.float()
        return config

    def matches(self, config: Mapping) -> bool:
        """Whether a saved peft config (``to_dict()``) is of this kind."""
        return config.get("peft_type") == self.peft_type

    def from_dict(self, config: Mapping, **overrides: Any) -> PeftConfig:
        """The peft config a saved one (``to_dict()``) describes."""
        fields = self.config_fields()
        return self.config_class(**{
            **{k: v for k, v in config.items() if k in fields}, **overrides})

    # ---- one module's strength ---------------------------------------
    def tensor_rank(self, tensors: Mapping[str, torch.Tensor]) -> int:
        """The rank a module's peft tensors show."""
        raise NotImplementedError

    def module_rank(self, config: Mapping | None, module: str,
                    tensors: Mapping[str, torch.Tensor]) -> int:
        """The rank of ``module``: from ``rank_pattern`` or ``r`` of the
        config, else from its tensors."""
        if config is None:
            return self.tensor_rank(tensors)
        return int(pattern_value(config.get("rank_pattern"), module,
                                 config["r"]))

    def module_scale(self, config: Mapping | None, module: str,
                     tensors: Mapping[str, torch.Tensor]) -> float:
        """The factor peft applies to the weight change of ``module``.

        Args:
            config (Mapping, optional): The part's saved peft config; None
                (no config saved) means strength 1, as diffusers loads it.
            module (str): The module's name in its part, e.g.
                ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``.
            tensors (Mapping[str, Tensor]): Its peft tensors.
        """
        if config is None:
            return 1.0
        rank = self.module_rank(config, module, tensors)
        alpha = pattern_value(config.get("alpha_pattern"), module,
                              config[self.alpha_option])
        return alpha / rank

    # ---- kohya / LyCORIS form ------------------------------------------
    def to_kohya(self, tensors: Mapping[str, torch.Tensor], scale: float,
                 rank: int, base_weight: torch.Tensor | None = None
                 ) -> dict[str, torch.Tensor]:
        """One module's tensors as the UIs name them, with its ``alpha``.

        Args:
            tensors (Mapping[str, Tensor]): The module's peft tensors.
            scale (float): :meth:`module_scale` of the module.
            rank (int): :meth:`module_rank` of the module.
            base_weight (Tensor, optional): The frozen weight the module
                adapts, for kinds whose file form depends on it.
        """
        raise NotImplementedError

    def from_kohya(self, tensors: Mapping[str, torch.Tensor],
                   scale: float) -> dict[str, torch.Tensor]:
        """Undo :meth:`to_kohya`: one module's peft tensors."""
        raise NotImplementedError(
            f"{self.name} step files are read by diffusers, not from kohya "
            "files.")

    def kohya_rank(self, tensors: Mapping[str, torch.Tensor]) -> int | None:
        """The rank a kohya module's tensors show, None where they are
        full matrices."""
        raise NotImplementedError

    def owns_kohya(self, names: Iterable[str]) -> bool:
        """Whether a kohya module with tensors ``names`` is of this kind."""
        return any(n in self.kohya_keys for n in names)

    def network_args(self, config: Mapping, has_conv: bool) -> dict[str, str]:
        """kohya's ``ss_network_args`` (LyCORIS' option names, as strings).

        Args:
            config (Mapping): The saved peft config.
            has_conv (bool): Whether convolutions are adapted.
        """
        args = {"algo": self.algo} if self.algo else {}
        if has_conv:
            args.update(conv_dim=str(config["r"]),
                        conv_alpha=_number(config[self.alpha_option]))
        return args


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


@dataclass
class AdapterPart:
    """The adapter of one model part (``unet``, ``text_encoder``, ...).

    Attributes:
        kind (AdapterKind): Its kind.
        config (dict): Its peft config as ``to_dict()`` gives it.
        state (dict[str, Tensor]): Its tensors with peft names,
            ``<module>.<parameter>``; text-encoder modules named
            ``text_model.encoder.layers.N...``.
    """

    kind: AdapterKind
    config: dict
    state: dict[str, torch.Tensor]

    def modules(self) -> dict[str, dict[str, torch.Tensor]]:
        """The tensors of each module: ``{module: {parameter: tensor}}``.

        Raises:
            ValueError: If a key ends in none of the kind's parameters.
        """
        modules: dict[str, dict[str, torch.Tensor]] = {}
        odd = []
        for key, value in self.state.items():
            parameter = next((p for p in self.kind.parameters
                              if key.endswith("." + p)), None)
            if parameter is None:
                odd.append(key)
                continue
            module = key[:-len(parameter) - 1]
            modules.setdefault(module, {})[parameter] = value
        if odd:
            raise ValueError(
                f"{len(odd)} tensors are not {self.kind.name} weights "
                f"({', '.join(self.kind.parameters)}), e.g. {odd[:3]}.")
        return modules


# Options peft or torch only refuse when the adapter is injected, after the
# model is loaded: each option's check and what it asks for.
OPTION_CHECKS = {
    "r": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
          "must be a positive integer, e.g. 8"),
    **{option: (lambda v: isinstance(v, numbers.Real) and 0 <= v < 1,
                "must be a probability in [0, 1)")
       for option in ("lora_dropout", "rank_dropout", "module_dropout")},
}


def check_values(options: Mapping, name: str) -> None:
    """Raise if an option of :data:`OPTION_CHECKS` has a value that fails.

    Raises:
        ConfigError: Naming the option, its value and what it must be.
    """
    for option, (valid, expected) in OPTION_CHECKS.items():
        if option in options and not valid(options[option]):
            raise ConfigError(
                f"{name}.{option}={options[option]!r}: {expected}.")


def pattern_value(patterns: Mapping | None, module: str, default: Any) -> Any:
    """The value of ``module`` in a peft ``rank_pattern`` / ``alpha_pattern``,
    matched as peft matches it, else ``default``.

    Text-encoder patterns match with and without ``text_model.`` (peft saw
    the names without it on transformers 5.x).
    """
    patterns = patterns or {}
    names = [module]
    if module.startswith(TEXT_MODEL):
        names.append(module[len(TEXT_MODEL):])
    for name in names:
        key = get_pattern_key(patterns.keys(), name)
        if key in patterns:
            return patterns[key]
    return default


# The layers peft's LoRA, LoHa and LoKr adapt; a target naming anything
# else (a block, a ModuleList) would stop peft with a traceback.
ADAPTABLE_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Embedding)


def check_target_modules(target_modules: str | Iterable[str],
                         module: nn.Module, name: str) -> None:
    """Raise if ``target_modules`` (or one entry of it) matches no layer,
    or matches a module that is not a layer peft adapts.

    peft matches a list entry against the end of a module name and a string
    as a regex against the whole name; an entry that matches nothing would
    otherwise be dropped silently.
    """
    modules = [(n, m) for n, m in module.named_modules() if n]
    names = [n for n, _ in modules]
    if isinstance(target_modules, str):
        entries = [(target_modules,
                    lambda n: re.fullmatch(target_modules, n) is not None)]
        label = f"{name}.target_modules={target_modules!r}"
    else:
        entries = [(target, lambda n, t=target: n == t or n.endswith("." + t))
                   for target in target_modules]
        label = None
    for target, matches in entries:
        matched = [(n, m) for n, m in modules if matches(n)]
        what = label or f"{name}.target_modules entry {target!r}"
        if not matched:
            leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
            hint = ([] if label else
                    difflib.get_close_matches(target, leaves, n=3))
            fix = f" Close names: {hint}." if hint else ""
            raise ConfigError(
                f"{what} matches no layer of {type(module).__name__}.{fix}")
        other = next(((n, m) for n, m in matched
                      if not isinstance(m, ADAPTABLE_LAYERS)), None)
        if other is not None:
            layers = sorted({n.rsplit(".", 1)[-1] for n, m in modules
                             if n.startswith(other[0] + ".")
                             and isinstance(m, ADAPTABLE_LAYERS)})
            raise ConfigError(
                f"{what} matches {other[0]}, a {type(other[1]).__name__}, "
                "not a Linear or Conv layer; name the layers inside it "
                f"instead, e.g. {layers[:4]}.")


def has_convolutions(training: Mapping[str, Any],
                     tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether an adapter file adapts convolutions: as its training metadata
    records (``adapted_convolutions``), else as its tensors show (4-D)."""
    recorded = training.get("adapted_convolutions")
    if recorded is not None:
        return int(recorded) > 0
    return any(v.ndim == 4 for v in tensors.values())


def adapted_convolutions(module: nn.Module) -> int:
    """How many convolutions of ``module`` carry an adapter; recorded in
    step files, whose flattened LoHa/LoKr factors do not show it."""
    return sum(isinstance(m, BaseTunerLayer)
               and isinstance(m.get_base_layer(), nn.Conv2d)
               for m in module.modules())


def count_trainable_parameters(module: nn.Module) -> int:
    """The number of parameters of ``module`` that require a gradient."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
