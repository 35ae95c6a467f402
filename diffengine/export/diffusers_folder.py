"""diffusers model folders whose text encoders keep the published key layout.

transformers 5.x ``CLIPTextModel`` has no ``text_model`` submodule, and its
``save_pretrained`` writes ``embeddings.*``, ``encoder.layers.*`` at the top
of ``model.safetensors`` when the model was not loaded from a file with that
level. Every other reader names the weights under it: transformers 4.x,
ComfyUI's diffusers loader (``comfy.sd.load_clip`` keys CLIP-L on
``text_model.encoder.layers.0.mlp.fc1.weight`` and loads nothing else), and
the published Stable Diffusion folders. transformers 5.x loads that layout as
it loads its own, so writing it costs 5.x users nothing.
"""
from __future__ import annotations

import os

import torch
from diffusers import DiffusionPipeline
from safetensors.torch import save_file
from transformers import CLIPTextModel, CLIPTextModelWithProjection, PreTrainedModel

from diffengine.fileio import atomic_write

# The one weight file of a text-encoder folder, as transformers names it.
TEXT_ENCODER_WEIGHTS = "model.safetensors"
# The level that holds a CLIP text transformer in the published layout.
TEXT_MODEL_PREFIX = "text_model."


def canonical_text_encoder_state_dict(
        text_encoder: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The weights of a CLIP text encoder named as published.

    A model without a ``text_model`` submodule (transformers 5.x
    ``CLIPTextModel``) gets every name under ``text_model.``; one with it
    (transformers 4.x, ``CLIPTextModelWithProjection``) already is, its
    ``text_projection`` beside it.
    """
    state = text_encoder.state_dict()
    if hasattr(text_encoder, "text_model"):
        return dict(state)
    return {TEXT_MODEL_PREFIX + k: v for k, v in state.items()}


def save_text_encoder(text_encoder: PreTrainedModel, folder: str) -> None:
    """Write ``config.json`` and one ``model.safetensors`` in the published
    layout to ``folder``, replacing any weight files there."""
    os.makedirs(folder, exist_ok=True)
    text_encoder.config.save_pretrained(folder)
    for name in os.listdir(folder):
        # shards or an index left by save_pretrained
        if name.startswith("model") and name != TEXT_ENCODER_WEIGHTS and (
                name.endswith((".safetensors", ".safetensors.index.json"))):
            os.remove(os.path.join(folder, name))
    state = {k: v.detach().cpu().contiguous()
             for k, v in canonical_text_encoder_state_dict(text_encoder).items()}
    atomic_write(os.path.join(folder, TEXT_ENCODER_WEIGHTS),
                 lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))


def text_encoder_names(pipe: DiffusionPipeline) -> list[str]:
    """The pipeline's CLIP text-encoder components (``text_encoder``,
    ``text_encoder_2``, ...) that are set; others (SD3's T5) already save
    in their published layout."""
    return [name for name, component in pipe.components.items()
            if name.startswith("text_encoder") and isinstance(
                component, (CLIPTextModel, CLIPTextModelWithProjection))]


def save_pipeline_folder(pipe: DiffusionPipeline, folder: str) -> None:
    """``pipe.save_pretrained(folder)`` with the CLIP text encoders written
    in the published layout.

    Args:
        pipe (DiffusionPipeline): The pipeline to save.
        folder (str): The model folder (``model_index.json`` and one
            subfolder per component).
    """
    pipe.save_pretrained(folder)
    for name in text_encoder_names(pipe):
        save_text_encoder(getattr(pipe, name), os.path.join(folder, name))
