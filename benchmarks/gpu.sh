#!/usr/bin/env bash
# One prepared GPU run, rank-4 LoRA in bf16. GPU_FAMILIES picks what runs
# (default: all of them, in this order; one FLUX.1 or SD3.5 Large name fits
# a 10-minute limit, two do not, e.g. GPU_FAMILIES=flux-dev-memory bash
# benchmarks/gpu.sh):
#   sd15          the SD1.5 architecture with random weights at 512 px,
#                 batch 1/4/8 (at most 5 minutes)
#   sdxl          SDXL base 1.0's at 1024 px, batch 1/2/4 (4 minutes)
#   sd35          SD3.5 Medium's (its T5 cut to 2 layers) at 1024 px,
#                 batch 1/2/4 (4 minutes); these three each with and
#                 without cached latents and gradient checkpointing
#   flux-dev, flux-schnell
#                 FLUX.1 [dev]'s and [schnell]'s (T5 cut the same way; 24 GB
#                 of bf16 transformer, written, loaded and deleted again) at
#                 1024 px, batch 1/2, with gradient checkpointing, with and
#                 without cached latents (8 minutes each)
#   flux-dev-memory, sd35-large-memory
#                 the full FLUX.1 [dev] / SD3.5 Large (38 blocks of 38 heads
#                 × 64) on one GPU at 1024 px, batch 1, cached latents and
#                 text embeddings (text encoders freed), checkpointing on:
#                 one row per frozen base or switch: bf16, float8 (torchao),
#                 nf4 (bitsandbytes), offloaded blocks
#                 (model.group_offloading, block_level, 1 block per group)
#                 (9 minutes each)
#   flux-dev-sharded, sd35-large-sharded
#                 the same bf16 row on 2 GPUs, the denoiser sharded by FSDP2
#                 (model_wrapper_cfg.type=FullyShardWrapper, torchrun
#                 --nproc-per-node 2); skipped, with a line, on fewer GPUs
#                 (6 minutes each)
#   offload-check benchmarks/offload_check.py: loss and gradients with and
#                 without offloading, the peak memory of both, and what
#                 diffusers' own hooks raise on the same step (5 minutes)
# Samples/s, peak memory and MFU against 790 TFLOP/s. Needs diffengine
# installed over a CUDA build of torch (pip install -e .), bitsandbytes for
# the nf4 rows (a row whose package or option is missing prints why and the
# others run). Rows print as they finish, so a run cut short still shows
# what it measured; with $OUT set, the rows also go to $OUT/gpu_sweep*.json.
# `python benchmarks/gpu_sweep.py --family flux-dev --memory-rows bf16
# float8 nf4 offload sharded --dry-run` prints the memory rows' config
# overrides without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
families=" ${GPU_FAMILIES:-sd15 sdxl sd35 flux-dev flux-schnell flux-dev-memory flux-dev-sharded sd35-large-memory sd35-large-sharded offload-check} "
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
out=${OUT:-.}

# --remove-model unless a later family in GPU_FAMILIES trains the same model
remove_unless() {
    local later
    for later in "$@"; do
        [[ $families == *" $later "* ]] && return
    done
    echo --remove-model
}

# memory rows of FLUX.1 [dev] (flux-dev) or SD3.5 Large (sd35-large)
memory_rows() {
    timeout 540 python benchmarks/gpu_sweep.py --family "$1" \
        --memory-rows bf16 float8 nf4 offload --steps 6 --warmup 2 \
        --num-workers 2 $(remove_unless "$1-sharded") \
        --json "$out/gpu_sweep_${1//-/_}_memory.json"
}

sharded_rows() {
    if [ "$gpus" -lt 2 ]; then
        echo "$1-sharded: skipped, it needs 2 GPUs and this machine has $gpus"
        return 0
    fi
    # written once by one process, then trained by two
    timeout 360 bash -c "python benchmarks/gpu_sweep.py --family $1 \
        --build-only && torchrun --nproc-per-node 2 \
        benchmarks/gpu_sweep.py --family $1 --memory-rows sharded \
        --launcher pytorch --steps 6 --warmup 2 --num-workers 2 \
        --remove-model --json $out/gpu_sweep_${1//-/_}_sharded.json"
}

failed=0
for family in $families; do
    case $family in
        sd15) timeout 300 python benchmarks/gpu_sweep.py --family sd15 \
                  --json "$out/gpu_sweep.json" "$@" ;;
        sdxl) timeout 240 python benchmarks/gpu_sweep.py --family sdxl \
                  --batch-sizes 1 2 4 --no-compile \
                  --json "$out/gpu_sweep_sdxl.json" "$@" ;;
        sd35) timeout 240 python benchmarks/gpu_sweep.py --family sd35 \
                  --batch-sizes 1 2 4 --no-compile \
                  --json "$out/gpu_sweep_sd35.json" "$@" ;;
        flux-dev|flux-schnell)
              timeout 480 python benchmarks/gpu_sweep.py --family "$family" \
                  --batch-sizes 1 2 --steps 8 --warmup 3 --no-compile \
                  $(remove_unless "$family-memory" "$family-sharded") \
                  --json "$out/gpu_sweep_${family//-/_}.json" "$@" ;;
        flux-dev-memory) memory_rows flux-dev ;;
        sd35-large-memory) memory_rows sd35-large ;;
        flux-dev-sharded) sharded_rows flux-dev ;;
        sd35-large-sharded) sharded_rows sd35-large ;;
        offload-check)
              timeout 300 python benchmarks/offload_check.py --diffusers ;;
        *) echo "unknown family $family in GPU_FAMILIES" >&2; false ;;
    esac || failed=1
done
exit $failed
