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
import json
import os
import os.path as osp
import pickle
import random
import shutil
import time
import zipfile
from typing import Any

import mmengine
import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper
from mmengine.utils import apply_to

from diffengine.datasets.samplers import seeded_sampler
from diffengine.errors import DiffEngineError
from diffengine.fileio import atomic_directory, atomic_write, atomic_write_text
from diffengine.version import __version__

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


def checkpoint_meta(runner: Any, meta: dict | None,
                    by_epoch: bool) -> dict:
    """The ``meta`` of a checkpoint saved now: where the run stands, its
    config, seeds, versions and random states.

    Args:
        runner: The runner saving.
        meta (dict, optional): Entries the caller sets (``epoch``,
            ``iter``); the others are filled in.
        by_epoch (bool): Whether the save comes after an epoch (the epoch
            counted as done) or after an iteration (the iteration counted).
    """
    meta = dict(meta or {})
    if by_epoch:
        meta.setdefault("epoch", runner.epoch + 1)
        meta.setdefault("iter", runner.iter)
    else:
        meta.setdefault("epoch", runner.epoch)
        meta.setdefault("iter", runner.iter + 1)
    sampler = seeded_sampler(runner.train_dataloader)
    meta.update(
        cfg=runner.cfg.pretty_text,
        seed=runner.seed,
        sampler_seed=getattr(sampler, "seed", None),
        experiment_name=runner.experiment_name,
        time=time.strftime("%Y%m%d_%H%M%S", time.localtime()),
        mmengine_version=mmengine.__version__,
        diffengine_version=__version__,
        world_size=runner.world_size,
        rng_state=capture_rng_state(),
    )
    return meta


def build_checkpoint(runner: Any, model: torch.nn.Module, meta: dict,
                     save_optimizer: bool = True,
                     save_param_scheduler: bool = True) -> dict:
    """A checkpoint of plain data: the trainable weights (on the CPU), the
    message hub and, if asked, the optimizer and schedulers."""
    checkpoint = {
        "meta": meta,
        "state_dict": to_cpu(model.state_dict()),
        "message_hub": to_plain(runner.message_hub.state_dict()),
    }
    if save_optimizer and isinstance(runner.optim_wrapper, OptimWrapper):
        checkpoint["optimizer"] = to_plain(
            to_cpu(runner.optim_wrapper.state_dict()))
    if save_param_scheduler and runner.param_schedulers:
        checkpoint["param_schedulers"] = to_plain(
            [s.state_dict() for s in runner.param_schedulers])
    return checkpoint


def write_checkpoint(checkpoint: dict, path: str, model: torch.nn.Module,
                     metadata: dict[str, str]) -> None:
    """Write ``path`` and its step folder, each atomically.

    The step folder first: a .pth on disk implies its step folder. It holds
    the checkpoint's weights (after the hooks ran on it, so that a hook such
    as EMA decides what it holds), with ``metadata`` in its file.
    """
    with atomic_directory(step_dir_of(path, checkpoint["meta"]["iter"])) as tmp:
        model.save_lora_weights(tmp, metadata,
                                state_dict=checkpoint["state_dict"])
    atomic_save(checkpoint, path)


def training_metadata(runner: Any, meta: dict) -> dict[str, str]:
    """What a step file tells about its training run.

    Read back by ``export_lora`` into the ``ss_*`` and ``modelspec.*`` keys
    that A1111 and ComfyUI show.

    Args:
        runner: The runner saving.
        meta (dict): The checkpoint's ``meta`` (:func:`checkpoint_meta`).
    """
    dataset_cfg = runner.cfg.get("train_dataloader", {}).get("dataset", {})
    metadata = {
        "step": meta["iter"],
        "epoch": meta["epoch"],
        "max_steps": runner.max_iters,
        "num_train_images": len(runner.train_dataloader.dataset),
        "seed": runner.seed,
        "version": __version__,
        "training_config": json.dumps(runner.cfg.to_dict(), default=str),
    }
    if isinstance(dataset_cfg.get("dataset"), str):
        metadata["dataset"] = dataset_cfg["dataset"]
    # from the dataset's configuration (the bucketing resolution, not the
    # last batch's bucket), which cached latents keep; else the size of the
    # images last trained on
    dataset = runner.train_dataloader.dataset
    resolution = (dataset.training_resolution()
                  if hasattr(dataset, "training_resolution") else None)
    if resolution is None:
        resolution = runner.message_hub.get_info("train_resolution")
    batch_sampler = runner.train_dataloader.batch_sampler
    if hasattr(batch_sampler, "bucket_counts"):
        metadata["buckets"] = json.dumps({
            f"{w}x{h}": n
            for (h, w), n in batch_sampler.bucket_counts().items()})
    if resolution is not None:
        metadata["resolution"] = resolution
    return {k: str(v) for k, v in metadata.items()}
