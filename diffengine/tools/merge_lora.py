"""Fuse a LoRA into its base model and save a full model: a diffusers folder
or one single-file checkpoint for AUTOMATIC1111 and ComfyUI.

    mim run diffengine merge_lora work_dirs/CONFIG/step300 --out merged/
    mim run diffengine merge_lora work_dirs/CONFIG/step300 \
        --format single-file --out merged.safetensors --dtype float16
"""
from __future__ import annotations

import argparse

from diffengine.cli import (
    DTYPES,
    add_base_argument,
    add_choice,
    add_lora_argument,
    add_lora_scale_argument,
    tool_parser,
)

# diffengine.export.merged_model.FORMATS, spelled out: importing it takes
# seconds, too long for --help (a test keeps them equal)
FORMATS = ("diffusers", "single-file")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("merge_lora", __doc__)
    add_lora_argument(parser)
    add_base_argument(parser)
    parser.add_argument(
        "--out", required=True, help="output folder (--format diffusers) or "
        ".safetensors file (--format single-file)")
    add_choice(
        parser, "--format", FORMATS, "diffusers", "diffusers: a model folder "
        "for from_pretrained; single-file: one checkpoint in the original "
        "layout of Stable Diffusion 1.x or SDXL")
    add_choice(parser, "--dtype", DTYPES, "float32",
               "dtype of the saved weights")
    add_lora_scale_argument(
        parser, "LoRA strength fused in (default: 1, as trained)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # here, not at the top: --help needs neither torch nor diffusers
    from diffengine.adapter_file import base_model
    from diffengine.export.merged_model import (
        from_single_file_caveat,
        loading_code,
        merge_lora,
    )
    from diffengine.hub import hub_download

    base = base_model(args.lora, args.base)
    with hub_download(base, "--base /path/to/a/diffusers/folder"):
        pipe = merge_lora(args.lora, base, args.out, args.lora_scale,
                          args.format, args.dtype)
    print(f"wrote {args.out}: {base} with the LoRA fused at scale "
          f"{args.lora_scale} ({args.dtype}); load it in Python with\n"
          f"    {loading_code(pipe, base, args.out, args.format, args.dtype)}")
    if args.format == "single-file":
        print("or put it in the checkpoint folder of AUTOMATIC1111 or "
              "ComfyUI")
        caveat = from_single_file_caveat(pipe)
        if caveat:
            print(caveat)


if __name__ == "__main__":
    main()
