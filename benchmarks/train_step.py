"""Time diffengine's training step against a plain PyTorch loop.

Each side runs in a fresh process, the sides alternating, so that imports,
allocator state and the load of a shared machine weigh on both alike. Prints
median seconds per step, samples per second and peak memory (RSS on a CPU,
``torch.cuda.max_memory_allocated`` on CUDA) of each side, and their ratios
to the plain loop, as a table and as JSON.

    python benchmarks/train_step.py --model tiny --data shapes \\
        --resolution 512 --batch-size 2 --steps 8 --variants framework cached

``--model tiny`` and ``--model sd15`` write a tiny model (whose VAE
downsamples 8× like SD's) or the SD1.5 architecture with random weights
under ``--build-dir`` on first use, ``--model tiny-sdxl`` and ``--model
sdxl`` the same for SDXL (trained with the SDXL seed config on both
sides), ``--model tiny-sd3`` and ``--model sd35`` a tiny SD3.5 model or
SD3.5 Medium's architecture (trained with the SD3.5 Medium config, and as
diffusers' ``train_dreambooth_lora_sd3.py`` does; ``--no-t5`` leaves T5
out on both sides), ``--model tiny-flux`` a tiny FLUX.1 [dev] model
and ``--model flux-slice`` FLUX.1 [dev]'s width with 1 double- and 2
single-stream blocks (trained with the FLUX.1 [dev] config in float32, and
as diffusers' ``train_dreambooth_lora_flux.py`` does); ``--data shapes`` writes
captioned images there.
The framework side starts as ``mim train`` does (importing
``tools/train.py`` first, which turns on THP for CPU tensors); ``no_thp``
and ``plain_thp`` show that setting's share. ``--diffusers-script PATH``
adds diffusers' own ``train_text_to_image_lora.py`` as a third side. See
benchmarks/README.md for the recorded runs.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, REPO)

from benchmarks.diffusers_script import (  # noqa: E402
    check_script,
    run_diffusers_script,
)

RESULT_PREFIX = "BENCHMARK_RESULT "
# Framework variants: --cfg-options added to the framework's run.
VARIANTS = {
    "framework": [],
    "cached": ["train_dataloader.dataset.cache_latents=True",
               "model.cache_text_embeddings=True"],
    "cache_latents": ["train_dataloader.dataset.cache_latents=True"],
    "cache_text": ["model.cache_text_embeddings=True"],
    "bf16_weights": ["model.weight_dtype=bfloat16"],
    "channels_last": ["model.channels_last=True"],
    "checkpointing": ["model.gradient_checkpointing=True"],
    "compile": ["model.compile_denoiser=True"],
    "fused_adamw": ["optim_wrapper.optimizer.fused=True"],
    "no_thp": [],
}
# Environment of a side's process. tools/train.py (and so the framework
# side) defaults THP_MEM_ALLOC_ENABLE to 1; the plain loop runs as a plain
# script does, without it, unless the plain_thp side is asked for.
ENVIRONMENTS = {
    "no_thp": {"THP_MEM_ALLOC_ENABLE": "0"},
    "plain_thp": {"THP_MEM_ALLOC_ENABLE": "1"},
}
PLAIN_SIDES = {"plain", "plain_thp"}
# --model names written on first use: (folder, maker in diffengine.testing).
BUILDERS = {
    "tiny": ("tiny-sd", "make_tiny_sd"),
    "sd15": ("sd15-shaped", "make_sd15_shaped"),
    "tiny-sdxl": ("tiny-sdxl", "make_tiny_sdxl"),
    "sdxl": ("sdxl-shaped", "make_sdxl_shaped"),
    "tiny-sd3": ("tiny-sd35", "make_tiny_sd3"),
    "sd35": ("sd35-medium-shaped", "make_sd35_medium_shaped"),
    "tiny-flux": ("tiny-flux-dev", "make_tiny_flux"),
    # benchmarks/flux_shaped.py's: FLUX.1 [dev]'s width, 3 of its 57 blocks
    "flux-slice": ("flux-dev-slice", "benchmarks.flux_shaped.make_flux_slice"),
}
# Written in bfloat16 (loaded in float32): SDXL 7 GB instead of 14, SD3.5
# Medium 7 GB instead of 14, the FLUX.1 slice 2 GB instead of 4.
BF16_BUILDS = {"sdxl", "sd35", "flux-slice"}
# Work settings that only the two SD3 (and FLUX.1) sides read.
SD3_WORK = ("use_t5", "max_sequence_length")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny",
                        help="diffusers SD 1.x, SDXL, SD3 or FLUX.1 folder, or "
                        f"one of {sorted(BUILDERS)} (random weights, "
                        "written under --build-dir)")
    parser.add_argument("--data", default="shapes",
                        help="image folder with metadata.jsonl (file_name, "
                        "text), or 'shapes' (written under --build-dir)")
    parser.add_argument("--build-dir", default=os.path.join(
        REPO, "data", "benchmarks"))
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8,
                        help="measured steps a run")
    parser.add_argument("--warmup", type=int, default=2,
                        help="steps a run trains before measuring")
    parser.add_argument("--repeats", type=int, default=3,
                        help="fresh-process runs of each side")
    parser.add_argument("--variants", nargs="+", default=["framework"],
                        help="framework variants, of "
                        f"{sorted(VARIANTS)}, or plain_thp (the plain loop "
                        "with THP_MEM_ALLOC_ENABLE=1)")
    parser.add_argument("--options", nargs="+", default=[],
                        help="extra --cfg-options for every framework run")
    parser.add_argument("--no-t5", dest="use_t5", action="store_false",
                        help="SD3: leave T5 out on both sides (its tokens "
                        "are zeros, as the pipeline's text_encoder_3=None)")
    parser.add_argument("--max-sequence-length", type=int, default=77,
                        help="SD3 and FLUX.1: T5 tokens per prompt on both "
                        "sides (default: 77, diffusers' SD3 script's)")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default=None,
                        help="cpu or cuda; defaults to cuda when present")
    parser.add_argument("--mixed-precision", choices=["bf16"], default=None,
                        help="autocast (and AmpOptimWrapper) on both sides")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of each run (OMP_NUM_THREADS)")
    parser.add_argument("--diffusers-script", metavar="PATH",
                        help="also run diffusers' train_text_to_image_lora.py "
                        "(a copy from diffusers' examples/text_to_image) as "
                        "the side 'diffusers_script'")
    parser.add_argument("--diffusers-script-args", nargs="+", default=[],
                        metavar="ARG", help="extra arguments for that script, "
                        "e.g. --diffusers-script-args=--center_crop")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS) - PLAIN_SIDES
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}; choose from "
                     f"{sorted(set(VARIANTS) | PLAIN_SIDES)}")
    return args


def prepare_inputs(args: argparse.Namespace) -> tuple[str, str]:
    """The model and data folders, written on first use when named."""
    import torch

    from diffengine import testing
    from diffengine.demo import make_shapes_dataset

    model, data = args.model, args.data
    if model in BUILDERS:
        folder, builder = BUILDERS[model]
        module, _, name = builder.rpartition(".")
        build = getattr(importlib.import_module(module) if module else testing,
                        name)
        if model == "tiny":
            # four VAE levels: 8× smaller latents, as SD's VAE gives
            build = functools.partial(
                build, vae_block_out_channels=(32, 32, 64, 64))
        model = os.path.join(args.build_dir, folder)
        if not os.path.isfile(os.path.join(model, "model_index.json")):
            default = torch.get_default_dtype()
            if args.model in BF16_BUILDS:  # half the bytes to write
                torch.set_default_dtype(torch.bfloat16)
            try:
                build(model)
            finally:
                torch.set_default_dtype(default)
    if data == "shapes":
        # larger than the crop, so that resizing does real work
        size = args.resolution * 5 // 4
        data = os.path.join(args.build_dir, f"shapes-{size}")
        if not os.path.isfile(os.path.join(data, "metadata.jsonl")):
            make_shapes_dataset(data, size=size)
    return os.path.abspath(model), os.path.abspath(data)


def run_worker(spec: dict) -> dict:
    """One side, in this process; called through ``--worker``."""
    plain = spec["side"] in PLAIN_SIDES
    if not plain:
        # First, as `mim train` starts: tools/train.py sets its process
        # defaults before torch is imported.
        import tools.train  # noqa: F401
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    if plain:
        from benchmarks.plain_loop import run_plain
        return run_plain(**spec["work"])
    from benchmarks.framework_loop import run_framework
    return run_framework(**spec["work"], work_dir=spec["work_dir"],
                         options=tuple(spec["options"]))


def spawn(spec: dict, threads: int | None) -> dict:
    """Run one side in a fresh Python process; its result dict."""
    env = dict(os.environ)
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    env.update(ENVIRONMENTS.get(spec["side"], {}))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker",
         json.dumps(spec)], capture_output=True, text=True, env=env)
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    raise RuntimeError(
        f"{spec['side']} run failed (exit {result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def machine_info(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "load_average": os.getloadavg()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [x.split(":", 1)[1].strip() for x in f
                     if x.startswith("model name")]
        info["cpu"] = names[0] if names else info["cpu"]
    except OSError:
        pass
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def versions() -> dict:
    from importlib.metadata import version

    names = ["torch", "diffusers", "transformers", "peft", "mmengine",
             "diffengine"]
    return {n: version(n) for n in names}


def aggregate(runs: list[dict], batch_size: int) -> dict:
    """Pooled median over the measured steps of every run of a side."""
    median = statistics.median(t for run in runs for t in run["step_times"])
    cpu = statistics.median(t for run in runs for t in run["cpu_times"])
    return {"median_s": median,
            "median_cpu_s": cpu,
            "samples_per_s": batch_size / median,
            "peak_bytes": int(statistics.median(r["peak_bytes"] for r in runs)),
            "runs": runs}


def table(results: dict, memory_label: str, cpu: bool) -> str:
    """One line a side: medians, peak memory and their ratios to plain."""
    plain = results["plain"]
    header = ["side", "s/step", "samples/s", memory_label, "× time",
              "× memory"]
    if cpu:
        header[2:2] = ["cpu s/step", "× cpu"]
    rows = []
    for side, r in results.items():
        row = [side, f"{r['median_s']:.3f}", f"{r['samples_per_s']:.2f}",
               f"{r['peak_bytes'] / 2**20:,.0f}",
               f"{r['median_s'] / plain['median_s']:.2f}",
               f"{r['peak_bytes'] / plain['peak_bytes']:.2f}"]
        if cpu:
            row[2:2] = [f"{r['median_cpu_s']:.3f}",
                        f"{r['median_cpu_s'] / plain['median_cpu_s']:.2f}"]
        rows.append(row)
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        "  ".join(x.ljust(w) if i == 0 else x.rjust(w)
                  for i, (x, w) in enumerate(zip(line, widths, strict=True)))
        for line in [header, *rows])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = run_worker(json.loads(args.worker))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.diffusers_script:
        check_script(args.diffusers_script)
    model, data = prepare_inputs(args)
    work = dict(model=model, data=data, resolution=args.resolution,
                batch_size=args.batch_size, rank=args.rank, steps=args.steps,
                warmup=args.warmup, num_workers=args.num_workers,
                device=device, mixed_precision=args.mixed_precision,
                use_t5=args.use_t5,
                max_sequence_length=args.max_sequence_length)
    sides = ["plain", *args.variants]
    if args.diffusers_script:
        sides.append("diffusers_script")
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="diffengine-bench-") as root:
        for repeat in range(args.repeats):
            # alternate the order too, so neither side always runs first
            for side in sides if repeat % 2 == 0 else sides[::-1]:
                if side == "diffusers_script":
                    result = run_diffusers_script(
                        args.diffusers_script, **{
                            k: v for k, v in work.items()
                            if k not in SD3_WORK}, threads=args.threads,
                        extra_args=args.diffusers_script_args)
                else:
                    spec = dict(side=side, work=work, threads=args.threads,
                                work_dir=os.path.join(root, side),
                                options=VARIANTS.get(side, []) + args.options)
                    result = spawn(spec, args.threads)
                runs[side].append(result)
                print(f"[{repeat + 1}/{args.repeats}] {side}: "
                      f"{result['median_s']:.3f} s/step", file=sys.stderr)
    results = {side: aggregate(runs[side], args.batch_size)
               for side in sides}
    report = {
        "command": "python benchmarks/train_step.py "
        + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
        "machine": machine_info(device) | {"load_average_before": load_before},
        "versions": versions(),
        "settings": work | {"threads": args.threads, "repeats": args.repeats,
                            "options": args.options},
        "minutes": round((time.time() - started) / 60, 1),
        "results": results,
    }
    memory_label = "peak MiB" + (" (GPU)" if device == "cuda" else " (RSS)")
    print(table(results, memory_label, cpu=device == "cpu"))
    print(json.dumps({k: v for k, v in report.items() if k != "results"}
                     | {"results": {s: {k: v for k, v in r.items() if k != "runs"}
                                    for s, r in results.items()}}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
