#!/usr/bin/env bash
# A MineStudio 1.1.6 environment beside ours, for benchmarks/minestudio_side_by_side.py:
#   bash benchmarks/minestudio_venv.sh [DIR]      (default ../minestudio-venv; prints the Python to pass it)
# The same CPU build of torch as ours first (pip would otherwise pull a CUDA build), then MineStudio without its
# dependency list (which pins av and opencv, and pulls torchvision, ray, pyrender and more), then what its trainer,
# VPT policy and BC objective import (benchmarks/minestudio_loop.py skips the other backbones' imports).
set -euo pipefail
DIR=${1:-$(dirname "$0")/../../minestudio-venv}
python3 -m venv "$DIR"
"$DIR/bin/pip" install -q torch==2.13.0
"$DIR/bin/pip" install -q --no-deps minestudio==1.1.6
"$DIR/bin/pip" install -q lightning hydra-core einops numpy gymnasium gym gym3 absl-py rich \
  opencv-python-headless transformers huggingface_hub
"$DIR/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "$(cd "$DIR" && pwd)/bin/python"
