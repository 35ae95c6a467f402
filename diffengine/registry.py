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

# Datasets over HF `datasets` and image folders.
DATASETS = Registry(
    "dataset", parent=MMENGINE_DATASETS, locations=["diffengine.datasets"])
# Samplers that decide the order of training samples.
DATA_SAMPLERS = Registry(
    "data sampler",
    parent=MMENGINE_DATA_SAMPLERS,
    locations=["diffengine.datasets"])
# Per-sample image and caption transforms.
TRANSFORMS = Registry(
    "transform",
    parent=MMENGINE_TRANSFORMS,
    locations=["diffengine.datasets.transforms"])
# Editors (trainable diffusion models) and their data preprocessors.
MODELS = Registry(
    "model", parent=MMENGINE_MODELS, locations=["diffengine.models"])
# Optimizers; diffengine adds none, the registry keeps the scope complete.
OPTIMIZERS = Registry(
    "optimizer",
    parent=MMENGINE_OPTIMIZERS,
    locations=["diffengine.engine"])
# Optimizer wrappers (AMP, gradient accumulation).
OPTIM_WRAPPERS = Registry(
    "optim_wrapper",
    parent=MMENGINE_OPTIM_WRAPPERS,
    locations=["diffengine.engine"])
# Learning-rate and momentum schedules.
PARAM_SCHEDULERS = Registry(
    "parameter scheduler",
    parent=MMENGINE_PARAM_SCHEDULERS,
    locations=["diffengine.engine"])
# Training hooks: LoRA checkpoints, sample images.
HOOKS = Registry(
    "hook", parent=MMENGINE_HOOKS, locations=["diffengine.engine"])

# The runner and its parts, kept in the scope so that building them under
# ``default_scope='diffengine'`` needs no fallback to mmengine's root.
RUNNERS = Registry(
    "runner", parent=MMENGINE_RUNNERS, locations=["diffengine.engine"])
# Training loops.
LOOPS = Registry("loop", parent=MMENGINE_LOOPS, locations=["diffengine.engine"])
# Metrics of the validation loop.
METRICS = Registry(
    "metric", parent=MMENGINE_METRICS, locations=["diffengine.engine"])
# DistributedDataParallel and other model wrappers.
MODEL_WRAPPERS = Registry(
    "model_wrapper",
    parent=MMENGINE_MODEL_WRAPPERS,
    locations=["diffengine.engine"])
# Builders of optimizer wrappers from configs.
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    "optimizer wrapper constructor",
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS,
    locations=["diffengine.engine"])
# Formatting of logged scalars.
LOG_PROCESSORS = Registry(
    "log_processor",
    parent=MMENGINE_LOG_PROCESSORS,
    locations=["diffengine.engine"])
# Visualizers and their backends (local files, TensorBoard).
VISUALIZERS = Registry(
    "visualizer",
    parent=MMENGINE_VISUALIZERS,
    locations=["diffengine.engine"])
VISBACKENDS = Registry(
    "vis_backend",
    parent=MMENGINE_VISBACKENDS,
    locations=["diffengine.engine"])
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
