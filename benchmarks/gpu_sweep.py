"""SD1.5-, SDXL-, SD3.5-Medium- or FLUX.1-shaped LoRA training on one GPU:
samples/s, peak memory and MFU.

Builds the SD1.5 (``--family sd15``), SDXL base 1.0 (``--family sdxl``),
SD3.5 Medium (``--family sd35``, its T5 cut to 2 layers as
``make_sd35_medium_shaped`` writes it) or FLUX.1 [dev] / [schnell]
(``--family flux-dev`` / ``flux-schnell``, T5 cut the same way,
``diffengine.testing.make_flux_shaped``) architecture with random weights on the GPU
(no download), then trains it through ``DiffEngineRunner`` at its
native resolution (512 / 1024 / 1024 px) in bf16 (autocast and the frozen
base in bf16, LoRA rank 4 on the denoiser's attention) for each batch
size, with and without cached latents (and text embeddings), with and
without gradient checkpointing (FLUX.1: with it only, as its seed configs
train). Each configuration runs in this process with a fresh runner; rows
print as they finish. ``benchmarks/gpu.sh`` runs them all; see
benchmarks/README.md.

MFU counts model FLOPs per sample at the native resolution (recomputation
under gradient checkpointing is not counted; measured with
``torch.utils.flop_counter`` on the architectures): a LoRA step with a
frozen base is about 2.15 × the UNet forward (SD1.5 803 GFLOP at 512 px,
SDXL 6,761 GFLOP at 1024 px), plus encoding the image with the VAE (1,117 /
4,879 GFLOP) and the caption with the text encoders (13 / 13 + 98 GFLOP);
cached latents and text embeddings remove the last two.

SD3.5 Medium, measured the same way for 4,096 image and 154 text tokens at
1024 px (CLIP's 77 and T5's 77, the benchmark's ``max_sequence_length``):
a LoRA step (rank 4 on both attentions) is 2.36 × the transformer forward
of 10,783 GFLOP; its VAE is SDXL's with 16 latent channels, and its text
encoders are SDXL's two plus the 2-layer T5 (60 GFLOP).

FLUX.1 the same way at 1024 px (4,096 image tokens) with its seed configs'
T5 tokens (512 for [dev], 256 for [schnell]): a LoRA step (rank 4 on the
attention of every block) is 2.20 × the transformer forward of 74,428
GFLOP ([dev]; [schnell] 2.19 × 69,507); the VAE encode is SD3's (4,879),
CLIP-L (13) and the 2-layer T5 (404 at 512 tokens, 200 at 256).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, REPO)

from benchmarks.train_step import VARIANTS  # noqa: E402

# SD3.5 Large's transformer (transformer/config.json of stabilityai/
# stable-diffusion-3.5-large): 38 blocks of 38 heads × 64 (2,432 wide),
# RMS-normalised queries and keys, no second attention; 8,056,627,520
# parameters.
SD35_LARGE_TRANSFORMER_CONFIG = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16,
    num_layers=38, num_attention_heads=38, attention_head_dim=64,
    joint_attention_dim=4096, caption_projection_dim=2432,
    pooled_projection_dim=2048, pos_embed_max_size=192, qk_norm="rms_norm",
    dual_attention_layers=())
# Per family: native resolution, the LoRA step over the denoiser forward,
# and the denoiser forward, VAE encode and text encoders in GFLOP for one
# sample at that resolution.
FAMILIES = {
    "sd15": dict(resolution=512, step=2.15, denoiser=803, vae=1117, text=13,
                 folder="sd15-shaped"),
    "sdxl": dict(resolution=1024, step=2.15, denoiser=6761, vae=4879, text=111,
                 folder="sdxl-shaped"),
    "sd35": dict(resolution=1024, step=2.36, denoiser=10783, vae=4879,
                 text=171, folder="sd35-medium-shaped"),
    # FLUX.1, 24 GB of bfloat16 transformer: with gradient checkpointing
    # only, at the seed configs' T5 tokens
    "flux-dev": dict(resolution=1024, step=2.20, denoiser=74428, vae=4879,
                     text=417, folder="flux-dev-shaped",
                     max_sequence_length=512, checkpointing=(True, )),
    "flux-schnell": dict(resolution=1024, step=2.19, denoiser=69507,
                         vae=4879, text=213, folder="flux-schnell-shaped",
                         max_sequence_length=256, checkpointing=(True, )),
    # SD3.5 Large, 16 GB of bfloat16 transformer: with gradient
    # checkpointing only, as FLUX.1
    # (its forward at 1024 px, 4,096 image and 154 text tokens, counted as
    # SD3.5 Medium's; the LoRA step taken at Medium's 2.36 ×)
    "sd35-large": dict(resolution=1024, step=2.36, denoiser=29597,
                       vae=4879, text=171, folder="sd35-large-shaped",
                       checkpointing=(True, )),
}
# The memory rows (--memory-rows): batch 1, cached latents and text
# embeddings, gradient checkpointing as the family trains, and one memory
# switch each, as config overrides (docs/memory.md).
MEMORY_ROWS = {
    "bf16": [],
    "float8": ["model.quantization.backend=torchao",
               "model.quantization.weights=float8"],
    "nf4": ["model.quantization.backend=bitsandbytes",
            "model.quantization.weights=nf4"],
    # the blocks live in CPU memory, one on the GPU at a time
    "offload": ["model.group_offloading.offload_type=block_level",
                "model.group_offloading.num_blocks_per_group=1"],
    # FSDP2: each process holds 1/N of the denoiser; run under torchrun
    # with --launcher pytorch
    "sharded": ["model_wrapper_cfg.type=FullyShardWrapper"],
}
# T5 tokens per prompt where the family does not say (the SD3 script's).
MAX_SEQUENCE_LENGTH = 77
# Options of every configuration: bf16 frozen base, channels-last weights,
# cuDNN picking its fastest convolutions for the fixed 512 px shapes.
BASE_OPTIONS = ["model.weight_dtype=bfloat16", "model.channels_last=True",
                "env_cfg.cudnn_benchmark=True",
                # runners log their setup at INFO; the rows are the output
                "log_level=WARNING"]
CACHE_OPTIONS = VARIANTS["cached"]


def sample_gflop(cached: bool, resolution: int = 512,
                 family: str = "sd15") -> float:
    """Model GFLOP of one training sample (scaled by the pixel count away
    from the native resolution, which undercounts attention a little)."""
    figures = FAMILIES[family]
    gflop = figures["step"] * figures["denoiser"]
    if not cached:
        gflop += figures["vae"] + figures["text"]
    return gflop * (resolution / figures["resolution"]) ** 2


def build_inputs(folder: str, num_images: int, build_model: bool = True,
                 family: str = "sd15") -> tuple[str, str]:
    """The family's shaped model (bf16, initialised on the GPU) and images
    a quarter larger than its resolution."""
    import functools

    import torch

    from diffengine.demo import make_shapes_dataset
    from diffengine.testing import (
        make_flux_shaped,
        make_sd15_shaped,
        make_sd35_medium_shaped,
        make_sdxl_shaped,
    )

    figures = FAMILIES[family]
    model = os.path.join(folder, figures["folder"])
    if build_model and not os.path.isfile(
            os.path.join(model, "model_index.json")):
        start = time.time()
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)  # half the bytes to write
        try:
            build = {"sd15": make_sd15_shaped, "sdxl": make_sdxl_shaped,
                     "sd35": make_sd35_medium_shaped,
                     "flux-dev": functools.partial(make_flux_shaped,
                                                   variant="dev"),
                     "flux-schnell": functools.partial(
                         make_flux_shaped, variant="schnell"),
                     "sd35-large": make_sd35_large_shaped}[family]
            build(model, device="cuda")
        finally:
            torch.set_default_dtype(default)
        print(f"built {model} in {time.time() - start:.0f} s", flush=True)
    size = figures["resolution"] * 5 // 4
    data = os.path.join(folder, f"shapes-{size}")
    if not os.path.isfile(os.path.join(data, "metadata.jsonl")):
        make_shapes_dataset(data, num_images=num_images, size=size)
    return model, data


def make_sd35_large_shaped(path: str, seed: int = 0,
                           device: str = "cpu") -> str:
    """``make_sd35_medium_shaped``'s pipeline with SD3.5 Large's
    transformer (:data:`SD35_LARGE_TRANSFORMER_CONFIG`, 16 GB in bf16);
    returns ``path``."""
    import torch
    from diffusers import SD3Transformer2DModel

    from diffengine.testing import make_sd35_medium_shaped

    make_sd35_medium_shaped(path, seed, device)
    # Medium's single weight file would sit beside Large's shards
    shutil.rmtree(os.path.join(path, "transformer"))
    with torch.device(device):
        transformer = SD3Transformer2DModel(**SD35_LARGE_TRANSFORMER_CONFIG)
    transformer.save_pretrained(os.path.join(path, "transformer"))
    return path


def row_options(batch_size: int, cached: bool, checkpointing: bool,
                compiled: bool = False, memory: str | None = None
                ) -> tuple[str, list[str]]:
    """A row's name and its config overrides (after the family's)."""
    name = (f"b{batch_size}_{'cached' if cached else 'encoded'}"
            f"{'_gc' if checkpointing else ''}{'_compiled' if compiled else ''}"
            f"{'' if memory is None else '_' + memory}")
    options = [*BASE_OPTIONS, f"experiment_name={name}",
               f"model.gradient_checkpointing={checkpointing}",
               f"model.compile_denoiser={compiled}"]
    if cached:
        options += CACHE_OPTIONS
    if memory is not None:
        # every caption encoded before the first step, then the text
        # encoders freed: the peak is the denoiser's
        options += ["model.drop_text_encoders_after_caching=True",
                    *MEMORY_ROWS[memory]]
    return name, options


def run_one(model: str, data: str, work_dir: str, batch_size: int,
            cached: bool, checkpointing: bool, args,
            compiled: bool = False, memory: str | None = None) -> dict:
    import torch

    from benchmarks.framework_loop import run_framework

    name, options = row_options(batch_size, cached, checkpointing, compiled,
                                memory)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = run_framework(
        device=args.device, model=model, data=data,
        resolution=args.resolution,
        batch_size=batch_size, rank=4, steps=args.steps, warmup=args.warmup,
        work_dir=work_dir, num_workers=args.num_workers,
        mixed_precision="bf16", options=tuple(options),
        max_sequence_length=FAMILIES[args.family].get(
            "max_sequence_length", MAX_SEQUENCE_LENGTH),
        launcher=args.launcher)
    gc.collect()
    torch.cuda.empty_cache()
    tflops = result["samples_per_s"] * sample_gflop(
        cached, args.resolution, args.family) / 1000
    return dict(name=name, batch_size=batch_size, cached=cached,
                checkpointing=checkpointing, compiled=compiled,
                memory=memory or "bf16",
                median_s=result["median_s"],
                samples_per_s=result["samples_per_s"],
                peak_gib=result["peak_bytes"] / 2**30,
                model_tflops=tflops, mfu=tflops / args.peak_tflops)


HEADER = (f"{'batch':>5} {'latents':>8} {'ckpt':>5} {'compile':>8} "
          f"{'s/step':>8} {'samples/s':>10} {'peak GiB':>9} {'TFLOP/s':>8} "
          f"{'MFU':>6} {'memory':>8}")


def format_row(row: dict) -> str:
    return (f"{row['batch_size']:>5} "
            f"{'cached' if row['cached'] else 'encoded':>8}"
            f" {'on' if row['checkpointing'] else 'off':>5}"
            f" {'on' if row['compiled'] else 'off':>8}"
            f" {row['median_s']:>8.4f} {row['samples_per_s']:>10.1f}"
            f" {row['peak_gib']:>9.1f} {row['model_tflops']:>8.0f}"
            f" {row['mfu']:>6.1%} {row.get('memory', 'bf16'):>8}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default="/tmp/diffengine-gpu-bench")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="sd15",
                        help="the architecture to build (default: sd15)")
    parser.add_argument("--model", help="a diffusers folder of --family "
                        "instead of the shaped one built in --folder")
    parser.add_argument("--resolution", type=int,
                        help="default: the family's, 512 or 1024")
    parser.add_argument("--device", default="cuda",
                        help="cpu only checks the plumbing, with a small "
                        "--model and --resolution")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        default=[1, 4, 8])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--num-workers", type=int, default=8)
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--peak-tflops", type=float, default=790.0)
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the last row (largest batch, cached, "
                        "compile_denoiser=True), whose compilation takes minutes")
    parser.add_argument("--checkpointing", choices=["both", "on", "off"],
                        help="rows with gradient checkpointing, without, or "
                        "both (default: the family's: FLUX.1 on, the "
                        "others both)")
    parser.add_argument("--remove-model", action="store_true",
                        help="delete the built model folder after the rows "
                        "(FLUX.1's is 25 GB)")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--memory-rows", nargs="+", choices=list(MEMORY_ROWS),
                        help="instead of the sweep, one row per memory "
                        "switch: batch 1, cached latents and text "
                        "embeddings (the text encoders freed), the "
                        "family's checkpointing (sharded: under torchrun "
                        "with --launcher pytorch)")
    parser.add_argument("--launcher", choices=["none", "pytorch"],
                        default="none", help="pytorch under torchrun")
    parser.add_argument("--build-only", action="store_true",
                        help="write the model and images, train nothing "
                        "(before a torchrun of several processes)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print each row's config overrides, build and "
                        "train nothing (no GPU needed)")
    args = parser.parse_args(argv)
    args.resolution = args.resolution or FAMILIES[args.family]["resolution"]
    checkpointing_values = {
        "both": (False, True), "on": (True, ), "off": (False, ),
        None: FAMILIES[args.family].get("checkpointing", (False, True)),
    }[args.checkpointing]
    if args.memory_rows:
        configs = [(1, True, checkpointing_values[-1], False, memory)
                   for memory in args.memory_rows]
    else:
        configs = [(batch_size, cached, checkpointing, False, None)
                   for cached in (True, False)
                   for checkpointing in checkpointing_values
                   for batch_size in args.batch_sizes]
        if not args.no_compile:
            configs.append((max(args.batch_sizes), True, False, True, None))
    if args.dry_run:
        for config in configs:
            name, options = row_options(*config)
            print(f"{args.family} {name}:", *options)
        return 0

    import torch

    from benchmarks.train_step import versions

    # under torchrun: one GPU per process, rows from the first
    rank = int(os.environ.get("RANK", 0))
    if args.device == "cuda":
        assert torch.cuda.is_available(), "gpu_sweep needs CUDA"
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        print(torch.cuda.get_device_name(), flush=True)
    if rank == 0:
        print(versions(), flush=True)
    model, data = build_inputs(args.folder, args.num_images,
                               build_model=args.model is None and rank == 0,
                               family=args.family)
    model = args.model or model
    if args.build_only:
        return 0
    # one latent cache for all rows of a family
    work_dir = os.path.join(args.folder, f"work-{args.family}")
    if rank == 0:
        print(HEADER, flush=True)
    rows = []
    for batch_size, cached, checkpointing, compiled, memory in configs:
        try:
            rows.append(run_one(model, data, work_dir, batch_size, cached,
                                checkpointing, args, compiled, memory))
        except Exception as error:
            if memory is None:  # the sweep's rows all run, or none
                raise
            # a memory row whose switch or package is missing here: the
            # others still run
            print(f"{memory} row failed: {type(error).__name__}: {error}",
                  flush=True)
            continue
        if rank == 0:
            print(format_row(rows[-1]), flush=True)
        if args.json and rank == 0:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=2)
    if rank == 0:
        print("\nall rows:", HEADER, *map(format_row, rows), sep="\n")
    if args.remove_model and args.model is None and rank == 0:
        shutil.rmtree(model, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
