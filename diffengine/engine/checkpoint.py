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

import contextlib
import glob
import os
import os.path as osp
import pickle
import random
import shutil
import zipfile
from typing import Any

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.utils import apply_to

from diffengine.errors import DiffEngineError
from diffengine.fileio import atomic_write, atomic_write_text

HISTORY_BUFFER = "__history_buffer__"
# The folder beside a checkpoint that holds its LoRA in diffusers' format.
STEP_DIR = "step{}"


def step_dir_of(checkpoint: str, iteration: int) -> str:
    """The step folder written with ``checkpoint`` at ``iteration``."""
    return osp.join(osp.dirname(checkpoint), STEP_DIR.format(iteration))


def write_last_checkpoint(work_dir: str, checkpoint: str) -> None:
    """Point ``work_dir/last_checkpoint`` (read by ``--resume``) at a file."""
    atomic_write_text(osp.join(work_dir, "last_checkpoint"), checkpoint)


def remove_stale_temporaries(work_dir: str) -> None:
    """Remove what a killed save left: ``.NAME.tmpPID`` files and folders."""
    for path in glob.glob(osp.join(work_dir, ".*.tmp*")):
        if osp.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in it moved to the CPU."""
    return apply_to(obj, lambda x: hasattr(x, "cpu"), lambda x: x.cpu())


def exported_state_dict(runner: Any) -> dict[str, torch.Tensor]:
    """The trainable weights a step folder written now would hold.

    The hooks' ``before_save_checkpoint`` decide them, as for a real save,
    on a checkpoint that holds only the weights (an EMA hook puts its
    averages there). Sample images and validation use them, so that
    ``demo`` on a step folder reproduces its samples.

    Args:
        runner: An mmengine ``Runner``; its model may be wrapped (DDP).
    """
    model = runner.model.module if is_model_wrapper(
        runner.model) else runner.model
    checkpoint = {"state_dict": to_cpu(model.state_dict())}
    runner.call_hook("before_save_checkpoint", checkpoint=checkpoint)
    return checkpoint["state_dict"]


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
