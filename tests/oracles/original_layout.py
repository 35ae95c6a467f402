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
  ``text_model.`` level loads none of them;
- an original SDXL checkpoint (Stability AI's ``sgm``, as
  ``sd_xl_base.yaml`` builds it) is the same UNet with SDXL's added
  conditioning as ``label_emb.0.{0,2}`` (an ``nn.Sequential`` of linear,
  SiLU, linear) and linear ``proj_in``/``proj_out``, the same VAE, CLIP-L
  (``FrozenCLIPEmbedder``) as ``conditioner.embedders.0.transformer.`` +
  ``text_model.*``, and OpenCLIP ViT-bigG's text tower
  (``FrozenOpenCLIPEmbedder2``, open_clip's ``CLIP`` without its visual
  tower) as ``conditioner.embedders.1.model.`` + open_clip's names:
  ``token_embedding``, ``positional_embedding`` (a bare tensor),
  ``transformer.resblocks.<i>`` of ``ln_1``, ``attn`` (a
  ``torch.nn.MultiheadAttention``: one ``in_proj_weight`` of 3 × width
  rows, q then k then v, and ``out_proj``), ``ln_2``, ``mlp.c_fc``,
  ``mlp.c_proj``, then ``ln_final`` and ``text_projection`` (a bare
  width × projection matrix, applied as ``x @ text_projection``). The
  published file also holds CLIP-L's ``position_ids`` buffer and
  OpenCLIP's ``logit_scale``, which text-to-image never reads and which
  the loaders do not require; they are left out here;
- ComfyUI's SD3 model is Stability AI's MMDiT: ``joint_blocks.<i>`` of an
  ``x_block`` and a ``context_block`` whose attention projects q, k and v
  with one ``qkv`` linear (q rows, then k, then v), and ComfyUI loads a
  diffusers transformer into it by the map of
  :func:`tests.oracles.comfyui_keys.mmdit_diffusers_to_original`.
"""
from __future__ import annotations

import torch

from tests.oracles.comfyui_keys import (
    SWAPPED,
    flux_diffusers_to_original,
    mmdit_diffusers_to_original,
    unet_diffusers_to_ldm,
)

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


def open_clip_text_weights(config) -> dict[str, tuple[int, ...]]:
    """Name → shape of every weight of open_clip's text tower, from the
    ``CLIPTextConfig`` of the same model."""
    width, inner = config.hidden_size, config.intermediate_size
    weights = {
        "token_embedding.weight": (config.vocab_size, width),
        "positional_embedding": (config.max_position_embeddings, width),
        "ln_final.weight": (width, ),
        "ln_final.bias": (width, ),
        "text_projection": (width, config.projection_dim),
    }
    for i in range(config.num_hidden_layers):
        block = f"transformer.resblocks.{i}"
        for name, shape in (
                ("ln_1.weight", (width, )), ("ln_1.bias", (width, )),
                ("attn.in_proj_weight", (3 * width, width)),
                ("attn.in_proj_bias", (3 * width, )),
                ("attn.out_proj.weight", (width, width)),
                ("attn.out_proj.bias", (width, )),
                ("ln_2.weight", (width, )), ("ln_2.bias", (width, )),
                ("mlp.c_fc.weight", (inner, width)),
                ("mlp.c_fc.bias", (inner, )),
                ("mlp.c_proj.weight", (width, inner)),
                ("mlp.c_proj.bias", (width, ))):
            weights[f"{block}.{name}"] = shape
    return weights


def original_sdxl_checkpoint(unet, vae, text_config, text_config_2
                             ) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of the original SDXL checkpoint of a
    model with these parts (their weights' shapes, sgm's names)."""
    unet_names = dict(unet_diffusers_to_ldm(unet.config))
    unet_names.update({"add_embedding.linear_1": "label_emb.0.0",
                       "add_embedding.linear_2": "label_emb.0.2"})
    weights = _place(unet.state_dict(), unet_names, "model.diffusion_model.")
    weights.update(_vae_weights(vae))
    for name, shape in clip_text_weights(text_config).items():
        weights["conditioner.embedders.0.transformer." + name] = shape
    for name, shape in open_clip_text_weights(text_config_2).items():
        weights["conditioner.embedders.1.model." + name] = shape
    return weights


def _vae_weights(vae) -> dict[str, tuple[int, ...]]:
    """ldm name → shape of every weight of the VAE under
    ``first_stage_model.``."""
    return _place(
        vae.state_dict(), vae_diffusers_to_ldm(vae.config),
        "first_stage_model.",
        conv_1x1=("attn_1.q", "attn_1.k", "attn_1.v", "attn_1.proj_out"))


def original_checkpoint(unet, vae, text_config) -> dict[str, tuple[int, ...]]:
    """Name → shape of every tensor of the original SD 1.x checkpoint of a
    model with these parts (their weights' shapes, ldm's names)."""
    weights = _place(unet.state_dict(), unet_diffusers_to_ldm(unet.config),
                     "model.diffusion_model.")
    weights.update(_vae_weights(vae))
    for name, shape in clip_text_weights(text_config).items():
        weights["cond_stage_model.transformer." + name] = shape
    return weights


def layout_difference(tensors: dict, expected: dict[str, tuple[int, ...]]
                      ) -> tuple[list, list, list]:
    """(missing, unexpected, wrong shape) names of ``tensors`` against an
    expected name → shape map."""
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    shapes = sorted(k for k in expected.keys() & tensors.keys()
                    if tuple(tensors[k].shape) != expected[k])
    return missing, unexpected, shapes


def original_mmdit_state_dict(state_dict: dict, config) -> dict:
    """An ``SD3Transformer2DModel``'s weights laid out as ComfyUI's MMDiT
    holds them (names without ``diffusion_model.``): q, k and v stacked
    into their ``qkv`` in the rows the map gives, modulations swapped.

    Every weight must have a place in :func:`mmdit_diffusers_to_original`.
    """
    return original_state_dict(state_dict,
                               mmdit_diffusers_to_original(config))


def original_flux_state_dict(state_dict: dict, config) -> dict:
    """A ``FluxTransformer2DModel``'s weights laid out as ComfyUI's Flux
    holds them (names without ``diffusion_model.``): q, k and v (and a
    single block's ``proj_mlp``) stacked into their ``qkv`` / ``linear1``,
    the final modulation swapped."""
    return original_state_dict(state_dict,
                               flux_diffusers_to_original(config))


def original_state_dict(state_dict: dict, names: dict[str, object]) -> dict:
    """``state_dict`` placed by a diffusers → original map (see
    :func:`tests.oracles.comfyui_keys.mmdit_diffusers_to_original`)."""
    converted, slices = {}, {}
    for key, value in state_dict.items():
        assert key in names, f"{key} has no original name"
        entry = names[key]
        if isinstance(entry, str):
            converted[entry] = value
        elif entry[1] == SWAPPED:
            first, second = value.chunk(2, dim=0)
            converted[entry[0]] = torch.cat([second, first])
        else:
            name, start, rows = entry
            assert value.shape[0] == rows, key
            slices.setdefault(name, []).append((start, value))
    for name, pieces in slices.items():
        pieces.sort(key=lambda piece: piece[0])
        assert [start for start, _ in pieces] == [
            i * pieces[0][1].shape[0] for i in range(len(pieces))], name
        converted[name] = torch.cat([value for _, value in pieces])
    return converted
