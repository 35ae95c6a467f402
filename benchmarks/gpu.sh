#!/usr/bin/env bash
# One prepared GPU run, at most 9 minutes on one H100/H200, rank-4 LoRA in
# bf16: the SD1.5 architecture with random weights at 512 px, batch 1/4/8,
# then SDXL base 1.0's at 1024 px, batch 1/2/4; each with and without cached
# latents and gradient checkpointing; samples/s, peak memory and MFU against
# 790 TFLOP/s. Needs diffengine installed over a CUDA build of torch
# (pip install -e .). Rows print as they finish, so a run cut short still
# shows what it measured; with $OUT set, the rows also go to
# $OUT/gpu_sweep.json and $OUT/gpu_sweep_sdxl.json.
set -uo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 300 python benchmarks/gpu_sweep.py --family sd15 \
    --json "${OUT:-.}/gpu_sweep.json" "$@"
sd15=$?
timeout 240 python benchmarks/gpu_sweep.py --family sdxl --batch-sizes 1 2 4 \
    --no-compile --json "${OUT:-.}/gpu_sweep_sdxl.json" "$@"
sdxl=$?
exit $(( sd15 || sdxl ))
