"""Train a diffengine config: ``mim train diffengine CONFIG`` runs this."""
from __future__ import annotations

import os

# Before torch is imported: PyTorch then puts CPU tensors of 2 MB and more
# on transparent huge pages, which takes a 512 px step on a CPU from ~270k
# page faults to ~11k (about 10% less time, ~5% more RSS). Set it to 0 to
# opt out; it does nothing where the kernel's THP mode is "never".
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import argparse
import os.path as osp
import sys

from mmengine.config import Config

from diffengine.cli import add_cfg_options, exit_status, load_config, merge_options


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Train a diffengine model")
    parser.add_argument("config", help="train config file path")
    parser.add_argument("--work-dir", help="the dir to save logs and models")
    parser.add_argument(
        "--resume",
        nargs="?",
        type=str,
        const="auto",
        help="resume from the latest checkpoint in the work dir, or from "
        "the checkpoint given")
    parser.add_argument(
        "--amp", action="store_true", help="enable mixed precision (fp16)")
    add_cfg_options(
        parser, "override config keys, e.g. model.unet_lora_config.r=16 "
        "train_dataloader.batch_size=2 \"custom_hooks.0.prompt=[a photo of "
        "sks ring]\"")
    parser.add_argument(
        "--launcher",
        choices=["none", "pytorch", "slurm", "mpi"],
        default="none",
        help="job launcher")
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or
    # --local_rank (older); both land in LOCAL_RANK.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    return args


def merge_args(cfg: Config, args: argparse.Namespace) -> Config:
    """Apply the command line to the config."""
    from diffengine.engine import fall_back_from_amp_without_cuda

    cfg.launcher = args.launcher
    merge_options(cfg, args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs",
                                osp.splitext(osp.basename(args.config))[0])
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
        cfg.optim_wrapper.setdefault("dtype", "float16")
    fall_back_from_amp_without_cuda(cfg)
    if args.resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def train(argv: list[str] | None = None) -> None:
    """Train the config of the command line ``argv``.

    Raises:
        DiffEngineError: What the user can fix, or ``TrainingInterruptedError``
            after a stop signal and its checkpoint.
    """
    args = parse_args(argv)
    # here, not at the top: `mim train` runs `train.py -h` before each run,
    # and the help needs neither torch nor the model code
    from mmengine.runner import Runner

    from diffengine.registry import RUNNERS

    cfg = merge_args(load_config(args.config), args)
    runner = RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(
        cfg)
    runner.train()


def main(argv: list[str] | None = None) -> int:
    """Train; the exit status (see :func:`diffengine.cli.exit_status`)."""
    return exit_status(train, argv)


if __name__ == "__main__":
    sys.exit(main())
