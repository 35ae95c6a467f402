"""GPU check of ``model.group_offloading``: one training step with the
frozen denoiser's blocks in CPU memory (CUDA streams, pinned memory) gives
the loss and LoRA gradients of the step without, and takes less GPU memory.

1. The tiny Flux, SD3.5, SD 1.5 and SDXL (fp32, TF32 off), with and without
   gradient checkpointing: loss and every LoRA gradient within 1e-5 of the
   run without offloading. (The CPU tests hold them to 1e-6; on a GPU the
   sums of a gradient may run in another order.)
2. A FLUX.1 [dev]-shaped model with a few blocks of the real width
   (``--num-layers``, ``--num-single-layers``), frozen base in bf16, LoRA
   rank 4, 512 px, gradient checkpointing: loss within 1e-3 relative and
   each LoRA gradient within 1e-2 of the largest (bf16 activations);
   prints the GPU memory held after the move to the GPU and the peak of
   the step, with and without offloading, and asserts the offloaded
   model's is lower.
3. ``--diffusers``: the same Flux-shaped step under diffusers' own
   ``apply_group_offloading`` (built for inference), to show what it does
   under training; printed, not asserted.

Exits with status 1 and a message without CUDA. Run by
``benchmarks/gpu.sh``::

    timeout 300 python benchmarks/offload_check.py --diffusers
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile

import torch

TINY_TOLERANCE = 1e-5
LOSS_RTOL, GRAD_RTOL = 1e-3, 1e-2
STREAMED = dict(offload_type="block_level", num_blocks_per_group=1,
                use_stream=True)
TRANSFORMER_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj",
                       "add_k_proj", "add_v_proj", "to_add_out"]
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def build(family: str, path: str, **kwargs):
    from diffengine.models import (
        Flux,
        StableDiffusion,
        StableDiffusion3,
        StableDiffusionXL,
    )
    model_class = {"flux": Flux, "sd3.5": StableDiffusion3,
                   "sd1.5": StableDiffusion, "sdxl": StableDiffusionXL}[family]
    option, targets = ("unet_lora_config", UNET_TARGETS) if (
        model_class.denoiser_name == "unet") else (
            "transformer_lora_config", TRANSFORMER_TARGETS)
    model = model_class(path, **{option: dict(
        r=4, lora_alpha=4, target_modules=targets)}, **kwargs)
    for name, param in model.named_parameters():
        if param.requires_grad:  # away from LoRA's zero start
            generator = torch.Generator().manual_seed(len(name))
            param.data.normal_(0, 0.05, generator=generator)
    return model


def batch(size: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"img": torch.rand(2, 3, size, size, generator=generator) * 2 - 1,
            "text": ["a red circle", "a blue square"], "seed": [5, 6],
            "time_ids": torch.tensor([[size, size, 0.0, 0.0, size, size]]
                                     * 2)}


def step(model, size: int) -> tuple[torch.Tensor, dict, int, int]:
    """Loss and LoRA gradients of one step on the GPU; the memory held
    after the move and the peak of the step (bytes)."""
    gc.collect()  # the previous model's GPU memory
    torch.cuda.empty_cache()
    model.to("cuda")
    torch.cuda.synchronize()
    held = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss = model(batch(size), mode="loss")["loss"]
    loss.backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    grads = {n: p.grad.float().cpu() for n, p in model.named_parameters()
             if p.requires_grad}
    return loss.detach().float().cpu(), grads, held, peak


def compare(name: str, plain, offloaded, loss_rtol: float | None,
            grad_atol: float | None) -> None:
    loss_difference = (offloaded[0] - plain[0]).abs().item()
    grad_difference = max((offloaded[1][n] - g).abs().max().item()
                          for n, g in plain[1].items())
    largest = max(g.abs().max().item() for g in plain[1].values())
    print(f"{name}: loss {plain[0].item():.6f}, |difference| "
          f"{loss_difference:.2e}; largest LoRA gradient {largest:.2e}, "
          f"largest |difference| {grad_difference:.2e}", flush=True)
    if loss_rtol is None:  # tiny fp32 models: absolute
        assert loss_difference <= TINY_TOLERANCE, name
        assert grad_difference <= TINY_TOLERANCE, name
    else:
        assert loss_difference <= loss_rtol * plain[0].abs().item(), name
        assert grad_difference <= grad_atol * largest, name


def check_tiny(folder: str) -> None:
    from diffengine.testing import (
        make_tiny_flux,
        make_tiny_sd,
        make_tiny_sd3,
        make_tiny_sdxl,
    )
    makers = {"flux": make_tiny_flux, "sd3.5": make_tiny_sd3,
              "sd1.5": make_tiny_sd, "sdxl": make_tiny_sdxl}
    for family, make in makers.items():
        path = make(f"{folder}/{family}")
        for checkpointing in (False, True):
            runs = [step(build(family, path,
                               gradient_checkpointing=checkpointing,
                               **offloading), 64)
                    for offloading in ({}, {"group_offloading": STREAMED})]
            compare(f"tiny {family}, checkpointing {checkpointing}", *runs,
                    None, None)


def check_flux_shaped(folder: str, args: argparse.Namespace) -> None:
    from diffengine.testing import make_flux_shaped
    torch.set_default_dtype(torch.bfloat16)
    try:
        path = make_flux_shaped(f"{folder}/flux-shaped", device="cuda",
                                num_layers=args.num_layers,
                                num_single_layers=args.num_single_layers)
    finally:
        torch.set_default_dtype(torch.float32)
    options = dict(weight_dtype="bfloat16", gradient_checkpointing=True)
    runs = []
    for offloading in ({}, {"group_offloading": STREAMED}):
        model = build("flux", path, **options, **offloading)
        runs.append(step(model, 512))
        del model
    for name, (_, _, held, peak) in zip(("without", "with"), runs,
                                        strict=True):
        print(f"Flux-shaped ({args.num_layers} + {args.num_single_layers} "
              f"blocks), {name} group offloading: {held / 2**30:.2f} GiB "
              f"held after .to('cuda'), peak {peak / 2**30:.2f} GiB in the "
              "step", flush=True)
    compare("Flux-shaped, bf16", *runs, LOSS_RTOL, GRAD_RTOL)
    assert runs[1][3] < runs[0][3], "offloading did not lower the peak"
    if args.diffusers:
        check_diffusers_hooks(path, options)


def check_diffusers_hooks(path: str, options: dict) -> None:
    """diffusers' own group offloading under one training step."""
    from diffusers.hooks import apply_group_offloading
    model = build("flux", path, **options)
    model.to("cuda")
    apply_group_offloading(model.denoiser, onload_device="cuda",
                           offload_type="block_level",
                           num_blocks_per_group=1, use_stream=True)
    try:
        model(batch(512), mode="loss")["loss"].backward()
        print("diffusers' apply_group_offloading: the step ran", flush=True)
    except Exception as error:  # what it raises is the finding
        print("diffusers' apply_group_offloading fails under training: "
              f"{str(error).splitlines()[0]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-layers", type=int, default=2,
                        help="double-stream blocks of the Flux-shaped model")
    parser.add_argument("--num-single-layers", type=int, default=4,
                        help="single-stream blocks of the Flux-shaped model")
    parser.add_argument("--diffusers", action="store_true",
                        help="also run diffusers' apply_group_offloading")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("offload_check: no CUDA device; this check needs a GPU",
              file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    with tempfile.TemporaryDirectory() as folder:
        check_tiny(folder)
        check_flux_shaped(folder, args)
    print("offload_check: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
