"""Train every technique leaf config on the offline demo and measure it.

For each leaf under ``configs/<technique>/`` (the SD v1.5 seed config plus
one technique), the config is pointed at the demo's tiny model and shapes
(``python tools/make_demo.py``), at 64 px, and trained with ``mim train``
as a user would. Then:

- the fixed-noise loss of the demo images (the validation loss of a plain
  MSE model at fixed noise and timesteps, the same for every technique, so
  the numbers compare) of the base and of the trained model;
- the step folder loaded with diffusers' ``load_lora_weights`` against the
  trained model (the checkpoint's weights: the average for EMA), max
  absolute pixel difference of one generated image.

    python benchmarks/techniques.py --epochs 50 --json techniques.json
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: make `diffengine` importable
    sys.path.insert(0, REPO)

from diffengine.engine.checkpoint import load_checkpoint_file  # noqa: E402
from diffengine.inference import generate, load_pipeline  # noqa: E402
from diffengine.registry import DATASETS, MODELS  # noqa: E402

# Config families that each add one technique to the SD v1.5 seed config.
TECHNIQUES = ("min_snr_loss", "debias_estimation_loss", "huber_loss",
              "offset_noise", "pyramid_noise", "timesteps_bias",
              "input_perturbation", "caption_tricks", "ema")
SAMPLE = dict(prompt="a red zorb on a white background", seed=3,
              num_inference_steps=4)
VALIDATION_TIMESTEPS = (100, 300, 500, 700, 900)


def technique_configs() -> list[str]:
    """The technique leaf configs, by path."""
    return sorted(p for family in TECHNIQUES for p in glob.glob(
        os.path.join(REPO, "configs", family, "*.py")))


def demo_config(leaf: str, model: str, data: str, epochs: int,
                work_dir: str) -> Config:
    """``leaf`` set to the demo's model, images and schedule, at 64 px."""
    cfg = Config.fromfile(leaf)
    cfg.model.model = model
    dataset = cfg.train_dataloader.dataset
    dataset.update(dataset=data, caption_column="text")
    for transform in dataset.pipeline:
        if "size" in transform:
            transform["size"] = 64
    cfg.train_dataloader.num_workers = 0
    cfg.train_cfg.max_epochs = epochs
    # the demo's rate: the tiny base is far from the data
    cfg.optim_wrapper.optimizer.lr = 1e-3
    cfg.default_hooks.checkpoint.interval = epochs
    cfg.default_hooks.logger.interval = 10
    cfg.custom_hooks = [h for h in cfg.get("custom_hooks", [])
                        if h["type"] != "VisualizationHook"]
    cfg.randomness = dict(seed=0)
    cfg.work_dir = work_dir
    return cfg


def fixed_noise_loss(model, dataset) -> float:
    """Mean validation loss over ``dataset``: each image at timesteps 100,
    300, ..., 900 with noise fixed by its index."""
    samples = [dataset[(i, i)]["inputs"] for i in range(len(dataset))]
    inputs = model.data_preprocessor(
        {"inputs": {key: [s[key] for s in samples] for key in samples[0]}})
    with torch.no_grad():
        return model.validation_loss(inputs["inputs"],
                                     VALIDATION_TIMESTEPS).mean().item()


def measure(leaf: str, model_path: str, data: str, epochs: int,
            work_dir: str) -> dict:
    """Train ``leaf`` on the demo and measure it (see the module doc)."""
    cfg = demo_config(leaf, model_path, data, epochs, work_dir)
    os.makedirs(work_dir, exist_ok=True)
    config_path = os.path.join(work_dir, os.path.basename(leaf))
    cfg.dump(config_path)
    mim = os.path.join(os.path.dirname(sys.executable), "mim")
    result = subprocess.run([mim, "train", "diffengine", config_path],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{leaf} failed:\n{result.stderr[-3000:]}")
    init_default_scope("diffengine")
    reference_cfg = cfg.model.copy()
    for key in ("loss", "noise_generator", "timesteps_generator",
                "input_perturbation_gamma"):
        reference_cfg.pop(key, None)
    model = MODELS.build(reference_cfg)
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    before = fixed_noise_loss(model, dataset)
    checkpoint, = glob.glob(os.path.join(work_dir, "epoch_*.pth"))
    state = load_checkpoint_file(checkpoint)["state_dict"]
    model.load_state_dict(state, strict=False)
    after = fixed_noise_loss(model, dataset)
    settings = dict(num_inference_steps=SAMPLE["num_inference_steps"],
                    output_type="np")
    trained = model.infer([SAMPLE["prompt"]], seed=SAMPLE["seed"],
                          **settings)[0]
    step_dir, = glob.glob(os.path.join(work_dir, "step*"))
    pipe = load_pipeline(model_path, step_dir)
    loaded = generate(pipe, SAMPLE["prompt"], [SAMPLE["seed"]], **settings)[0]
    technique = os.path.relpath(leaf, os.path.join(REPO, "configs"))
    return {"config": technique, "loss_before": before, "loss_after": after,
            "reload_max_abs_diff": float(np.abs(loaded - trained).max()),
            "steps": int(os.path.basename(step_dir)[len("step"):])}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="data/demo/tiny-sd",
                        help="diffusers folder (default: the demo's)")
    parser.add_argument("--data", default="data/demo/zorbs",
                        help="image folder (default: the demo's)")
    parser.add_argument("--epochs", type=int, default=50,
                        help="epochs of the 32 images, batch 4 (default: 50, "
                        "400 steps)")
    parser.add_argument("--configs", nargs="+",
                        help="leaf configs (default: every technique leaf)")
    parser.add_argument("--work-dir", help="default: a temporary folder")
    parser.add_argument("--json", help="also write the rows here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    leaves = [os.path.abspath(c) for c in args.configs or technique_configs()]
    root = args.work_dir or tempfile.mkdtemp(prefix="techniques-")
    rows = []
    print("| config | steps | fixed-noise loss before | after | "
          "step folder vs trained |\n| --- | ---: | ---: | ---: | ---: |")
    for leaf in leaves:
        name = os.path.splitext(os.path.basename(leaf))[0]
        row = measure(leaf, os.path.abspath(args.model),
                      os.path.abspath(args.data), args.epochs,
                      os.path.join(root, name))
        rows.append(row)
        print(f"| {row['config']} | {row['steps']} | {row['loss_before']:.4f} "
              f"| {row['loss_after']:.4f} | {row['reload_max_abs_diff']:.1e} |",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
