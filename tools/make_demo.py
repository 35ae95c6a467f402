"""Write the offline demo: the pretrained tiny base and a held-out concept.

    python tools/make_demo.py            # → data/demo/tiny-sd, data/demo/zorbs

``data/demo/tiny-sd`` is a copy of the shipped base
(``diffengine/demo_base/weights``, rebuilt by
``tools/pretrain_demo_base.py``): an SD-1.x-shaped model trained on drawn
shapes. ``data/demo/zorbs`` is an image folder of rings captioned "a red
zorb on a white background", ...: a shape and a word the base never saw.

    python tools/make_demo.py --picture work_dirs/tiny_sd_lora_demo demo.png

puts the first (step 0) and the last sample grid of a trained demo side by
side (the picture in the README).
"""
from __future__ import annotations

import argparse
import os.path as osp
import shutil

from diffengine.cli import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/demo",
                        help="output folder (default: data/demo)")
    parser.add_argument("--num-images", type=int, default=32)
    parser.add_argument("--size", type=int, default=64,
                        help="image side in pixels (the base draws 64)")
    parser.add_argument(
        "--picture", nargs=2, metavar=("WORK_DIR", "PNG"),
        help="instead, write the before/after picture of a trained demo")
    args = parser.parse_args(argv)
    # here, not at the top: --help needs neither torch nor diffusers
    from diffengine.demo_base import WEIGHTS, make_concept_dataset
    from diffengine.demo_base.picture import before_after_picture

    if args.picture:
        print(f"wrote {before_after_picture(*args.picture)}")
        return
    model = osp.join(args.out, "tiny-sd")
    if osp.isdir(model):
        shutil.rmtree(model)
    shutil.copytree(WEIGHTS, model)
    data = make_concept_dataset(osp.join(args.out, "zorbs"),
                                num_images=args.num_images, size=args.size)
    print(f"model: {model}\ndataset: {data}")


if __name__ == "__main__":
    run(main)
