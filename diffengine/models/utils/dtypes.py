"""Config names of the floating-point dtypes a frozen base may be kept in."""
from __future__ import annotations

import torch

from diffengine.errors import ConfigError

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def resolve_dtype(name: str | None, option: str) -> torch.dtype:
    """``torch.float32`` for None, else the dtype ``name`` names.

    Raises:
        ConfigError: If ``name`` is not a key of :data:`DTYPES`; the message
            names ``option``.
    """
    if name is None:
        return torch.float32
    if name not in DTYPES:
        raise ConfigError(
            f"{option}={name!r}; choose one of {sorted(DTYPES)} (or None "
            "for float32).")
    return DTYPES[name]
