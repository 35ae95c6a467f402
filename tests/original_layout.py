"""What the original Stable Diffusion checkpoint and ComfyUI's diffusers
loader hold, rebuilt from the model configs.

Written from the ldm model definitions and ComfyUI's loaders, independently
of diffengine's exporter:

- an original (CompVis ldm) SD 1.x checkpoint is ``model.diffusion_model.``
  + the ldm UNet, ``first_stage_model.`` + the ldm ``AutoencoderKL``
  (``encoder.down.<level>.block.<i>``, ``encoder.mid.attn_1.{q,k,v}``
  as 1x1 convolutions, ``decoder.up.<level>`` numbered from the lowest
  resolution, ``nin_shortcut``), and ``cond_stage_model.transformer.`` +
  transformers' ``CLIPTextModel`` as published (``text_model.*``);
- ComfyUI's ``load_diffusers`` reads ``text_encoder/model.safetensors`` with
  ``comfy.sd.load_clip``: it takes the file for CLIP-L when it holds
  ``text_model.encoder.layers.0.mlp.fc1.weight`` (and no layer 22 or 30),
  then loads it with ``strict=False`` into its own CLIP, whose weights are
  named as transformers 4.x's ``CLIPTextModel`` plus a ``text_projection``
  that SD 1.x files lack and ComfyUI sets itself. A file without the
  ``text_model.`` level loads none of them.
"""
from __future__ import annotations

from tests.comfyui_keys import unet_diffusers_to_ldm

CLIP_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                "self_attn.out_proj")


def clip_text_weights(config) -> dict[str, tuple[int, ...]]:
    """Name → shape of every weight of a CLIP text transformer as published
    (``text_model.*``), from its ``CLIPTextConfig``."""
    hidden, inner = config.hidden_size, config.intermediate_size
    weights = {
        "text_model.embeddings.token_embedding.weight": (config.vocab_size,
                                                         hidden),
        "text_model.embeddings.position_embedding.weight": (
            config.max_position_embeddings, hidden),
        "text_model.final_layer_norm.weight": (hidden, ),
        "text_model.final_layer_norm.bias": (hidden, ),
    }
    for i in range(config.num_hidden_layers):
        layer = f"text_model.encoder.layers.{i}"
        for name in CLIP_LINEARS:
            weights[f"{layer}.{name}.weight"] = (hidden, hidden)
            weights[f"{layer}.{name}.bias"] = (hidden, )
        for norm in ("layer_norm1", "layer_norm2"):
            weights[f"{layer}.{norm}.weight"] = (hidden, )
            weights[f"{layer}.{norm}.bias"] = (hidden, )
        weights[f"{layer}.mlp.fc1.weight"] = (inner, hidden)
        weights[f"{layer}.mlp.fc1.bias"] = (inner, )
        weights[f"{layer}.mlp.fc2.weight"] = (hidden, inner)
        weights[f"{layer}.mlp.fc2.bias"] = (hidden, )
    return weights


def comfyui_clip_load(file_weights: dict, config) -> tuple[list, list]:
    """(missing, unexpected) of ComfyUI loading a diffusers folder's
    ``text_encoder`` file as SD 1.x's CLIP-L; shapes must match."""
    detected = ("text_model.encoder.layers.0.mlp.fc1.weight" in file_weights
                and "text_model.encoder.layers.22.mlp.fc1.weight"
                not in file_weights)
    if not detected:  # ComfyUI: "clip type not detected"
        return sorted(clip_text_weights(config)), sorted(file_weights)
    wanted = clip_text_weights(config)
    missing = [k for k in wanted if k not in file_weights]
    unexpected = [k for k in file_weights if k not in wanted]
    wrong = [k for k in wanted if k in file_weights
             and tuple(file_weights[k].shape) != wanted[k]]
    assert not wrong, wrong  # load_state_dict raises on these
    return missing, unexpected


VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2",
              "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
VAE_MID_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k",
                     "to_v": "v", "to_out.0": "proj_out"}


def vae_diffusers_to_ldm(config) -> dict[str, str]:
    """diffusers module name → ldm module name for a KL autoencoder."""
    levels = len(config.block_out_channels)
    layers = config.layers_per_block
    names = {"quant_conv": "quant_conv", "post_quant_conv": "post_quant_conv"}
    for side in ("encoder", "decoder"):
        names[f"{side}.conv_in"] = f"{side}.conv_in"
        names[f"{side}.conv_out"] = f"{side}.conv_out"
        names[f"{side}.conv_norm_out"] = f"{side}.norm_out"
        for i in (0, 1):
            for d, ld in VAE_RESNET.items():
                names[f"{side}.mid_block.resnets.{i}.{d}"] = (
                    f"{side}.mid.block_{i + 1}.{ld}")
        for d, ld in VAE_MID_ATTENTION.items():
            names[f"{side}.mid_block.attentions.0.{d}"] = (
                f"{side}.mid.attn_1.{ld}")
    for level in range(levels):
        for i in range(layers):
            for d, ld in VAE_RESNET.items():
                names[f"encoder.down_blocks.{level}.resnets.{i}.{d}"] = (
                    f"encoder.down.{level}.block.{i}.{ld}")
        ldm_level = levels - 1 - level
        for i in range(layers + 1):
            for d, ld in VAE_RESNET.items():
                names[f"decoder.up_blocks.{level}.resnets.{i}.{d}"] = (
                    f"decoder.up.{ldm_level}.block.{i}.{ld}")
        if level != levels - 1:
            names[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = (
                f"encoder.down.{level}.downsample.conv")
            names[f"decoder.up_blocks.{level}.upsamplers.0.conv"] = (
                f"decoder.up.{ldm_level}.upsample.conv")
    return names


def _place(state_dict: dict, modules: dict[str, str], prefix: str,
           conv_1x1: tuple[str, ...] = ()) -> dict[str, tuple[int, ...]]:
    """ldm name → shape of each weight, its module looked up in
    ``modules``; every weight must have one."""
    placed = {}
    for key, value in state_dict.items():
        module, param = key.rsplit(".", 1)
        assert module in modules, f"{key} has no ldm name"
        shape = tuple(value.shape)
        if modules[module].endswith(conv_1x1) and param == "weight":
            shape = (*shape, 1, 1)
        placed[f"{prefix}{modules[module]}.{param}"] = shape
    return placed


def original_checkpoint(unet, vae, text_config) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of the original SD 1.x checkpoint of a
    model with these parts (their weights' shapes, ldm's names)."""
    weights = _place(unet.state_dict(), unet_diffusers_to_ldm(unet.config),
                     "model.diffusion_model.")
    weights.update(_place(
        vae.state_dict(), vae_diffusers_to_ldm(vae.config),
        "first_stage_model.",
        conv_1x1=("attn_1.q", "attn_1.k", "attn_1.v", "attn_1.proj_out")))
    for name, shape in clip_text_weights(text_config).items():
        weights["cond_stage_model.transformer." + name] = shape
    return weights
