"""Write the offline demo: a tiny SD-1.x model and a captioned image folder.

    python tools/make_demo.py            # → data/demo/tiny-sd, data/demo/shapes
"""
from __future__ import annotations

import argparse
import os.path as osp

from diffengine.demo import make_shapes_dataset, make_tiny_sd


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/demo",
                        help="output folder (default: data/demo)")
    parser.add_argument("--num-images", type=int, default=24)
    parser.add_argument("--size", type=int, default=64,
                        help="image side in pixels")
    args = parser.parse_args(argv)
    model = make_tiny_sd(osp.join(args.out, "tiny-sd"))
    data = make_shapes_dataset(osp.join(args.out, "shapes"),
                               num_images=args.num_images, size=args.size)
    print(f"model: {model}\ndataset: {data}")


if __name__ == "__main__":
    main()
