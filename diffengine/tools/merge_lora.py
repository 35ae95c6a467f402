"""Fuse a LoRA into its base model and save a full model: a diffusers folder
or one single-file checkpoint for AUTOMATIC1111 and ComfyUI.

    mim run diffengine merge_lora work_dirs/CONFIG/step300 --out merged/
    mim run diffengine merge_lora work_dirs/CONFIG/step300 \
        --format single-file --out merged.safetensors --dtype float16
"""
from __future__ import annotations

import argparse

# diffengine.export.merge_lora.FORMATS and the names of diffengine.models.
# utils.dtypes.DTYPES, spelled out: importing them takes seconds, too long
# for --help (a test keeps them equal)
FORMATS = ("diffusers", "single-file")
DTYPES = ("float32", "float16", "bfloat16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="merge_lora", description=__doc__.splitlines()[0])
    parser.add_argument(
        "lora", help="step folder (work_dirs/<config>/step<N>) or a LoRA "
        ".safetensors file")
    parser.add_argument(
        "--base", help="hub id or diffusers folder of the base model "
        "(default: the one the step was trained on, from its metadata)")
    parser.add_argument(
        "--out", required=True, help="output folder (--format diffusers) or "
        ".safetensors file (--format single-file)")
    parser.add_argument(
        "--format", choices=FORMATS, default="diffusers",
        help="diffusers: a model folder for from_pretrained; single-file: "
        "one checkpoint in the original layout of Stable Diffusion 1.x or "
        "SDXL (default: diffusers)")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="float32",
        help="dtype of the saved weights (default: float32)")
    parser.add_argument(
        "--scale", "--lora-scale", dest="lora_scale", type=float, default=1.0,
        help="LoRA strength fused in (default: 1, as trained)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # here, not at the top: --help needs neither torch nor diffusers
    from diffengine.adapter_file import base_model
    from diffengine.export.merge_lora import (
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
