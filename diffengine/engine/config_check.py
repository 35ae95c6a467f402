"""Checks of a training config that run before the model loads.

mmengine builds the optimizer, the data loaders, the hooks and the loops
only when training starts, after loading the model (minutes for SD 1.5);
a typo in one of them would then surface as a ``KeyError``, a ``TypeError``
or a ``ValueError`` from torch. :func:`check_config` finds those mistakes
first and names each by its config key.
"""
from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from mmengine.registry import Registry
from torch.utils.data import DataLoader

from diffengine.adapters import adapter_kind
from diffengine.engine.sharding import WRAPPER, FullyShardWrapper
from diffengine.errors import ConfigError, did_you_mean
from diffengine.registry import (
    DATA_SAMPLERS,
    DATASETS,
    HOOKS,
    LOG_PROCESSORS,
    LOOPS,
    METRICS,
    MODELS,
    OPTIM_WRAPPERS,
    OPTIMIZERS,
    PARAM_SCHEDULERS,
    TRANSFORMS,
    VISBACKENDS,
    VISUALIZERS,
    check_type,
)

DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")
# Keys of a data loader config that mmengine takes itself; the others are
# keyword arguments of torch's DataLoader.
MMENGINE_DATALOADER_KEYS = {"dataset", "sampler", "batch_sampler",
                            "collate_fn", "worker_init_fn",
                            "num_batch_per_epoch"}


def _items(value: Any, key: str) -> Iterator[tuple[Any, str]]:
    """``value`` with its key, or each element of a list with its index."""
    if isinstance(value, (list, tuple)):
        for idx, item in enumerate(value):
            yield item, f"{key}.{idx}"
    elif value is not None:
        yield value, key


def train_loop(train_cfg: Any) -> Any:
    """``train_cfg`` with the ``type`` that ``DiffEngineRunner`` gives a
    config without one: the resumable loop of its ``by_epoch``."""
    if not isinstance(train_cfg, Mapping) or "type" in train_cfg:
        return train_cfg
    by_epoch = train_cfg.get("by_epoch", True)
    return {**train_cfg, "type": "ResumableEpochTrainLoop"
            if by_epoch else "ResumableIterTrainLoop"}


def typed_sections(cfg: Mapping) -> Iterator[tuple[Any, Registry, str]]:
    """Every part of a runner config that is built from a registry: the
    part, its registry and its config key."""
    yield cfg.get("model"), MODELS, "model"
    for name in DATALOADERS:
        loader = cfg.get(name)
        if not isinstance(loader, Mapping):
            continue
        dataset = loader.get("dataset")
        yield dataset, DATASETS, f"{name}.dataset"
        if isinstance(dataset, Mapping):
            for transform, key in _items(dataset.get("pipeline"),
                                         f"{name}.dataset.pipeline"):
                yield transform, TRANSFORMS, key
        for sampler in ("sampler", "batch_sampler"):
            yield loader.get(sampler), DATA_SAMPLERS, f"{name}.{sampler}"
    optim_wrapper = cfg.get("optim_wrapper")
    yield optim_wrapper, OPTIM_WRAPPERS, "optim_wrapper"
    if isinstance(optim_wrapper, Mapping):
        yield (optim_wrapper.get("optimizer"), OPTIMIZERS,
               "optim_wrapper.optimizer")
    for item, key in _items(cfg.get("param_scheduler"), "param_scheduler"):
        yield item, PARAM_SCHEDULERS, key
    yield train_loop(cfg.get("train_cfg")), LOOPS, "train_cfg"
    for name in ("val_cfg", "test_cfg"):
        yield cfg.get(name), LOOPS, name
    for item, key in _items(cfg.get("val_evaluator"), "val_evaluator"):
        yield item, METRICS, key
    default_hooks = cfg.get("default_hooks") or {}
    for name, hook in default_hooks.items():
        yield hook, HOOKS, f"default_hooks.{name}"
    for item, key in _items(cfg.get("custom_hooks"), "custom_hooks"):
        yield item, HOOKS, key
    visualizer = cfg.get("visualizer")
    yield visualizer, VISUALIZERS, "visualizer"
    if isinstance(visualizer, Mapping):
        for item, key in _items(visualizer.get("vis_backends"),
                                "visualizer.vis_backends"):
            yield item, VISBACKENDS, key
    yield cfg.get("log_processor"), LOG_PROCESSORS, "log_processor"


# Parts whose config keys go to the class as they are, but for
# MMENGINE_KEYS; elsewhere mmengine adds or removes keys.
OPTION_CHECKED = {"model", "dataset", "transform", "data sampler", "hook",
                  "metric", "loop"}
# Keys mmengine takes from a part's config before building it (a hook's
# priority, a train loop's by_epoch).
MMENGINE_KEYS = {"type", "_scope_", "priority", "by_epoch"}


def check_options(cfg: Any, registry: Registry, key: str) -> None:
    """Raise if ``cfg`` has a key that its class does not take.

    A class whose chain of ``**kwargs`` ends in one that takes any key
    passes.

    Raises:
        ConfigError: Naming ``key.option``, the class and the closest option.
    """
    if not (registry.name in OPTION_CHECKED and isinstance(cfg, Mapping)
            and isinstance(cfg.get("type"), str)):
        return
    part = registry.get(cfg["type"])
    accepted = accepted_options(part) if isinstance(part, type) else None
    if accepted is None:
        return
    for option in sorted(set(cfg) - MMENGINE_KEYS - accepted):
        raise ConfigError(
            f"{key}.{option} is not an option of {cfg['type']}."
            f"{did_you_mean(option, accepted)}")


def accepted_options(cls: type) -> set[str] | None:
    """The keyword arguments ``cls`` takes, following ``**kwargs`` up the
    classes it inherits from (which it passes them on to); None when the
    last ``__init__`` reached still takes ``**kwargs``."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(vars(klass)["__init__"]).parameters
        names.update(n for n, p in parameters.items() if n != "self" and
                     p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            return names
    return None


def check_adapters(model: Any) -> None:
    """Check the adapter options of a model config, as the model does when
    it is built, but before its base loads.

    Every ``*_lora_config`` is checked: the denoiser's (``unet_lora_config``
    or ``transformer_lora_config``, as the family names it) and
    ``text_encoder_lora_config``.

    Raises:
        ConfigError: Naming ``model.<part>_lora_config.<option>``.
    """
    if not isinstance(model, Mapping):
        return
    for option in sorted(o for o in model if str(o).endswith("_lora_config")):
        if isinstance(model.get(option), Mapping):
            name = f"model.{option}"
            adapter_kind(model[option], name).options(model[option], name)


def check_dataloader(loader: Any, key: str) -> None:
    """Raise on a data loader option that torch's DataLoader would refuse.

    Raises:
        ConfigError: For an unknown option (with the closest one), or a
            ``batch_size`` or ``num_workers`` that cannot work.
    """
    if not isinstance(loader, Mapping):
        return
    accepted = set(inspect.signature(DataLoader).parameters)
    accepted |= MMENGINE_DATALOADER_KEYS
    for option in loader:
        if option not in accepted:
            raise ConfigError(
                f"{key}.{option}: unknown option of a data loader."
                f"{did_you_mean(option, accepted)}")
    batch_size = loader.get("batch_size", 1)
    if batch_size is not None and not (
            isinstance(batch_size, int) and batch_size > 0):
        raise ConfigError(
            f"{key}.batch_size={batch_size!r}: must be a positive integer.")
    workers = loader.get("num_workers", 0)
    if not (isinstance(workers, int) and workers >= 0):
        raise ConfigError(
            f"{key}.num_workers={workers!r}: must be 0 (load in the "
            "training process) or a positive integer.")


def check_optimizer(optimizer: Any, key: str = "optim_wrapper.optimizer"
                    ) -> None:
    """Build the optimizer of ``optimizer`` on one dummy parameter, so that
    torch's own checks (a negative ``lr``, betas outside [0, 1)) run now.

    Raises:
        ConfigError: For an unknown option (with the closest one), or naming
            the option torch refused and torch's reason.
    """
    if not (isinstance(optimizer, Mapping)
            and isinstance(optimizer.get("type"), str)):
        return
    optimizer_class = OPTIMIZERS.get(optimizer["type"])
    options = {k: v for k, v in optimizer.items() if k != "type"}
    accepted = [p for p in inspect.signature(optimizer_class).parameters
                if p != "params"]
    for option in options:
        if option not in accepted:
            raise ConfigError(
                f"{key}.{option} is not an option of {optimizer['type']}."
                f"{did_you_mean(option, accepted)}")

    def refusal(**kwargs: Any) -> Exception | None:
        try:
            optimizer_class([torch.zeros(1, requires_grad=True)], **kwargs)
        except (TypeError, ValueError) as err:
            return err
        return None

    err = refusal(**options)
    if err is None:
        return
    # torch's message does not name the option: the first that fails alone
    culprit = next((k for k in options if refusal(**{k: options[k]})), None)
    where = f"{key}.{culprit}={options[culprit]!r}" if culprit else key
    raise ConfigError(f"{where}: {err}") from err


def check_dropped_text_encoders(cfg: Mapping) -> None:
    """Refuse a validation loss beside ``drop_text_encoders_after_caching``,
    which frees the text encoders once the training captions are cached:
    the validation captions would find no encoder."""
    model = cfg.get("model")
    if not (isinstance(model, Mapping)
            and model.get("drop_text_encoders_after_caching")):
        return
    if cfg.get("val_dataloader") is not None and cfg.get("val_cfg"):
        raise ConfigError(
            "model.drop_text_encoders_after_caching=True frees the text "
            "encoders before the first step, but val_cfg computes a "
            "validation loss, whose captions need them: set "
            "val_dataloader=None val_cfg=None val_evaluator=None, or drop "
            "the option.")


# Why each part is refused under FullyShardWrapper, and what to do instead.
NOT_SHARDABLE = {
    "model.quantization": "FSDP2 cannot shard quantized weights; drop it",
    "model.group_offloading": "FSDP2 already keeps 1/N of the denoiser on "
    "each process, and both would move the same weights; drop it",
    "model.text_encoder_lora_config": "the text encoders stay whole on "
    "every process, and their adapters' gradients would not be averaged; "
    "drop it",
    "custom_hooks VisualizationHook": "it samples on the main process "
    "alone, which a sharded denoiser cannot; remove it",
    "val_cfg": "processes would run different numbers of validation "
    "batches, and each sharded forward needs all of them; set "
    "val_dataloader=None val_cfg=None val_evaluator=None",
}


def check_sharding(cfg: Mapping) -> None:
    """Refuse what ``model_wrapper_cfg=dict(type="FullyShardWrapper")``
    does not support (:data:`NOT_SHARDABLE`), and options it does not
    take.

    Raises:
        ConfigError: Naming the option and the fix, in one line.
    """
    wrapper = cfg.get("model_wrapper_cfg")
    if not (isinstance(wrapper, Mapping) and wrapper.get("type") == WRAPPER):
        return
    accepted = accepted_options(FullyShardWrapper) - {"module"}
    for option in sorted(set(wrapper) - MMENGINE_KEYS - accepted):
        raise ConfigError(
            f"model_wrapper_cfg.{option} is not an option of {WRAPPER}."
            f"{did_you_mean(option, accepted)}")
    model = cfg.get("model")
    hooks = [str(h.get("type")).split(".")[-1]
             for h in cfg.get("custom_hooks") or [] if isinstance(h, Mapping)]
    used = {
        "model.quantization": isinstance(model, Mapping)
        and model.get("quantization") is not None,
        "model.group_offloading": isinstance(model, Mapping)
        and model.get("group_offloading") is not None,
        "model.text_encoder_lora_config": isinstance(model, Mapping)
        and model.get("text_encoder_lora_config") is not None,
        "custom_hooks VisualizationHook": "VisualizationHook" in hooks,
        "val_cfg": cfg.get("val_cfg") is not None
        and cfg.get("val_dataloader") is not None,
    }
    for option, reason in NOT_SHARDABLE.items():
        if used[option]:
            raise ConfigError(
                f"model_wrapper_cfg {WRAPPER} does not support {option} "
                f"yet: {reason}, or use DDP (model_wrapper_cfg=None).")


def check_config(cfg: Mapping) -> None:
    """Check the registry types, data loaders and optimizer of a runner
    config (the keyword arguments of ``Runner``), before anything loads.

    Raises:
        ConfigError: Naming the config key and the fix.
    """
    for part, registry, key in typed_sections(cfg):
        check_type(part, registry, key)
        check_options(part, registry, key)
    check_adapters(cfg.get("model"))
    check_dropped_text_encoders(cfg)
    check_sharding(cfg)
    for name in DATALOADERS:
        check_dataloader(cfg.get(name), name)
    optim_wrapper = cfg.get("optim_wrapper")
    if isinstance(optim_wrapper, Mapping):
        check_optimizer(optim_wrapper.get("optimizer"))
