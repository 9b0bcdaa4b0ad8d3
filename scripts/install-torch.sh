#!/usr/bin/env bash
# Installs torch only when it is missing, so a machine's own build (Colab's CUDA
# torch, a local CPU wheel) is never replaced. Without a GPU we ask for the CPU
# build: the default PyPI wheel is a multi-GB CUDA build.
set -euo pipefail
PY=${PYTHON:-python3}
if "$PY" -c "import torch" 2>/dev/null; then exit 0; fi
if command -v nvidia-smi >/dev/null 2>&1; then
  "$PY" -m pip install torch
else
  "$PY" -m pip install torch==2.13.0 || "$PY" -m pip install torch --index-url https://download.pytorch.org/whl/cpu
fi
