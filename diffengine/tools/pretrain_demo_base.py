"""Rebuild the demo's pretrained tiny base from scratch on a CPU.

    python tools/pretrain_demo_base.py --out diffengine/demo/weights

Trains the VAE, then the UNet with the text encoder, on drawn shapes (see
``diffengine/demo/pretrain.py``), writes a diffusers folder with
``pretraining.json`` (the settings, losses, times and the base's scores on
its own captions) and prints the scores. ``--like FOLDER`` takes the
settings recorded in another base's ``pretraining.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

from diffengine.cli import tool_parser

# The settings of diffengine.demo.pretrain.PretrainSettings a flag overrides.
OVERRIDES = ("seed", "vae_steps", "unet_steps")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = tool_parser("pretrain_demo_base", __doc__)
    parser.add_argument(
        "--out", help="output folder (default: diffengine/demo/weights "
        "of the installed package)")
    parser.add_argument(
        "--like", metavar="FOLDER",
        help="use the settings of FOLDER/pretraining.json (default: the "
        "built-in ones, those of the shipped base)")
    for name in OVERRIDES:
        parser.add_argument("--" + name.replace("_", "-"), type=int,
                            help=f"override {name}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # here, not at the top: --help needs neither torch nor diffusers
    from diffengine.demo import WEIGHTS, pretrain

    out = args.out or WEIGHTS
    settings = (pretrain.read_settings(args.like) if args.like
                else pretrain.PretrainSettings())
    overrides = {name: getattr(args, name) for name in OVERRIDES
                 if getattr(args, name) is not None}
    settings = dataclasses.replace(settings, **overrides)
    start = time.perf_counter()
    record = pretrain.pretrain_demo_base(
        out, settings,
        log=lambda m: print(f"[{time.perf_counter() - start:7.1f} s] {m}",
                            flush=True))
    scores = record["scores"]
    print(f"wrote {out} in {record['training_seconds']:.0f} s of "
          f"training: colour {scores['color']:.3f}, shape "
          f"{scores['shape']:.3f}, score {scores['score']:.3f}, shape "
          f"accuracy {scores['shape_accuracy']:.3f} on "
          f"{scores['images']} images of its captions")


if __name__ == "__main__":
    main()
