"""Generate images with a trained LoRA: one PNG, a grid for several seeds.

    mim run diffengine generate "a red circle" work_dirs/CONFIG/step300 \
        --seed 0 1 2 3 --out demo.png

Images are made as the training samples are (same scheduler, per-image CPU
seeds, steps and guidance). Steps, guidance, size, negative prompt and seeds
default to those the step's training sampled with (its VisualizationHook,
recorded in the step file), so ``generate`` on ``stepN`` redraws the samples
saved at step N; flags override them. Steps and guidance that neither give
are the model family's (50 and 7.5 for SD 1.x and SDXL, 28 and 7.0 for
SD3), found from the base's pipeline class.
"""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from diffengine.cli import (
    add_base_argument,
    add_lora_argument,
    add_lora_scale_argument,
    tool_parser,
)

if TYPE_CHECKING:  # for the hint only: --help needs neither torch nor diffusers
    from diffengine.generation import GenerationOptions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("generate", __doc__)
    parser.add_argument("prompt")
    add_lora_argument(
        parser, "a LoRA .safetensors file (diffusers or kohya format)")
    add_base_argument(parser)
    parser.add_argument("--out", default="demo.png",
                        help="PNG to write (default: demo.png)")
    parser.add_argument(
        "--steps", type=int,
        help="denoising steps (default: the training samples', else the "
        "model family's: 50 for SD 1.x and SDXL, 28 for SD3)")
    parser.add_argument(
        "--seed", type=int, nargs="+",
        help="one image per seed, side by side (default: the training "
        "samples' seeds, else 0)")
    add_lora_scale_argument(
        parser, "LoRA strength: 1 as trained, 0 the base model (default: 1)")
    parser.add_argument(
        "--guidance-scale", type=float,
        help="classifier-free guidance (default: the training samples', "
        "else the model family's: 7.5 for SD 1.x and SDXL, 7.0 for SD3)")
    parser.add_argument(
        "--negative", help="negative prompt (default: the training samples')")
    parser.add_argument(
        "--height", type=int,
        help="default: the training samples', else the model's")
    parser.add_argument(
        "--width", type=int,
        help="default: the training samples', else the model's")
    parser.add_argument("--device",
                        help="default: cuda when available, else cpu")
    parser.add_argument("--fp16", action="store_true",
                        help="run in float16 (on a GPU)")
    return parser.parse_args(argv)


def options_of(args: argparse.Namespace) -> GenerationOptions:
    """The generation options: the flags given, else those the step's
    training sampled with (steps and guidance that neither gives stay
    unset for the family's)."""
    from diffengine.generation import (
        GenerationOptions,
        recorded_generation_options,
    )

    return recorded_generation_options(args.lora).overridden_by(
        GenerationOptions.of(
            seed=args.seed, num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale, height=args.height,
            width=args.width, negative_prompt=args.negative))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # here, not at the top: --help needs neither torch nor diffusers
    import torch
    from PIL import Image

    from diffengine.adapter_file import base_model
    from diffengine.hub import hub_download
    from diffengine.inference import (
        generate,
        generation_defaults,
        load_pipeline,
        make_grid,
        sampling_progress,
    )

    options = options_of(args)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    base = base_model(args.lora, args.base)
    with hub_download(base, "--base /path/to/a/diffusers/folder"):
        pipe = load_pipeline(
            base, args.lora, args.lora_scale, device=device,
            torch_dtype=torch.float16 if args.fp16 else torch.float32)
    options = generation_defaults(pipe).overridden_by(options)
    with sampling_progress(options.num_inference_steps, "generate") as bar:
        images = generate(pipe, args.prompt, options=options, progress=bar)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    grid = make_grid(images, columns=len(images))
    Image.fromarray(grid).save(args.out)
    height, width = images[0].shape[:2]
    print(f"wrote {args.out} ({len(images)} image(s) of {width}×{height}, "
          f"seeds {list(options.seeds)}, {options.num_inference_steps} "
          f"steps, guidance {options.guidance_scale}, LoRA scale "
          f"{args.lora_scale})")


if __name__ == "__main__":
    main()
