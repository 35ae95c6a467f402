"""A diffusers Stable Diffusion 1.x or SDXL model as one original-layout
checkpoint.

The original checkpoint (CompVis ``ldm`` for SD 1.x, Stability AI's
``sgm`` for SDXL), which AUTOMATIC1111 and ComfyUI's checkpoint loader read
and diffusers' ``from_single_file`` reads back, holds

- ``model.diffusion_model.*``: the UNet, named as ldm's ``UNetModel``
  (``input_blocks``, ``middle_block``, ``output_blocks``; SDXL's added
  conditioning as ``label_emb.0``);
- ``first_stage_model.*``: the VAE, named as ldm's ``AutoencoderKL``
  (``encoder.down.N.block.M``, ``decoder.up.N``, ``mid.attn_1``);
- SD 1.x: ``cond_stage_model.transformer.text_model.*``, the CLIP text
  encoder in transformers' published names;
- SDXL: ``conditioner.embedders.0.transformer.text_model.*``, CLIP-L as
  above, and ``conditioner.embedders.1.model.*``, the OpenCLIP bigG encoder
  in OpenCLIP's names (:mod:`diffengine.export.open_clip`).

The renaming tables are built from the UNet and VAE configs (levels, layers
per block, which levels attend), so any size converts. Every weight must
find its original name, so an unknown layer is an error, never a silently
dropped tensor.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import PreTrainedModel

from diffengine.errors import ConfigError
from diffengine.export.diffusers_folder import canonical_text_encoder_state_dict
from diffengine.export.open_clip import open_clip_state_dict
from diffengine.fileio import atomic_write
from diffengine.progress import progress_bar

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
# Where each layout keeps its text encoders, diffusers part → prefix.
TEXT_ENCODER_PREFIXES = {
    "sd1": {"text_encoder": "cond_stage_model.transformer."},
    "sdxl": {"text_encoder": "conditioner.embedders.0.transformer.",
             "text_encoder_2": "conditioner.embedders.1.model."},
}
# What each layout is called on the progress bar.
LAYOUT_NAMES = {"sd1": "Stable Diffusion 1.x", "sdxl": "SDXL"}
# Weight dtypes a checkpoint holds that the UIs and diffusers read.
WRITABLE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Layers of a UNet resnet, diffusers name → ldm ``ResBlock`` name.
UNET_RESNET_LAYERS = {
    "norm1": "in_layers.0", "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
    "conv2": "out_layers.3", "conv_shortcut": "skip_connection",
}
# A VAE resnet keeps its names but the shortcut's.
VAE_RESNET_LAYERS = {"conv_shortcut": "nin_shortcut"}
# The VAE's mid-block attention, diffusers → ldm ``AttnBlock``.
VAE_ATTENTION_LAYERS = {"group_norm": "norm", "to_q": "q", "to_k": "k",
                        "to_v": "v", "to_out.0": "proj_out"}


@dataclass(frozen=True)
class Rename:
    """The diffusers module ``source`` is the ldm module ``target``.

    Attributes:
        source (str): e.g. ``down_blocks.1.resnets.0``.
        target (str): e.g. ``input_blocks.4.0``.
        layers (Mapping[str, str]): Its layers that ldm names differently;
            the others (a transformer block's ``attn1.to_q``, ...) keep
            their names.
        conv_1x1 (bool): ldm has 1x1 convolutions where diffusers has
            linear layers, so 2-D weights gain two unit dimensions.
    """

    source: str
    target: str
    layers: Mapping[str, str] = field(default_factory=dict)
    conv_1x1: bool = False


def _attends(block_type: str) -> bool:
    return "CrossAttn" in block_type


def _resnet_and_attention(level: str, i: int, block: str,
                          attends: bool) -> list[Rename]:
    """Resnet ``i`` of a diffusers level (and its attention) as one ldm
    block: ``<block>.0`` and ``<block>.1``."""
    renames = [Rename(f"{level}.resnets.{i}", f"{block}.0",
                      UNET_RESNET_LAYERS)]
    if attends:
        renames.append(Rename(f"{level}.attentions.{i}", f"{block}.1"))
    return renames


def unet_renames(config: Mapping) -> list[Rename]:
    """diffusers → ldm names of a Stable Diffusion UNet, from its config.

    ldm numbers ``input_blocks`` from 1 (0 is ``conv_in``), one per resnet
    and one per downsampler; ``output_blocks`` from 0 at the lowest
    resolution, one per resnet (``layers_per_block + 1`` a level), with the
    upsampler inside the level's last block, after its attention if any.
    """
    layers = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    renames = [
        Rename("conv_in", "input_blocks.0.0"),
        Rename("time_embedding.linear_1", "time_embed.0"),
        Rename("time_embedding.linear_2", "time_embed.2"),
        Rename("conv_norm_out", "out.0"),
        Rename("conv_out", "out.2"),
        Rename("mid_block.resnets.0", "middle_block.0", UNET_RESNET_LAYERS),
        Rename("mid_block.attentions.0", "middle_block.1"),
        Rename("mid_block.resnets.1", "middle_block.2", UNET_RESNET_LAYERS),
    ]
    if config.get("addition_embed_type") == "text_time":
        # SDXL's pooled text and size embedding, ldm's ``label_emb``
        renames += [Rename("add_embedding.linear_1", "label_emb.0.0"),
                    Rename("add_embedding.linear_2", "label_emb.0.2")]
    block = 1
    for level, block_type in enumerate(config["down_block_types"]):
        for i in range(layers):
            renames += _resnet_and_attention(
                f"down_blocks.{level}", i, f"input_blocks.{block}",
                _attends(block_type))
            block += 1
        if level < levels - 1:
            renames.append(Rename(f"down_blocks.{level}.downsamplers.0.conv",
                                  f"input_blocks.{block}.0.op"))
            block += 1
    block = 0
    for level, block_type in enumerate(config["up_block_types"]):
        for i in range(layers + 1):
            renames += _resnet_and_attention(
                f"up_blocks.{level}", i, f"output_blocks.{block}",
                _attends(block_type))
            block += 1
        if level < levels - 1:
            slot = 2 if _attends(block_type) else 1
            renames.append(Rename(f"up_blocks.{level}.upsamplers.0.conv",
                                  f"output_blocks.{block - 1}.{slot}.conv"))
    return renames


def vae_renames(config: Mapping) -> list[Rename]:
    """diffusers → ldm names of a KL autoencoder, from its config.

    ldm's decoder numbers its levels from the lowest resolution up, the
    reverse of diffusers' ``up_blocks``; each level but the last halves
    (encoder) or doubles (decoder) the resolution.
    """
    layers = config["layers_per_block"]
    levels = len(config["block_out_channels"])
    renames = [Rename("quant_conv", "quant_conv"),
               Rename("post_quant_conv", "post_quant_conv")]
    for coder in ("encoder", "decoder"):
        renames += [
            Rename(f"{coder}.conv_in", f"{coder}.conv_in"),
            Rename(f"{coder}.conv_norm_out", f"{coder}.norm_out"),
            Rename(f"{coder}.conv_out", f"{coder}.conv_out"),
            Rename(f"{coder}.mid_block.resnets.0", f"{coder}.mid.block_1",
                   VAE_RESNET_LAYERS),
            Rename(f"{coder}.mid_block.resnets.1", f"{coder}.mid.block_2",
                   VAE_RESNET_LAYERS),
        ]
        if config.get("mid_block_add_attention", True):
            renames.append(Rename(f"{coder}.mid_block.attentions.0",
                                  f"{coder}.mid.attn_1", VAE_ATTENTION_LAYERS,
                                  conv_1x1=True))
    for level in range(levels):
        # (side, diffusers' and ldm's word for its levels, ldm's number of
        # the level, resnets in it)
        for side, word, number, resnets in (
                ("encoder", "down", level, layers),
                ("decoder", "up", levels - 1 - level, layers + 1)):
            source = f"{side}.{word}_blocks.{level}"
            target = f"{side}.{word}.{number}"
            renames += [Rename(f"{source}.resnets.{i}", f"{target}.block.{i}",
                               VAE_RESNET_LAYERS) for i in range(resnets)]
            if level < levels - 1:
                renames.append(Rename(f"{source}.{word}samplers.0.conv",
                                      f"{target}.{word}sample.conv"))
    return renames


def _longest_prefix(names: list[str], table: Mapping[str, object]
                    ) -> int | None:
    """How many leading ``names`` form the longest key of ``table``."""
    for n in range(len(names), 0, -1):
        if ".".join(names[:n]) in table:
            return n
    return None


def rename_state_dict(state_dict: Mapping[str, torch.Tensor],
                      renames: list[Rename], prefix: str,
                      part: str) -> dict[str, torch.Tensor]:
    """Name every weight of ``state_dict`` as ldm does, under ``prefix``.

    Raises:
        ConfigError: If a weight belongs to no module of ``renames`` (the
            message names ``part`` and the weights).
    """
    table = {r.source: r for r in renames}
    converted: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        names = key.split(".")
        n = _longest_prefix(names[:-1], table)
        if n is None:
            unknown.append(key)
            continue
        rename = table[".".join(names[:n])]
        rest = names[n:]
        m = _longest_prefix(rest[:-1], rename.layers)
        if m is not None:
            rest = [rename.layers[".".join(rest[:m])], *rest[m:]]
        if rename.conv_1x1 and value.ndim == 2:
            value = value[:, :, None, None]
        converted[prefix + ".".join([rename.target, *rest])] = value
    if unknown:
        raise ConfigError(
            f"{part}: {len(unknown)} weights have no name in the original "
            f"checkpoint layout, e.g. {unknown[:3]}; save this model with "
            "--format diffusers.")
    return converted


def single_file_layout(unet: UNet2DConditionModel,
                       text_encoder: PreTrainedModel | None,
                       text_encoder_2: PreTrainedModel | None = None) -> str:
    """``"sd1"`` or ``"sdxl"``: the original layout these parts are written
    in.

    Raises:
        ConfigError: If they are laid out as neither (SD 2.x, an SDXL
            refiner, a UNet with other extra conditioning).
    """
    config = unet.config
    extra = config.get("addition_embed_type") or config.get("class_embed_type")
    if extra == "text_time" and config.get("class_embed_type") is None:
        if text_encoder is None or text_encoder_2 is None:
            raise ConfigError(
                "the UNet takes SDXL's added conditioning but the model has "
                f"text_encoder={type(text_encoder).__name__}, "
                f"text_encoder_2={type(text_encoder_2).__name__} (an SDXL "
                "refiner has only the second); the SDXL single-file layout "
                "needs both. Use --format diffusers.")
        return "sdxl"
    if extra:
        raise ConfigError(
            "the UNet takes extra conditioning "
            f"(addition_embed_type={config.get('addition_embed_type')!r}, "
            f"class_embed_type={config.get('class_embed_type')!r}) that "
            "neither the Stable Diffusion 1.x nor the SDXL single-file "
            "layout holds. Use --format diffusers.")
    if config.get("use_linear_projection"):
        raise ConfigError(
            "the UNet has linear attention projections "
            "(use_linear_projection=True) without SDXL's added conditioning, "
            "as Stable Diffusion 2.x's, whose OpenCLIP text encoder has "
            "another original layout; the single-file formats here are "
            "Stable Diffusion 1.x's and SDXL's. Use --format diffusers.")
    if text_encoder_2 is not None:
        raise ConfigError(
            "the model has a second text encoder but a Stable Diffusion "
            "1.x UNet; no single-file layout holds both. Use --format "
            "diffusers.")
    return "sd1"


def check_writable(tensors: Mapping[str, torch.Tensor]) -> None:
    """Raise unless every tensor is in a dtype that the UIs read."""
    for name, tensor in tensors.items():
        if tensor.dtype not in WRITABLE_DTYPES:
            raise ConfigError(
                f"{name} is {str(tensor.dtype).removeprefix('torch.')}; a "
                "single-file checkpoint holds float32, float16 or bfloat16 "
                "weights. Merge with --dtype float16 (or another of them) "
                "from a base that is not quantized.")


def text_encoder_states(layout: str, text_encoder: PreTrainedModel,
                        text_encoder_2: PreTrainedModel | None
                        ) -> dict[str, dict[str, torch.Tensor]]:
    """The text encoders' weights in the layout's own names (no prefix),
    by diffusers part."""
    states = {"text_encoder": canonical_text_encoder_state_dict(text_encoder)}
    if layout == "sdxl":
        states["text_encoder_2"] = canonical_text_encoder_state_dict(
            text_encoder_2)
    return states


def to_single_file(unet: UNet2DConditionModel, vae: AutoencoderKL,
                   text_encoder: PreTrainedModel,
                   text_encoder_2: PreTrainedModel | None = None
                   ) -> dict[str, torch.Tensor]:
    """The weights of a Stable Diffusion 1.x or SDXL model in the original
    layout.

    Args:
        unet (UNet2DConditionModel): Without adapters (fused and unloaded).
        vae (AutoencoderKL): The KL autoencoder.
        text_encoder (PreTrainedModel): The CLIP text encoder (SDXL's
            CLIP-L).
        text_encoder_2 (PreTrainedModel, optional): SDXL's OpenCLIP bigG
            encoder, with its projection. Defaults to None (SD 1.x).

    Returns:
        dict[str, Tensor]: ``model.diffusion_model.*``,
        ``first_stage_model.*`` and the text encoders under their layout's
        prefixes (:data:`TEXT_ENCODER_PREFIXES`).

    Raises:
        ConfigError: If the model is in no layout written here, carries
            unfused adapters or weights in a dtype a checkpoint does not
            hold.
    """
    layout = single_file_layout(unet, text_encoder, text_encoder_2)
    states = {"unet": unet.state_dict(), "vae": vae.state_dict(),
              **text_encoder_states(layout, text_encoder, text_encoder_2)}
    for part, state in states.items():
        adapters = [n for n in state if "lora_" in n or ".base_layer." in n]
        if adapters:
            raise ConfigError(
                f"{part} still carries adapter layers ({adapters[0]!r}); "
                "fuse and unload the LoRA first.")
        check_writable(state)
    prefixes = TEXT_ENCODER_PREFIXES[layout]
    converted = {}
    with progress_bar(total=sum(map(len, states.values())),
                  desc=f"{LAYOUT_NAMES[layout]} single file",
                  unit="tensor") as bar:
        for part, state in states.items():
            if part == "unet":
                state = rename_state_dict(state, unet_renames(unet.config),
                                          UNET_PREFIX, part)
            elif part == "vae":
                state = rename_state_dict(state, vae_renames(vae.config),
                                          VAE_PREFIX, part)
            elif part == "text_encoder_2":
                state = {prefixes[part] + k: v
                         for k, v in open_clip_state_dict(state).items()}
            else:
                state = {prefixes[part] + k: v for k, v in state.items()}
            converted.update(state)
            bar.update(len(states[part]))
    return converted


def save_single_file(tensors: dict[str, torch.Tensor], out: str,
                     metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``out`` (``.safetensors``) all at once: a failed
    write leaves no partial file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(out, lambda tmp: save_file(
        tensors, tmp, metadata={"format": "pt", **(metadata or {})}))
