"""Export a step's adapters as one .safetensors file for A1111, ComfyUI or diffusers.

    mim run diffengine export_lora work_dirs/CONFIG/step300 --format kohya \
        --out my_lora.safetensors
"""
from __future__ import annotations

import argparse
import os

from diffengine.cli import DTYPES, add_choice, add_lora_argument, tool_parser

# FORMATS and DORA_READERS of diffengine.export.standalone_lora, spelled
# out: importing them takes seconds, too long for --help (a test keeps them
# equal)
FORMATS = ("kohya", "diffusers")
DORA_READERS = ("comfyui", "lycoris")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("export_lora", __doc__)
    add_lora_argument(parser, "its step file")
    add_choice(
        parser, "--format", FORMATS, "kohya", "kohya: lora_unet_*/lora_te_* "
        "(SDXL: lora_te1_*/lora_te2_*) keys with alpha (LoRA, DoRA, LoHa, "
        "LoKr), for A1111 and ComfyUI; SD3: the original MMDiT names (LoRA), "
        "for ComfyUI, sd-scripts and Forge; diffusers: load_lora_weights' "
        "format, LoRA and DoRA")
    parser.add_argument("--out", required=True,
                        help="the .safetensors file to write")
    parser.add_argument("--title", help="display name (default: the file name)")
    add_choice(parser, "--dtype", DTYPES, "float32", "weight precision")
    parser.add_argument(
        "--base", help="DoRA: the base model, whose weights ComfyUI's "
        "dora_scale depends on (default: the one the step file records)")
    add_choice(
        parser, "--dora-reader", DORA_READERS, "comfyui", "DoRA: write "
        "dora_scale for ComfyUI's (and Forge's) reading, or peft's "
        "magnitudes as LyCORIS reads them")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # here, not at the top: --help needs neither torch nor diffusers
    from diffengine.adapter_file import DOWN_SUFFIXES
    from diffengine.export.standalone_lora import export_lora

    tensors = export_lora(args.lora, args.out, args.format, args.title,
                          args.dtype, args.base, args.dora_reader)
    ends = (".alpha", ) if args.format == "kohya" else DOWN_SUFFIXES
    modules = sum(k.endswith(ends) for k in tensors)
    size_kb = os.path.getsize(args.out) / 1024
    print(f"wrote {args.out} ({args.format}, {len(tensors)} tensors, "
          f"{modules} modules, {size_kb:.0f} KB)")
    if any(k.endswith(".dora_scale") for k in tensors):
        reader = "ComfyUI and Forge" if args.dora_reader == "comfyui" else (
            "LyCORIS")
        print(f"DoRA: dora_scale written for {reader}; AUTOMATIC1111 reads "
              "only input-axis DoRA and does not load this file correctly")


if __name__ == "__main__":
    main()
