"""Save what a config's training pipeline feeds the model, as images + captions.

    mim run diffengine browse_dataset CONFIG --out browse/ --num 16

Writes ``NNNN.png`` (the image after every transform: resize, crop, flip)
and ``NNNN.txt`` (its caption) for the first samples, for checking crops,
and prints each sample's size (with aspect-ratio buckets, its bucket and
the size of its image file).
"""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from diffengine.cli import add_cfg_options, load_config

if TYPE_CHECKING:
    import numpy as np
    import torch
    from mmengine.config import Config


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Undo ``ImageToNormalizedTensor``: C×H×W in [-1, 1] → H×W×C uint8."""
    import torch

    array = ((img.float() + 1.0) * 127.5).round().clamp(0, 255)
    return array.to(torch.uint8).permute(1, 2, 0).numpy()


def browse_dataset(cfg: Config, out: str, num: int = 16,
                   seed: int = 0) -> list[str]:
    """Write the first ``num`` training samples of ``cfg`` to ``out``.

    Returns:
        list[str]: One line per sample: its file, size and caption (and
        with buckets, the size of the image it was cut from).
    """
    # here, not at the top: --help needs neither torch nor the datasets
    from mmengine.registry import init_default_scope
    from PIL import Image

    from diffengine.datasets.image import image_size
    from diffengine.datasets.samplers import sample_seed
    from diffengine.registry import DATASETS, check_type

    check_type(cfg.train_dataloader.dataset, DATASETS,
               "train_dataloader.dataset")
    init_default_scope(cfg.get("default_scope", "diffengine"))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    buckets = dataset.row_buckets() if hasattr(dataset, "row_buckets") else None
    os.makedirs(out, exist_ok=True)
    lines = []
    for idx in range(min(num, len(dataset))):
        # the crops and flips of epoch 0 of a run with this seed
        inputs = dataset[(idx, sample_seed(seed, 0, idx))]["inputs"]
        name = f"{idx:04d}.png"
        Image.fromarray(to_uint8(inputs["img"])).save(os.path.join(out, name))
        with open(os.path.join(out, f"{idx:04d}.txt"), "w",
                  encoding="utf-8") as f:
            f.write(inputs["text"] + "\n")
        height, width = inputs["img"].shape[-2:]
        line = f"{name}  {width}×{height}"
        if buckets is not None:
            image_width, image_height = image_size(dataset.image_source(idx))
            line += f" bucket, from a {image_width}×{image_height} image"
        lines.append(f"{line}  {inputs['text']!r}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="browse_dataset", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="train config file")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num", type=int, default=16,
                        help="samples to write (default: 16)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random transforms (default: 0)")
    add_cfg_options(parser, "override config keys, as in train")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    lines = browse_dataset(cfg, args.out, args.num, args.seed)
    print("\n".join(lines))
    sizes = sorted({line.split()[1] for line in lines})
    print(f"wrote {len(lines)} samples of {', '.join(sizes)} (PNG + caption "
          f".txt) to {args.out}")


if __name__ == "__main__":
    main()
