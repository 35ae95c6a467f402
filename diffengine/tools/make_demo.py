"""Write the offline demo: the pretrained tiny base and a held-out concept.

    python tools/make_demo.py            # → data/demo/tiny-sd, data/demo/zorbs

``data/demo/tiny-sd`` is a copy of the shipped base
(``diffengine/demo/weights``, rebuilt by ``tools/pretrain_demo_base.py``):
an SD-1.x-shaped model trained on drawn shapes. ``data/demo/zorbs`` is an
image folder of rings captioned "a red zorb on a white background", ...: a
shape and a word the base never saw.

    python tools/make_demo.py --picture work_dirs/tiny_sd_lora_demo demo.png

puts the first (step 0) and the last sample grid of a trained demo side by
side (the picture in the README).
"""
from __future__ import annotations

import argparse

from diffengine.cli import tool_parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("make_demo", __doc__)
    parser.add_argument("--out", default="data/demo",
                        help="output folder (default: data/demo)")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--size", type=int, default=64,
                        help="image side in pixels (the base draws 64)")
    parser.add_argument(
        "--picture", nargs=2, metavar=("WORK_DIR", "PNG"),
        help="instead, write the before/after picture of a trained demo")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # here, not at the top: the demo's modules import numpy and PIL
    from diffengine.demo import make_demo
    from diffengine.demo.picture import before_after_picture

    if args.picture:
        print(f"wrote {before_after_picture(*args.picture)}")
        return
    model, data = make_demo(args.out, args.num_images, args.size)
    print(f"model: {model}\ndataset: {data}")
