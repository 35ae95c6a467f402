"""Export a step's adapters as one .safetensors file for A1111, ComfyUI or diffusers.

    mim run diffengine export_lora work_dirs/CONFIG/step300 --format kohya \
        --out my_lora.safetensors
"""
from __future__ import annotations

import argparse
import os

# FORMATS, DORA_READERS and the names of DTYPES of diffengine.export.
# export_lora, spelled out: importing them takes seconds, too long for
# --help (a test keeps them equal)
FORMATS = ("kohya", "diffusers")
DORA_READERS = ("comfyui", "lycoris")
DTYPES = ("float32", "float16", "bfloat16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="export_lora", description=__doc__.splitlines()[0])
    parser.add_argument(
        "lora", help="step folder (work_dirs/<config>/step<N>) or its "
        "step file")
    parser.add_argument(
        "--format", choices=FORMATS, default="kohya",
        help="kohya: lora_unet_*/lora_te_* (SDXL: lora_te1_*/lora_te2_*) keys "
        "with alpha (LoRA, DoRA, LoHa, LoKr), for A1111 and ComfyUI; SD3: "
        "the original MMDiT names (LoRA), for ComfyUI, sd-scripts and Forge; "
        "diffusers: load_lora_weights' format, LoRA and DoRA (default: "
        "kohya)")
    parser.add_argument("--out", required=True,
                        help="the .safetensors file to write")
    parser.add_argument("--title", help="display name (default: the file name)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32",
                        help="weight precision (default: float32)")
    parser.add_argument(
        "--base", help="DoRA: the base model, whose weights ComfyUI's "
        "dora_scale depends on (default: the one the step file records)")
    parser.add_argument(
        "--dora-reader", choices=DORA_READERS, default="comfyui",
        help="DoRA: write dora_scale for ComfyUI's (and Forge's) reading, "
        "or peft's magnitudes as LyCORIS reads them (default: comfyui)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # here, not at the top: --help needs neither torch nor diffusers
    from diffengine.adapter_file import DOWN_SUFFIXES
    from diffengine.export.export_lora import export_lora

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
