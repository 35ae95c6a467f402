#!/usr/bin/env bash
# One prepared GPU run, at most 8 minutes on one H100/H200: the SD1.5
# architecture with random weights, 512 px, bf16, LoRA rank 4; batch 1/4/8
# with and without cached latents and gradient checkpointing; samples/s,
# peak memory and MFU against 790 TFLOP/s. Needs diffengine installed over a
# CUDA build of torch (pip install -e .). Rows print as they finish, so a
# run cut short still shows what it measured; with $OUT set, the rows also
# go to $OUT/gpu_sweep.json.
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec timeout 480 python benchmarks/gpu_sweep.py --json "${OUT:-.}/gpu_sweep.json" "$@"
