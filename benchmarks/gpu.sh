#!/usr/bin/env bash
# One prepared GPU run, rank-4 LoRA in bf16: the SD1.5 architecture with
# random weights at 512 px, batch 1/4/8 (at most 5 minutes), SDXL base 1.0's
# at 1024 px, batch 1/2/4 (4 minutes), then SD3.5 Medium's (its T5 cut to 2
# layers) at 1024 px, batch 1/2/4 (4 minutes); each with and without cached
# latents and gradient checkpointing; then FLUX.1 [dev]'s and [schnell]'s
# (T5 cut the same way; 24 GB of bf16 transformer, written, loaded and
# deleted again) at 1024 px, batch 1/2, with gradient checkpointing, with
# and without cached latents (8 minutes each); samples/s, peak memory and
# MFU against 790 TFLOP/s. GPU_FAMILIES picks some (default "sd15 sdxl sd35
# flux-dev flux-schnell"; e.g. GPU_FAMILIES=flux-dev bash benchmarks/gpu.sh:
# one FLUX.1 family fits a 10-minute limit, two do not). Needs diffengine
# installed over a CUDA build of torch (pip install -e .). Rows print as
# they finish, so a run cut short still shows what it measured; with $OUT
# set, the rows also go to $OUT/gpu_sweep.json, $OUT/gpu_sweep_sdxl.json,
# $OUT/gpu_sweep_sd35.json, $OUT/gpu_sweep_flux_dev.json and
# $OUT/gpu_sweep_flux_schnell.json.
set -uo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
failed=0
for family in ${GPU_FAMILIES:-sd15 sdxl sd35 flux-dev flux-schnell}; do
    case $family in
        sd15) timeout 300 python benchmarks/gpu_sweep.py --family sd15 \
                  --json "${OUT:-.}/gpu_sweep.json" "$@" ;;
        sdxl) timeout 240 python benchmarks/gpu_sweep.py --family sdxl \
                  --batch-sizes 1 2 4 --no-compile \
                  --json "${OUT:-.}/gpu_sweep_sdxl.json" "$@" ;;
        sd35) timeout 240 python benchmarks/gpu_sweep.py --family sd35 \
                  --batch-sizes 1 2 4 --no-compile \
                  --json "${OUT:-.}/gpu_sweep_sd35.json" "$@" ;;
        flux-dev|flux-schnell)
              timeout 480 python benchmarks/gpu_sweep.py --family "$family" \
                  --batch-sizes 1 2 --steps 8 --warmup 3 --no-compile \
                  --remove-model \
                  --json "${OUT:-.}/gpu_sweep_${family//-/_}.json" "$@" ;;
        *) echo "unknown family $family in GPU_FAMILIES" >&2; false ;;
    esac || failed=1
done
exit $failed
