"""Export a step's LoRA as one .safetensors file for A1111, ComfyUI or diffusers.

    mim run diffengine export_lora work_dirs/CONFIG/step300 --format kohya \
        --out my_lora.safetensors
"""
from __future__ import annotations

import argparse
import os

from diffengine.export.export_lora import DTYPES, FORMATS, export_lora
from diffengine.lora_file import DOWN_SUFFIXES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="export_lora", description=__doc__.splitlines()[0])
    parser.add_argument(
        "lora", help="step folder (work_dirs/<config>/step<N>) or its "
        "pytorch_lora_weights.safetensors")
    parser.add_argument(
        "--format", choices=FORMATS, default="kohya",
        help="kohya: lora_unet_*/lora_te_* (SDXL: lora_te1_*/lora_te2_*) keys "
        "with alpha, for A1111 and "
        "ComfyUI; diffusers: load_lora_weights' format (default: kohya)")
    parser.add_argument("--out", required=True,
                        help="the .safetensors file to write")
    parser.add_argument("--title", help="display name (default: the file name)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32",
                        help="weight precision (default: float32)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tensors = export_lora(args.lora, args.out, args.format, args.title,
                          args.dtype)
    modules = sum(k.endswith(DOWN_SUFFIXES) for k in tensors)
    size_kb = os.path.getsize(args.out) / 1024
    print(f"wrote {args.out} ({args.format}, {len(tensors)} tensors, "
          f"{modules} modules, {size_kb:.0f} KB)")


if __name__ == "__main__":
    main()
