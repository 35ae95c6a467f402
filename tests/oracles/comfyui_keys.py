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


# ComfyUI's MMDiT map (``comfy/utils.py``: ``MMDIT_MAP_BASIC``,
# ``MMDIT_MAP_BLOCK``, ``mmdit_to_diffusers``): original (Stability AI)
# name → diffusers name of each weight outside the blocks and inside one.
# ``SWAPPED`` entries are the modulations whose halves (shift, scale) trade
# places between the two layouts.
MMDIT_BASIC = {
    "context_embedder": "context_embedder",
    "t_embedder.mlp.0": "time_text_embed.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "time_text_embed.timestep_embedder.linear_2",
    "x_embedder.proj": "pos_embed.proj",
    "y_embedder.mlp.0": "time_text_embed.text_embedder.linear_1",
    "y_embedder.mlp.2": "time_text_embed.text_embedder.linear_2",
    "final_layer.adaLN_modulation.1": "norm_out.linear",
    "final_layer.linear": "proj_out",
}
MMDIT_BLOCK = {
    "context_block.adaLN_modulation.1": "norm1_context.linear",
    "context_block.attn.proj": "attn.to_add_out",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
    "x_block.adaLN_modulation.1": "norm1.linear",
    "x_block.attn.proj": "attn.to_out.0",
    "x_block.attn2.proj": "attn2.to_out.0",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
}
# RMS norms of the queries and keys (SD3.5), weights only.
MMDIT_BLOCK_NORMS = {
    "context_block.attn.ln_q": "attn.norm_added_q",
    "context_block.attn.ln_k": "attn.norm_added_k",
    "x_block.attn.ln_q": "attn.norm_q",
    "x_block.attn.ln_k": "attn.norm_k",
    "x_block.attn2.ln_q": "attn2.norm_q",
    "x_block.attn2.ln_k": "attn2.norm_k",
}
MMDIT_QKV = {
    "x_block.attn.qkv": ("attn.", ("to_q", "to_k", "to_v")),
    "context_block.attn.qkv": ("attn.", ("add_q_proj", "add_k_proj",
                                         "add_v_proj")),
    "x_block.attn2.qkv": ("attn2.", ("to_q", "to_k", "to_v")),
}
SWAPPED = "swap"


def mmdit_diffusers_to_original(config) -> dict[str, object]:
    """diffusers weight → where ComfyUI puts it in the original MMDiT, for
    an ``SD3Transformer2DModel`` config: an original name, ``(name, start,
    rows)`` for a slice of a fused ``qkv``, or ``(name, SWAPPED)``.

    As ComfyUI does: its depth is the width ÷ 64 (what it reads off
    ``x_embedder.proj``), the slices are depth × 64 rows, and the block
    whose text-stream modulation is swapped is block depth − 1.
    """
    width = config.num_attention_heads * config.attention_head_dim
    depth = width // 64
    rows = depth * 64
    names: dict[str, object] = {}
    for i in range(config.num_layers):
        source, target = f"transformer_blocks.{i}", f"joint_blocks.{i}"
        for end in ("weight", "bias"):
            for original, (attention, projections) in MMDIT_QKV.items():
                for slot, projection in enumerate(projections):
                    names[f"{source}.{attention}{projection}.{end}"] = (
                        f"{target}.{original}.{end}", slot * rows, rows)
            for original, diffusers in MMDIT_BLOCK.items():
                names[f"{source}.{diffusers}.{end}"] = (
                    f"{target}.{original}.{end}")
        for original, diffusers in MMDIT_BLOCK_NORMS.items():
            names[f"{source}.{diffusers}.weight"] = (
                f"{target}.{original}.weight")
    for end in ("weight", "bias"):
        for original, diffusers in MMDIT_BASIC.items():
            names[f"{diffusers}.{end}"] = f"{original}.{end}"
        for diffusers, original in (
                ("norm_out.linear", "final_layer.adaLN_modulation.1"),
                (f"transformer_blocks.{depth - 1}.norm1_context.linear",
                 f"joint_blocks.{depth - 1}.context_block.adaLN_modulation.1")):
            names[f"{diffusers}.{end}"] = (f"{original}.{end}", SWAPPED)
    names["pos_embed.pos_embed"] = "pos_embed"
    return names


def original_mmdit_weights(names: dict[str, object]) -> set[str]:
    """The original MMDiT weights (``.weight``) the map places something
    in: those ComfyUI's ``lora_unet_`` rule names."""
    placed = {entry if isinstance(entry, str) else entry[0]
              for entry in names.values()}
    return {name for name in placed if name.endswith(".weight")}


def comfyui_sd3_lora_key_map(transformer_config, text_layers: int,
                             text_layers_2: int
                             ) -> dict[str, tuple[str, str]]:
    """kohya LoRA name → (ComfyUI weight, diffusers module) for SD3.

    ``model_lora_keys_unet`` maps ``lora_unet_`` + each original MMDiT
    weight with dots turned into underscores to the weight
    (``diffusion_model.<name>``); ``model_lora_keys_clip`` maps SD3's CLIP-L
    and CLIP-G as SDXL's (``lora_te1_``, ``lora_te2_``). A transformer
    entry names the part only (``transformer``): its diffusers modules
    (q, k and v of a ``qkv``) are in :func:`mmdit_diffusers_to_original`.
    """
    names = mmdit_diffusers_to_original(transformer_config)
    unet = {
        "lora_unet_" + weight[:-len(".weight")].replace(".", "_"): (
            f"diffusion_model.{weight}", "transformer")
        for weight in original_mmdit_weights(names)
    }
    return {**unet,
            **_clip_keys("lora_te1_", "clip_l", "text_encoder", text_layers,
                         "text_model."),
            **_clip_keys("lora_te2_", "clip_g", "text_encoder_2",
                         text_layers_2, "text_model.")}


# ComfyUI's Flux map (``comfy/utils.py``: ``flux_to_diffusers``): original
# (Black Forest Labs) name → diffusers name outside the blocks, inside a
# double block and inside a single block.
FLUX_BASIC = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "final_layer.linear": "proj_out",
}
FLUX_DOUBLE = {
    "img_attn.proj": "attn.to_out.0",
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
FLUX_DOUBLE_NORMS = {
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
}
FLUX_SINGLE = {"modulation.lin": "norm.linear", "linear2": "proj_out"}
FLUX_SINGLE_NORMS = {"norm.query_norm": "attn.norm_q",
                     "norm.key_norm": "attn.norm_k"}


def flux_diffusers_to_original(config) -> dict[str, object]:
    """diffusers weight → where ComfyUI puts it in the original Flux, for a
    ``FluxTransformer2DModel`` config: an original name, ``(name, start,
    rows)`` for a slice of a fused ``qkv`` or ``linear1``, or ``(name,
    SWAPPED)``.

    As ComfyUI does: q, k and v take ``hidden_size`` rows each, a single
    block's ``proj_mlp`` the 4 × ``hidden_size`` after them.
    """
    hidden = config.num_attention_heads * config.attention_head_dim
    names: dict[str, object] = {}
    for i in range(config.num_layers):
        source, target = f"transformer_blocks.{i}", f"double_blocks.{i}"
        for end in ("weight", "bias"):
            for fused, projections in (
                    ("img_attn.qkv", ("to_q", "to_k", "to_v")),
                    ("txt_attn.qkv", ("add_q_proj", "add_k_proj",
                                      "add_v_proj"))):
                for slot, projection in enumerate(projections):
                    names[f"{source}.attn.{projection}.{end}"] = (
                        f"{target}.{fused}.{end}", slot * hidden, hidden)
            for original, diffusers in FLUX_DOUBLE.items():
                names[f"{source}.{diffusers}.{end}"] = (
                    f"{target}.{original}.{end}")
        for original, diffusers in FLUX_DOUBLE_NORMS.items():
            names[f"{source}.{diffusers}.weight"] = (
                f"{target}.{original}.weight")
    for i in range(config.num_single_layers):
        source, target = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
        for end in ("weight", "bias"):
            for slot, projection in enumerate(
                    ("attn.to_q", "attn.to_k", "attn.to_v")):
                names[f"{source}.{projection}.{end}"] = (
                    f"{target}.linear1.{end}", slot * hidden, hidden)
            names[f"{source}.proj_mlp.{end}"] = (
                f"{target}.linear1.{end}", 3 * hidden, 4 * hidden)
            for original, diffusers in FLUX_SINGLE.items():
                names[f"{source}.{diffusers}.{end}"] = (
                    f"{target}.{original}.{end}")
        for original, diffusers in FLUX_SINGLE_NORMS.items():
            names[f"{source}.{diffusers}.weight"] = (
                f"{target}.{original}.weight")
    for end in ("weight", "bias"):
        for original, diffusers in FLUX_BASIC.items():
            names[f"{diffusers}.{end}"] = f"{original}.{end}"
        names[f"norm_out.linear.{end}"] = (
            f"final_layer.adaLN_modulation.1.{end}", SWAPPED)
    return names


def comfyui_flux_lora_key_map(transformer_config, text_layers: int
                              ) -> dict[str, tuple[str, str]]:
    """kohya LoRA name → (ComfyUI weight, diffusers part) for Flux.1.

    ``model_lora_keys_unet`` maps ``lora_unet_`` + each original Flux
    weight with dots turned into underscores to the weight
    (``diffusion_model.<name>``); ``model_lora_keys_clip`` maps Flux's
    CLIP-L as SDXL's first (``lora_te1_``).
    """
    names = flux_diffusers_to_original(transformer_config)
    unet = {
        "lora_unet_" + weight[:-len(".weight")].replace(".", "_"): (
            f"diffusion_model.{weight}", "transformer")
        for weight in original_mmdit_weights(names)
    }
    return {**unet, **_clip_keys("lora_te1_", "clip_l", "text_encoder",
                                 text_layers, "text_model.")}
