"""Registries of diffengine, children of mmengine's root registries.

Each registry looks up ``diffengine`` modules first and falls back to
mmengine (and mmcv, which registers its transforms into mmengine's root).
``locations`` lets mmengine import the modules that register into them when
a config is built with ``default_scope='diffengine'``.
"""
from collections.abc import Mapping
from typing import Any

from mmengine.registry import DATA_SAMPLERS as MMENGINE_DATA_SAMPLERS
from mmengine.registry import DATASETS as MMENGINE_DATASETS
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import LOG_PROCESSORS as MMENGINE_LOG_PROCESSORS
from mmengine.registry import LOOPS as MMENGINE_LOOPS
from mmengine.registry import METRICS as MMENGINE_METRICS
from mmengine.registry import MODEL_WRAPPERS as MMENGINE_MODEL_WRAPPERS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import (
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
)
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import OPTIMIZERS as MMENGINE_OPTIMIZERS
from mmengine.registry import PARAM_SCHEDULERS as MMENGINE_PARAM_SCHEDULERS
from mmengine.registry import RUNNERS as MMENGINE_RUNNERS
from mmengine.registry import TRANSFORMS as MMENGINE_TRANSFORMS
from mmengine.registry import VISBACKENDS as MMENGINE_VISBACKENDS
from mmengine.registry import VISUALIZERS as MMENGINE_VISUALIZERS
from mmengine.registry import Registry

from diffengine.errors import ConfigError, did_you_mean

__all__ = [
    "DATASETS",
    "DATA_SAMPLERS",
    "HOOKS",
    "LOG_PROCESSORS",
    "LOOPS",
    "METRICS",
    "MODELS",
    "MODEL_WRAPPERS",
    "OPTIMIZERS",
    "OPTIM_WRAPPERS",
    "OPTIM_WRAPPER_CONSTRUCTORS",
    "PARAM_SCHEDULERS",
    "RUNNERS",
    "SCORERS",
    "TRANSFORMS",
    "VISBACKENDS",
    "VISUALIZERS",
    "check_type",
    "registry_names",
]


def _child(name: str, parent: Registry, package: str = "engine") -> Registry:
    """A child of mmengine's ``parent`` whose modules register in
    ``diffengine.<package>``."""
    return Registry(name, parent=parent, locations=[f"diffengine.{package}"])


# Datasets over HF `datasets` and image folders.
DATASETS = _child("dataset", MMENGINE_DATASETS, "datasets")
# Samplers that decide the order of training samples.
DATA_SAMPLERS = _child("data sampler", MMENGINE_DATA_SAMPLERS, "datasets")
# Per-sample image and caption transforms.
TRANSFORMS = _child("transform", MMENGINE_TRANSFORMS, "datasets.transforms")
# Editors (trainable diffusion models) and their data preprocessors.
MODELS = _child("model", MMENGINE_MODELS, "models")
# Optimizers; diffengine adds none, the registry keeps the scope complete.
OPTIMIZERS = _child("optimizer", MMENGINE_OPTIMIZERS)
# Optimizer wrappers (AMP, gradient accumulation).
OPTIM_WRAPPERS = _child("optim_wrapper", MMENGINE_OPTIM_WRAPPERS)
# Learning-rate and momentum schedules.
PARAM_SCHEDULERS = _child("parameter scheduler", MMENGINE_PARAM_SCHEDULERS)
# Training hooks: LoRA checkpoints, sample images.
HOOKS = _child("hook", MMENGINE_HOOKS)

# The runner and its parts, kept in the scope so that building them under
# ``default_scope='diffengine'`` needs no fallback to mmengine's root.
RUNNERS = _child("runner", MMENGINE_RUNNERS)
# Training loops.
LOOPS = _child("loop", MMENGINE_LOOPS)
# Metrics of the validation loop.
METRICS = _child("metric", MMENGINE_METRICS)
# DistributedDataParallel and other model wrappers.
MODEL_WRAPPERS = _child("model_wrapper", MMENGINE_MODEL_WRAPPERS)
# Builders of optimizer wrappers from configs.
OPTIM_WRAPPER_CONSTRUCTORS = _child("optimizer wrapper constructor",
                                    MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS)
# Formatting of logged scalars.
LOG_PROCESSORS = _child("log_processor", MMENGINE_LOG_PROCESSORS)
# Visualizers and their backends (local files, TensorBoard).
VISUALIZERS = _child("visualizer", MMENGINE_VISUALIZERS)
VISBACKENDS = _child("vis_backend", MMENGINE_VISBACKENDS)
# Image scorers: how much a generated image shows what its prompt says.
SCORERS = Registry("image scorer", locations=["diffengine.demo"])


def registry_names(registry: Registry) -> set[str]:
    """The names ``registry`` resolves: its own and its parents'."""
    names: set[str] = set()
    while registry is not None:
        names.update(registry.module_dict)
        registry = registry.parent
    return names


def check_type(cfg: Any, registry: Registry, key: str) -> None:
    """Raise if ``cfg`` is a dict whose ``type`` ``registry`` does not know.

    Raises:
        ConfigError: Naming ``key.type`` and the closest registered name.
    """
    if not (isinstance(cfg, Mapping) and isinstance(cfg.get("type"), str)):
        return
    if registry.get(cfg["type"]) is None:
        raise ConfigError(
            f"{key}.type={cfg['type']!r} is not a registered {registry.name}."
            f"{did_you_mean(cfg['type'], registry_names(registry))}")
