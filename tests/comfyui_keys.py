"""The LoRA names ComfyUI accepts for SD 1.x and SDXL, rebuilt from module
names.

ComfyUI (``comfy/lora.py``: ``model_lora_keys_unet``, ``model_lora_keys_clip``)
loads a LoRA by looking each name up in a map from the names it accepts to
weights of its own, ldm-layout model; a name not in the map is reported as
"lora key not loaded" and skipped. For SD 1.x the kohya names in that map are:

- UNet: ``lora_unet_`` + the diffusers module name with dots turned into
  underscores, for every diffusers weight that ``comfy.utils.
  unet_to_diffusers`` places in the ldm UNet (resnet convs and time
  projections, ``proj_in``/``proj_out``, the attention and feed-forward
  linears of each transformer block, ...).
- CLIP: ``lora_te_text_model_encoder_layers_<i>_<layer>`` for six linears of
  each encoder layer (``self_attn_{q,k,v,out}_proj``, ``mlp_fc{1,2}``).

This module derives the same map from a diffusers ``UNet2DConditionModel``
config and a CLIP layer count, independently of diffengine's exporter, with
the ldm name and the diffusers module name of each entry.
"""
from __future__ import annotations

# diffusers → ldm names inside one resnet, one attention block (its
# transformer blocks aside) and one transformer block.
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2",
          "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
          "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
ATTENTION = {"norm": "norm", "proj_in": "proj_in", "proj_out": "proj_out"}
TRANSFORMER_BLOCK = ("norm1", "norm2", "norm3", "attn1.to_q", "attn1.to_k",
                     "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
                     "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
                     "ff.net.0.proj", "ff.net.2")
TOP_LEVEL = {"conv_in": "input_blocks.0.0", "conv_norm_out": "out.0",
             "conv_out": "out.2", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2"}
CLIP_LAYERS = {"self_attn.q_proj": "self_attn_q_proj",
               "self_attn.k_proj": "self_attn_k_proj",
               "self_attn.v_proj": "self_attn_v_proj",
               "self_attn.out_proj": "self_attn_out_proj",
               "mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2"}


def _depth(value, level: int) -> int:
    return value[level] if isinstance(value, (list, tuple)) else value


def unet_diffusers_to_ldm(config) -> dict[str, str]:
    """diffusers module name → ldm module name for an SD 1.x-style UNet.

    The ldm UNet numbers its input blocks 1, 2, ... with a downsampler after
    each level but the last, and its output blocks 0, 1, ... from the lowest
    resolution, ``layers_per_block + 1`` per level.
    """
    layers = config.layers_per_block
    levels = len(config.block_out_channels)
    depth = config.transformer_layers_per_block
    names = dict(TOP_LEVEL)

    def attention(diffusers: str, ldm: str, level_depth: int) -> None:
        for d, ld in ATTENTION.items():
            names[f"{diffusers}.{d}"] = f"{ldm}.{ld}"
        for t in range(level_depth):
            for name in TRANSFORMER_BLOCK:
                names[f"{diffusers}.transformer_blocks.{t}.{name}"] = (
                    f"{ldm}.transformer_blocks.{t}.{name}")

    for level, block in enumerate(config.down_block_types):
        for i in range(layers):
            n = 1 + (layers + 1) * level + i
            for d, ld in RESNET.items():
                names[f"down_blocks.{level}.resnets.{i}.{d}"] = (
                    f"input_blocks.{n}.0.{ld}")
            if block.startswith("CrossAttn"):
                attention(f"down_blocks.{level}.attentions.{i}",
                          f"input_blocks.{n}.1", _depth(depth, level))
        if level < levels - 1:
            names[f"down_blocks.{level}.downsamplers.0.conv"] = (
                f"input_blocks.{(layers + 1) * (level + 1)}.0.op")
    for i, n in enumerate((0, 2)):
        for d, ld in RESNET.items():
            names[f"mid_block.resnets.{i}.{d}"] = f"middle_block.{n}.{ld}"
    attention("mid_block.attentions.0", "middle_block.1", _depth(depth, -1))
    for level, block in enumerate(config.up_block_types):
        up_depth = _depth(depth, levels - 1 - level)
        for i in range(layers + 1):
            n = (layers + 1) * level + i
            for d, ld in RESNET.items():
                names[f"up_blocks.{level}.resnets.{i}.{d}"] = (
                    f"output_blocks.{n}.0.{ld}")
            if block.startswith("CrossAttn"):
                attention(f"up_blocks.{level}.attentions.{i}",
                          f"output_blocks.{n}.1", up_depth)
        if level < levels - 1:
            n = (layers + 1) * (level + 1) - 1
            slot = 2 if block.startswith("CrossAttn") else 1
            names[f"up_blocks.{level}.upsamplers.0.conv"] = (
                f"output_blocks.{n}.{slot}.conv")
    return names


def _clip_keys(prefix: str, clip: str, part: str, layers: int,
               text_model: str) -> dict[str, tuple[str, str]]:
    return {
        f"{prefix}text_model_encoder_layers_{layer}_{lora_name}": (
            f"{clip}.transformer.text_model.encoder.layers.{layer}."
            f"{module}.weight",
            f"{part}.{text_model}encoder.layers.{layer}.{module}")
        for layer in range(layers) for module, lora_name in CLIP_LAYERS.items()
    }


def _unet_keys(unet_config) -> dict[str, tuple[str, str]]:
    return {
        "lora_unet_" + diffusers.replace(".", "_"): (
            f"diffusion_model.{ldm}.weight", f"unet.{diffusers}")
        for diffusers, ldm in unet_diffusers_to_ldm(unet_config).items()
    }


def comfyui_lora_key_map(unet_config, text_layers: int
                         ) -> dict[str, tuple[str, str]]:
    """kohya LoRA name → (ComfyUI weight, diffusers module) for SD 1.x.

    The diffusers module of a text-encoder entry is named as in transformers
    5.x ``CLIPTextModel`` (no ``text_model.``).
    """
    return {**_unet_keys(unet_config),
            **_clip_keys("lora_te_", "clip_l", "text_encoder", text_layers, "")}


def comfyui_sdxl_lora_key_map(unet_config, text_layers: int,
                              text_layers_2: int
                              ) -> dict[str, tuple[str, str]]:
    """The same for SDXL: ``lora_te1_`` on CLIP-L, ``lora_te2_`` on CLIP-G
    (``model_lora_keys_clip`` for SDXL's two encoders).

    The second encoder, ``CLIPTextModelWithProjection``, keeps
    ``text_model`` on transformers 5.x.
    """
    return {**_unet_keys(unet_config),
            **_clip_keys("lora_te1_", "clip_l", "text_encoder", text_layers,
                         ""),
            **_clip_keys("lora_te2_", "clip_g", "text_encoder_2",
                         text_layers_2, "text_model.")}
