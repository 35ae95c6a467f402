"""Fuse a LoRA into its base model and save a full diffusers model folder.

    mim run diffengine merge_lora work_dirs/CONFIG/step300 --base BASE --out merged/
"""
from __future__ import annotations

import argparse

from diffengine.export.merge_lora import merge_lora
from diffengine.lora_file import base_model


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="merge_lora", description=__doc__.splitlines()[0])
    parser.add_argument(
        "lora", help="step folder (work_dirs/<config>/step<N>) or a LoRA "
        ".safetensors file")
    parser.add_argument(
        "--base", help="hub id or diffusers folder of the base model "
        "(default: the one the step was trained on, from its metadata)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--scale", "--lora-scale", dest="lora_scale", type=float, default=1.0,
        help="LoRA strength fused in (default: 1, as trained)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    base = base_model(args.lora, args.base)
    merge_lora(args.lora, base, args.out, args.lora_scale)
    print(f"wrote {args.out}: {base} with the LoRA fused at scale "
          f"{args.lora_scale}; load it with "
          f"StableDiffusionPipeline.from_pretrained({args.out!r})")


if __name__ == "__main__":
    main()
