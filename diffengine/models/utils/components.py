"""Building a model's training components from config dicts, checked."""
from __future__ import annotations

import inspect
from typing import Any

from diffengine.errors import ConfigError, did_you_mean
from diffengine.registry import MODELS


def build_component(cfg: dict | Any, name: str, base: type) -> Any:
    """Build ``cfg`` (``dict(type=..., **options)``) from the model registry.

    An object that is already built passes through. Errors name the config
    key and the fix rather than surfacing as a ``TypeError`` deep in a
    constructor.

    Args:
        cfg (dict | object): The config, or a built component.
        name (str): The config key, e.g. ``"loss"``, named in errors.
        base (type): What the component must be, e.g. ``DiffusionLoss``.

    Raises:
        ConfigError: If ``type`` is missing or unknown, an option is not an
            argument of the class, or the class is not a ``base``.
    """
    if not isinstance(cfg, dict):
        if not isinstance(cfg, base):
            raise ConfigError(
                f"{name}={cfg!r} is not a {base.__name__}.")
        return cfg
    options = dict(cfg)
    type_name = options.pop("type", None)
    component = MODELS.get(type_name) if isinstance(type_name, str) else None
    if not (isinstance(component, type) and issubclass(component, base)):
        choices = sorted(n for n, c in MODELS.module_dict.items()
                         if isinstance(c, type) and issubclass(c, base))
        raise ConfigError(
            f"{name}.type={type_name!r} is not a {base.__name__}; choose one "
            f"of {choices}.{did_you_mean(type_name, choices)}")
    parameters = [p for p in inspect.signature(component).parameters
                  if p not in ("args", "kwargs")]
    for key in options:
        if key not in parameters:
            raise ConfigError(
                f"{name}.{key} is not an option of {type_name} (its options: "
                f"{parameters}).{did_you_mean(key, parameters)}")
    return component(**options)
