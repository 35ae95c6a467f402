"""Write metadata.jsonl for a kohya-style folder (image + same-named .txt).

    mim run diffengine kohya_to_imagefolder data/my_images

The folder then loads as an HF imagefolder (``HFDataset``, ``caption_column
="text"``). ``KohyaFolderDataset`` reads the folder as it is, repeats
included, without this step.
"""
from __future__ import annotations

import argparse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kohya_to_imagefolder", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the kohya-style image folder")
    parser.add_argument("--out", help="default: <folder>/metadata.jsonl")
    parser.add_argument("--caption-extension", default=".txt",
                        help="extension of the caption files (default: .txt)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing metadata file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # here, not at the top: --help needs neither torch nor the datasets
    from diffengine.datasets.kohya_folder import write_imagefolder_metadata

    out = write_imagefolder_metadata(args.folder, args.out,
                                     args.caption_extension, args.overwrite)
    with open(out) as f:
        rows = sum(1 for _ in f)
    print(f"wrote {out} ({rows} images)")


if __name__ == "__main__":
    main()
