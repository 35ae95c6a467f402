"""Model folders keep the text encoder's published key layout."""
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffengine.demo import WEIGHTS
from diffengine.export.diffusers_folder import (
    canonical_text_encoder_state_dict,
    save_text_encoder,
)
from tests.oracles.original_layout import clip_text_weights, comfyui_clip_load

SMALL_CLIP = dict(vocab_size=100, hidden_size=32, intermediate_size=64,
                  num_hidden_layers=2, num_attention_heads=4,
                  bos_token_id=0, eos_token_id=1, pad_token_id=1)


@pytest.mark.parametrize("model", ["tiny", "shipped demo base"])
def test_demo_models_load_in_comfyui_and_transformers(model, tiny_sd):
    base = tiny_sd if model == "tiny" else WEIGHTS
    folder = os.path.join(base, "text_encoder")
    weights = load_file(os.path.join(folder, "model.safetensors"))
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    config = CLIPTextConfig.from_pretrained(folder)
    missing, unexpected = comfyui_clip_load(weights, config)
    assert (missing, unexpected) == ([], [])
    assert len(weights) == 16 * config.num_hidden_layers + 4

    loaded, info = CLIPTextModel.from_pretrained(folder,
                                                 output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    state = loaded.state_dict()
    assert {f"text_model.{k}" for k in state} == set(weights)
    assert all(torch.equal(v, weights[f"text_model.{k}"])
               for k, v in state.items())


def test_transformers_5_layout_loads_nothing_in_comfyui(tmp_path):
    # what save_pretrained writes for a CLIPTextModel made from scratch
    model = CLIPTextModel(CLIPTextConfig(**SMALL_CLIP))
    model.save_pretrained(tmp_path / "plain")
    plain = load_file(tmp_path / "plain" / "model.safetensors")
    missing, _ = comfyui_clip_load(plain, model.config)
    assert len(missing) == len(clip_text_weights(model.config)) == 36

    save_text_encoder(model, str(tmp_path / "canonical"))
    canonical = load_file(tmp_path / "canonical" / "model.safetensors")
    assert comfyui_clip_load(canonical, model.config) == ([], [])


def test_models_with_text_model_keep_their_names(tmp_path):
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(CLIPTextConfig(**SMALL_CLIP))
    state = canonical_text_encoder_state_dict(model)
    assert state.keys() == model.state_dict().keys()
    assert "text_projection.weight" in state
    assert "text_model.encoder.layers.1.mlp.fc2.bias" in state

    save_text_encoder(model, str(tmp_path))
    loaded = CLIPTextModelWithProjection.from_pretrained(tmp_path)
    assert all(torch.equal(v, loaded.state_dict()[k])
               for k, v in model.state_dict().items())


def test_save_text_encoder_replaces_shards(tmp_path):
    for name in ("model-00001-of-00002.safetensors",
                 "model.safetensors.index.json"):
        (tmp_path / name).write_text("{}")
    save_text_encoder(CLIPTextModel(CLIPTextConfig(**SMALL_CLIP)),
                      str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]


def test_sdxl_folders_keep_both_text_encoders_published(tiny_sdxl):
    first = load_file(os.path.join(tiny_sdxl, "text_encoder",
                                   "model.safetensors"))
    second = load_file(os.path.join(tiny_sdxl, "text_encoder_2",
                                    "model.safetensors"))
    assert all(k.startswith("text_model.") for k in first)
    assert "text_projection.weight" in second
    assert all(k.startswith(("text_model.", "text_projection."))
               for k in second)
    config = CLIPTextConfig.from_pretrained(os.path.join(tiny_sdxl,
                                                         "text_encoder"))
    assert comfyui_clip_load(first, config) == ([], [])
