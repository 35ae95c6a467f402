"""The diffusers folder (or hub id) a model loads from."""
from __future__ import annotations

import os

from diffengine.errors import ConfigError

SUBFOLDERS = ("tokenizer", "text_encoder", "vae", "unet", "scheduler")


def check_model_path(model: str,
                     subfolders: tuple[str, ...] = SUBFOLDERS) -> None:
    """Raise a clear error when a local diffusers folder is incomplete.

    A string that is not an existing folder is taken as a hub id and left to
    ``from_pretrained``.

    Args:
        model (str): The hub id or folder.
        subfolders (tuple[str, ...]): What the folder must hold. Defaults to
            Stable Diffusion 1.x's.
    """
    looks_local = os.path.isabs(model) or model.startswith(".") or (
        model.count("/") != 1)
    if not os.path.isdir(model):
        if looks_local:
            raise ConfigError(
                f"model={model!r} is neither a folder nor a hub id "
                "('owner/name'); point it at a diffusers model folder.")
        return
    missing = [s for s in subfolders
               if not os.path.isdir(os.path.join(model, s))]
    if missing:
        raise ConfigError(
            f"model={model!r} lacks the subfolders {missing}; a diffusers "
            "folder of this model (as its pipeline's save_pretrained writes "
            f"it) has {list(subfolders)}.")


def resolve_model(model: str) -> str:
    """The base model as recorded with a trained LoRA: the absolute path of
    a local folder, a hub id as given.

    A relative path would point elsewhere from any other working directory.
    """
    return os.path.abspath(model) if os.path.isdir(model) else model
