"""Peak memory of LoRA training on a FLUX.1-shaped transformer with a bf16,
int8 or float8 frozen base, with and without gradient checkpointing, and
the arithmetic that takes each to FLUX.1 [dev]'s 19 + 38 blocks.

Writes (once, in bf16, in diffusers layout) a transformer of FLUX.1
[dev]'s width (24 heads × 128, MLP ratio 4, T5-XXL's 4,096-wide text
input) with ``--blocks`` double- and single-stream blocks, then trains a
LoRA on it once per variant, each in its own process (a fresh allocator),
the variants interleaved. A worker loads the transformer as diffengine does
(``from_pretrained(torch_dtype=bfloat16, quantization_config=...)`` with
:func:`~diffengine.models.utils.quantization.build_quantization`'s config),
injects the FLUX.1 config's adapter through diffengine's adapter code
(rank 16 on the attention projections, fp32), then runs AdamW steps at
512 px (1,024 packed image tokens) with ``--text-tokens`` T5 tokens.

Peak memory is the process's resident high-water mark (``VmHWM``) during
the steps only: the mark is reset after loading by writing 5 to
``/proc/self/clear_refs``. The workers run with glibc's
``MALLOC_MMAP_THRESHOLD_`` at 64 KiB (:data:`LIVE_MALLOC`), so that every
tensor beyond it is mmapped and given back when freed and the mark counts
live tensors, as a GPU's allocator does, not what glibc keeps for reuse;
``--glibc-defaults`` turns that off. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as a script: make `benchmarks` importable
    sys.path.insert(0, REPO)

#: The frozen base of each variant: bf16, or the ``model.quantization`` of
#: torchao's weight-only int8 / float8 (over bf16 compute), or quanto's
#: int8 (whose linear saves the int8 weight for the backward pass, where
#: torchao's saves a bf16 copy).
BASES = {
    "bf16": None,
    "int8": dict(backend="torchao", weights="int8"),
    "float8": dict(backend="torchao", weights="float8"),
    "quanto-int8": dict(backend="quanto", weights="int8"),
}
#: The workers' glibc settings: a fixed mmap threshold of 64 KiB (by
#: default it grows to the largest block freed, up to 32 MiB, after which
#: freed tensors stay in the heap and in the resident memory).
LIVE_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "65536"}
#: FLUX.1 [dev]'s blocks.
FULL_BLOCKS = (19, 38)
#: 512 px: a 64 × 64 latent packed 2 × 2.
IMAGE_TOKENS = 1024
GIB = 2**30


# ---- resident memory (Linux) -------------------------------------------
def status_kib(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def resident_bytes() -> int:
    """The process's resident memory now."""
    return status_kib("VmRSS") * 1024


def peak_resident_bytes() -> int:
    """The resident high-water mark since start or the last
    :func:`reset_peak_resident`."""
    return status_kib("VmHWM") * 1024


def reset_peak_resident() -> None:
    """Reset the resident high-water mark to the resident memory now
    (Linux ≥ 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


# ---- bytes of the weights --------------------------------------------
def tensor_bytes(tensor) -> int:
    """Bytes a tensor holds; a tensor subclass (torchao's quantized
    weights) is the sum of its inner tensors (values and scales)."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, n)) for n in names)
    return tensor.numel() * tensor.element_size()


def weight_bytes(module) -> int:
    """Bytes of a module's parameters and buffers, quantized or not."""
    return sum(tensor_bytes(t) for t in (*module.parameters(),
                                         *module.buffers()))


def split_parts(transformer, measure) -> dict[str, int]:
    """``measure`` (bytes, parameters) of one double-stream block, one
    single-stream block and the rest (embedders, final norm and projection)
    of a FLUX.1 transformer."""
    double = measure(transformer.transformer_blocks[0])
    single = measure(transformer.single_transformer_blocks[0])
    blocks = (len(transformer.transformer_blocks) * double
              + len(transformer.single_transformer_blocks) * single)
    return dict(double=double, single=single,
                rest=measure(transformer) - blocks)


def part_bytes(transformer) -> dict[str, int]:
    """Bytes of the parts :func:`split_parts` names, quantized or not."""
    return split_parts(transformer, weight_bytes)


def part_parameters(transformer) -> dict[str, int]:
    """Parameters of the parts :func:`split_parts` names."""
    return split_parts(transformer, lambda module: sum(
        p.numel() for p in module.parameters()))


def full_size(parts: dict[str, int], blocks=FULL_BLOCKS) -> int:
    """``rest + doubles × double + singles × single``: parameters or bytes
    of the transformer with ``blocks`` (FLUX.1 [dev]'s by default)."""
    return parts["rest"] + blocks[0] * parts["double"] + (
        blocks[1] * parts["single"])


def block_units(blocks: tuple[int, int]) -> float:
    """Blocks counted in units of 1 double + 2 single (FLUX.1's 19 + 38 is
    19 units, 2 + 4 is 2)."""
    return (blocks[0] + blocks[1] / 2) / 2


def extrapolate(step_bytes: dict[tuple[int, int], int],
                blocks=FULL_BLOCKS) -> tuple[int, int]:
    """Memory the steps add on top of the loaded model (peak − load) at
    ``blocks``, from measurements at one or two block counts.

    Two block counts in FLUX.1's 1 : 2 ratio give a fixed part and a part
    per unit (1 double + 2 single) by a straight line through both; one
    alone is scaled by the units (an upper bound: its fixed part is scaled
    too).

    Returns:
        tuple[int, int]: The estimate and the bytes per unit it used.
    """
    (few, few_bytes), *more = sorted(step_bytes.items(),
                                     key=lambda kv: block_units(kv[0]))
    if not more:
        per_unit = few_bytes / block_units(few)
        return round(per_unit * block_units(blocks)), round(per_unit)
    many, many_bytes = more[-1]
    per_unit = (many_bytes - few_bytes) / (block_units(many)
                                           - block_units(few))
    fixed = few_bytes - per_unit * block_units(few)
    return round(fixed + per_unit * block_units(blocks)), round(per_unit)


# ---- one variant, in its own process -----------------------------------
def lora_config() -> dict:
    """The transformer adapter of the FLUX.1 [dev] config."""
    from mmengine.config import Config
    cfg = Config.fromfile(os.path.join(
        REPO, "configs/_base_/models/flux_dev_lora.py"))
    return cfg.model.transformer_lora_config.to_dict()


def step_inputs(transformer, text_tokens: int, seed: int = 0) -> dict:
    """A batch of one at 512 px: noisy packed latents, T5 states, CLIP's
    pooled output, σ, position ids and [dev]'s guidance 1.0."""
    import torch
    from diffusers import FluxPipeline

    generator = torch.Generator().manual_seed(seed)
    config = transformer.config
    side = int(IMAGE_TOKENS ** 0.5)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).to(torch.bfloat16)

    inputs = dict(
        hidden_states=randn(1, IMAGE_TOKENS, config.in_channels),
        encoder_hidden_states=randn(1, text_tokens,
                                    config.joint_attention_dim),
        pooled_projections=randn(1, config.pooled_projection_dim),
        timestep=torch.tensor([0.7], dtype=torch.bfloat16),
        img_ids=FluxPipeline._prepare_latent_image_ids(
            1, side, side, "cpu", torch.bfloat16),
        txt_ids=torch.zeros(text_tokens, 3, dtype=torch.bfloat16),
        return_dict=False)
    if config.guidance_embeds:
        inputs["guidance"] = torch.tensor([1.0], dtype=torch.bfloat16)
    return inputs


def run_variant(model: str, base: str, checkpointing: bool,
                text_tokens: int, steps: int, warmup: int) -> dict:
    """Load, adapt and train the transformer in ``model`` with the frozen
    ``base`` (a key of :data:`BASES`); the figures of one table row."""
    import torch
    from diffusers import FluxTransformer2DModel

    from diffengine.adapters.kinds import add_adapter
    from diffengine.models.utils.quantization import (
        build_quantization,
        keep_quantized_for_backward,
    )

    torch.manual_seed(0)
    quantization = build_quantization(BASES[base])
    quantized = {} if quantization is None else {
        "quantization_config": quantization.diffusers_config()}
    # the process before the model: Python, torch, diffusers, the backend
    start_bytes = resident_bytes()
    start = time.perf_counter()
    # Read into anonymous memory, as a GPU holds the weights in its own:
    # mmapped file pages would count in the resident memory, or not, at the
    # kernel's whim. The bf16 file that quantization reads is freed.
    transformer = FluxTransformer2DModel.from_pretrained(
        model, torch_dtype=torch.bfloat16, disable_mmap=True, **quantized)
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    keep_quantized_for_backward(transformer)
    transformer.requires_grad_(False)
    add_adapter(transformer, lora_config(), "transformer_lora_config")
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=1e-2)
    inputs = step_inputs(transformer, text_tokens)
    target = torch.randn_like(inputs["hidden_states"], dtype=torch.float32)
    load_s = time.perf_counter() - start
    load_bytes = resident_bytes()
    reset_peak_resident()
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        prediction = transformer(**inputs)[0]
        loss = torch.nn.functional.mse_loss(prediction.float(), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    config = transformer.config
    return dict(
        base=base, checkpointing=checkpointing,
        blocks=[config.num_layers, config.num_single_layers],
        text_tokens=text_tokens, image_tokens=IMAGE_TOKENS,
        weight_bytes=weight_bytes(transformer),
        part_bytes=part_bytes(transformer),
        trainable_parameters=sum(p.numel() for p in trainable),
        load_s=load_s, start_bytes=start_bytes, load_bytes=load_bytes,
        file_bytes=status_kib("RssFile") * 1024,
        peak_bytes=peak_resident_bytes(), step_s=times[warmup:],
        loss=loss.item())


# ---- the run -------------------------------------------------------------
def make_model(folder: str, blocks: tuple[int, int]) -> str:
    """Write FLUX.1 [dev]'s transformer with ``blocks`` in bf16 under
    ``folder`` (once); returns its path."""
    import torch
    from diffusers import FluxTransformer2DModel

    from diffengine.testing.flux import FLUX_TRANSFORMER_CONFIG

    path = os.path.join(folder, f"flux-dev-{blocks[0]}-{blocks[1]}")
    if os.path.isfile(os.path.join(path, "config.json")):
        return path
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        transformer = FluxTransformer2DModel(
            **{**FLUX_TRANSFORMER_CONFIG, "num_layers": blocks[0],
               "num_single_layers": blocks[1]}, guidance_embeds=True)
    finally:
        torch.set_default_dtype(default)
    transformer.save_pretrained(path)
    return path


def full_parameters() -> dict[str, int]:
    """:func:`part_parameters` of FLUX.1 [dev]'s transformer, counted on
    the meta device."""
    import torch
    from diffusers import FluxTransformer2DModel

    from diffengine.testing.flux import FLUX_TRANSFORMER_CONFIG

    with torch.device("meta"):
        transformer = FluxTransformer2DModel(**FLUX_TRANSFORMER_CONFIG,
                                             guidance_embeds=True)
    return part_parameters(transformer)


def estimates(rows: list[dict]) -> list[dict]:
    """FLUX.1 [dev]'s full transformer for each base and checkpointing:
    its weights (bytes per block as loaded × 19 + 38) and the memory the
    steps add (:func:`extrapolate`)."""
    out = []
    for base in dict.fromkeys(r["base"] for r in rows):
        for checkpointing in (False, True):
            mine = [r for r in rows if r["base"] == base
                    and r["checkpointing"] == checkpointing]
            if not mine:
                continue
            weights = full_size(mine[0]["part_bytes"])
            steps, per_unit = extrapolate({
                tuple(r["blocks"]): r["peak_bytes"] - r["load_bytes"]
                for r in mine})
            out.append(dict(base=base, checkpointing=checkpointing,
                            weight_bytes=weights, step_bytes=steps,
                            step_bytes_per_unit=per_unit,
                            peak_bytes=weights + steps))
    return out


def model_peak(row: dict) -> int | None:
    """Peak RSS less the process before loading (Python and the
    libraries): what the model and its training take."""
    if "start_bytes" not in row:
        return None
    return row["peak_bytes"] - row["start_bytes"]


def ratio_to_bf16(row: dict, rows: list[dict], key=lambda r: r["peak_bytes"]
                  ) -> float | None:
    """``key(row)`` over the bf16 row's with the same blocks and
    checkpointing."""
    for other in rows:
        if other["base"] == "bf16" and other["checkpointing"] == (
                row["checkpointing"]) and other.get("blocks") == (
                    row.get("blocks")):
            if key(row) is None or key(other) is None:
                return None
            return key(row) / key(other)
    return None


def gib(value: int | None) -> str:
    return "" if value is None else f"{value / GIB:.2f}"


def ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def format_table(rows: list[dict]) -> str:
    lines = ["| blocks | base | checkpointing | weights GiB "
             "| before load GiB | load RSS GiB | peak RSS GiB "
             "| peak − load GiB | s/step | peak ÷ bf16 "
             "| (peak − before load) ÷ bf16 |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: "
             "| ---: | ---: |"]
    for r in rows:
        step = statistics.median(r["step_s"])
        lines.append(
            f"| {r['blocks'][0]} + {r['blocks'][1]} | {r['base']} "
            f"| {'on' if r['checkpointing'] else 'off'} "
            f"| {gib(r['weight_bytes'])} | {gib(r.get('start_bytes'))} "
            f"| {gib(r['load_bytes'])} | {gib(r['peak_bytes'])} "
            f"| {gib(r['peak_bytes'] - r['load_bytes'])} "
            f"| {step:.1f} | {ratio(ratio_to_bf16(r, rows))} "
            f"| {ratio(ratio_to_bf16(r, rows, model_peak))} |")
    return "\n".join(lines)


def format_estimates(full: list[dict]) -> str:
    lines = ["| base | checkpointing | weights GiB | steps add GiB "
             "(per 1 + 2 blocks) | peak GiB | peak ÷ bf16 |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for e in full:
        lines.append(
            f"| {e['base']} | {'on' if e['checkpointing'] else 'off'} "
            f"| {e['weight_bytes'] / GIB:.1f} "
            f"| {e['step_bytes'] / GIB:.1f} "
            f"({e['step_bytes_per_unit'] / GIB:.2f}) "
            f"| {e['peak_bytes'] / GIB:.1f} "
            f"| {ratio(ratio_to_bf16(e, full))} |")
    return "\n".join(lines)


def print_report(report: dict) -> None:
    """The rows, then FLUX.1 [dev]'s estimates."""
    average = ", ".join(f"{x:.2f}" for x in report["load_average"])
    print(f"\n{report['minutes']:.1f} minutes, load average {average} at "
          "the end\n", format_table(report["rows"]),
          f"\nFLUX.1 [dev], {full_size(report['full_parameters']):,} "
          f"parameters ({report['full_parameters']}):",
          format_estimates(report["full"]), sep="\n")


def run_worker(model: str, base: str, checkpointing: bool,
               args: argparse.Namespace) -> dict:
    """:func:`run_variant` in a fresh Python process."""
    command = [sys.executable, os.path.abspath(__file__), "--worker",
               "--model", model, "--bases", base,
               "--checkpointing", "on" if checkpointing else "off",
               "--text-tokens", str(args.text_tokens),
               "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads)]
    env = dict(os.environ, **({} if args.glibc_defaults else LIVE_MALLOC))
    done = subprocess.run(command, capture_output=True, text=True,
                          check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_blocks(text: str) -> tuple[int, int]:
    double, single = text.split(":")
    return int(double), int(single)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=os.path.join(
        tempfile.gettempdir(), "diffengine-memory-bench"),
        help="where the transformers are written (once)")
    parser.add_argument("--blocks", type=parse_blocks, nargs="+",
                        default=[(2, 4)], help="double:single blocks of "
                        "each model (default 2:4); two counts in the 1 : 2 "
                        "ratio, e.g. 2:4 1:2, give the per-block figure")
    parser.add_argument("--bases", nargs="+", choices=list(BASES),
                        default=["bf16", "int8", "float8"])
    parser.add_argument("--checkpointing", choices=["both", "on", "off"],
                        default="both")
    parser.add_argument("--text-tokens", type=int, default=512,
                        help="T5 tokens (FLUX.1 [dev]'s 512, [schnell]'s "
                        "256)")
    parser.add_argument("--steps", type=int, default=1,
                        help="measured steps after --warmup")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--glibc-defaults", action="store_true",
                        help="run the workers with glibc's own mmap "
                        "threshold: the peak then counts freed memory that "
                        "glibc keeps")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--from-json", help="print the tables of a --json "
                        "file again, run nothing")
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true",
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    checkpointing_values = {"both": (False, True), "on": (True, ),
                            "off": (False, )}[args.checkpointing]

    if args.from_json:
        with open(args.from_json) as f:
            print_report(json.load(f))
        return 0
    import torch
    torch.set_num_threads(args.threads)
    if args.worker:
        row = run_variant(args.model, args.bases[0], checkpointing_values[0],
                          args.text_tokens, args.steps, args.warmup)
        print(json.dumps(row))
        return 0

    from benchmarks.train_step import versions

    print(versions(), f"load average {os.getloadavg()}", sep="\n",
          flush=True)
    models = {blocks: make_model(args.folder, blocks)
              for blocks in args.blocks}
    rows = []
    start = time.time()
    # interleaved: every base at one setting before the next setting
    for checkpointing in checkpointing_values:
        for model in models.values():
            for base in args.bases:
                rows.append(run_worker(model, base, checkpointing, args))
                print(format_table(rows[-1:]).splitlines()[-1],
                      f"load average {os.getloadavg()[0]:.1f}", flush=True)
    full = estimates(rows)
    report = dict(rows=rows, full=full, full_parameters=full_parameters(),
                  minutes=(time.time() - start) / 60,
                  load_average=os.getloadavg(), versions=versions(),
                  malloc={} if args.glibc_defaults else LIVE_MALLOC,
                  command=sys.argv)
    print_report(report)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
