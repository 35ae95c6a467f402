"""A diffusers Stable Diffusion 1.x model as one original-layout checkpoint.

The original checkpoint (CompVis ``ldm``), which AUTOMATIC1111 and ComfyUI's
checkpoint loader read and diffusers' ``from_single_file`` reads back, holds

- ``model.diffusion_model.*``: the UNet, named as ldm's ``UNetModel``
  (``input_blocks``, ``middle_block``, ``output_blocks``);
- ``first_stage_model.*``: the VAE, named as ldm's ``AutoencoderKL``
  (``encoder.down.N.block.M``, ``decoder.up.N``, ``mid.attn_1``);
- ``cond_stage_model.transformer.text_model.*``: the CLIP text encoder in
  transformers' published names.

The renaming tables are built from the UNet and VAE configs (levels, layers
per block, which levels attend), so any size converts; an SDXL variant adds
``label_emb`` and its text encoders' prefixes to the same tables. Every
weight must find its original name, so an unknown layer is an error, never a
silently dropped tensor.
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
from diffengine.fileio import atomic_write

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."

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
        ValueError: If a weight belongs to no module of ``renames`` (the
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
            f"Stable Diffusion 1.x layout, e.g. {unknown[:3]}; save this "
            "model with --format diffusers.")
    return converted


def check_sd1(unet: UNet2DConditionModel) -> None:
    """Raise unless ``unet`` is laid out as Stable Diffusion 1.x's."""
    config = unet.config
    if config.get("addition_embed_type") or config.get("class_embed_type"):
        raise ConfigError(
            "the UNet takes extra conditioning "
            f"(addition_embed_type={config.get('addition_embed_type')!r}, "
            f"class_embed_type={config.get('class_embed_type')!r}), as "
            "SDXL's does; the single-file format here is Stable Diffusion "
            "1.x's. Use --format diffusers.")
    if config.get("use_linear_projection"):
        raise ConfigError(
            "the UNet has linear attention projections "
            "(use_linear_projection=True), as Stable Diffusion 2.x's, whose "
            "OpenCLIP text encoder has another original layout; the "
            "single-file format here is Stable Diffusion 1.x's. Use "
            "--format diffusers.")


def to_single_file(unet: UNet2DConditionModel, vae: AutoencoderKL,
                   text_encoder: PreTrainedModel) -> dict[str, torch.Tensor]:
    """The weights of a Stable Diffusion 1.x model in the original layout.

    Args:
        unet (UNet2DConditionModel): Without adapters (fused and unloaded).
        vae (AutoencoderKL): The KL autoencoder.
        text_encoder (PreTrainedModel): The CLIP text encoder.

    Returns:
        dict[str, Tensor]: ``model.diffusion_model.*``,
        ``first_stage_model.*`` and ``cond_stage_model.transformer.*``.
    """
    check_sd1(unet)
    states = {"unet": unet.state_dict(), "vae": vae.state_dict(),
              "text_encoder": canonical_text_encoder_state_dict(text_encoder)}
    for part, state in states.items():
        adapters = [n for n in state if "lora_" in n or ".base_layer." in n]
        if adapters:
            raise ConfigError(
                f"{part} still carries adapter layers ({adapters[0]!r}); "
                "fuse and unload the LoRA first.")
    return {
        **rename_state_dict(states["unet"], unet_renames(unet.config),
                            UNET_PREFIX, "unet"),
        **rename_state_dict(states["vae"], vae_renames(vae.config),
                            VAE_PREFIX, "vae"),
        **{TEXT_ENCODER_PREFIX + k: v
           for k, v in states["text_encoder"].items()},
    }


def save_single_file(tensors: dict[str, torch.Tensor], out: str,
                     metadata: dict[str, str] | None = None) -> None:
    """Write ``tensors`` to ``out`` (``.safetensors``) all at once: a failed
    write leaves no partial file."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(out, lambda tmp: save_file(
        tensors, tmp, metadata={"format": "pt", **(metadata or {})}))
