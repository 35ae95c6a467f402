"""Checkpoint files that load with ``torch.load(weights_only=True)``.

mmengine pickles its message hub's ``HistoryBuffer`` objects, whose
unpickling needs ``builtins.getattr``, and numpy arrays in RNG states; torch
>= 2.6 refuses both by default, and allow-listing ``getattr`` would let a
crafted checkpoint run code. Here everything is stored as plain data
(tensors, numbers, strings, lists, dicts) and rebuilt on load, so loading
needs no allow-list at all. Writes go through :mod:`diffengine.fileio`: to a
temporary file in the same folder that is renamed into place, so a kill or a
full disk during a save leaves the previous file intact.
"""
from __future__ import annotations

import pickle
import random
import zipfile
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer

from diffengine.errors import DiffEngineError
from diffengine.fileio import atomic_write

HISTORY_BUFFER = "__history_buffer__"


def to_plain(obj: Any) -> Any:
    """``obj`` with HistoryBuffers, numpy arrays and scalars made plain."""
    if isinstance(obj, HistoryBuffer):
        logs, counts = obj.data
        return {HISTORY_BUFFER: True, "log_history": logs.tolist(),
                "count_history": counts.tolist(),
                "max_length": obj.max_length}
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return type(obj)((k, to_plain(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_plain(v) for v in obj)
    return obj


def from_plain(obj: Any) -> Any:
    """Rebuild the HistoryBuffers that :func:`to_plain` flattened."""
    if isinstance(obj, dict):
        if obj.get(HISTORY_BUFFER):
            return HistoryBuffer(obj["log_history"], obj["count_history"],
                                 obj["max_length"])
        return type(obj)((k, from_plain(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    return obj


def capture_rng_state() -> dict:
    """The python, numpy and torch (CPU and CUDA) generator states."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos,
                  has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Undo :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state(
        (name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save`` that leaves either the old file or the new one."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


class CheckpointLoadError(DiffEngineError, RuntimeError):
    """A checkpoint file is truncated, corrupt or not a plain-data file.

    Resuming the newest checkpoint of a work dir falls back to an older one
    on it; a checkpoint named with ``--resume`` ends the run with its line.
    """


def load_checkpoint_file(path: str, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` and rebuild its objects.

    Raises:
        CheckpointLoadError: If the file is truncated or corrupt, or holds
            objects outside torch's safe set (such as a checkpoint written by
            plain mmengine); the message names the file.
    """
    try:
        checkpoint = torch.load(path, map_location=map_location,
                                weights_only=True)
    # torch's unpickler fails on a damaged file with whatever the damage
    # decodes to (KeyError, IndexError, ...), not one error type
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError,
            zipfile.BadZipFile, ValueError, KeyError, IndexError,
            TypeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err) else ""
        raise CheckpointLoadError(
            f"cannot load checkpoint {path}: {type(err).__name__}: "
            f"{first_line}") from err
    if "message_hub" in checkpoint:
        checkpoint["message_hub"] = from_plain(checkpoint["message_hub"])
    return checkpoint
