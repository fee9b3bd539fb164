#!/usr/bin/env bash
# VPT-1x and VPT-2x training on a CUDA GPU in bf16, eager and compiled: frames/s, MFU against the device's dense
# bf16 peak, peak memory, data-loader headroom. Installs nothing: run it where minesweep is installed.
#   benchmarks/gpu.sh [--policies vpt_1x vpt_2x] [--steps 30] [--peak-tflops 989] [hydra overrides ...]
#   benchmarks/gpu.sh --dry-run    # the same path on the CPU at tiny shapes (checks the script, not a figure)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu.py "$@"
