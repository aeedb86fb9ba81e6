#!/usr/bin/env bash
# Install torch 2.13.0 into the given virtualenv, never letting pip pull a CUDA build onto a
# CPU machine: a CPU wheel the machine already offers (pip's find-links) is used when there is
# one, otherwise PyTorch's CPU index. GPU users: see README, "GPU install".
set -euo pipefail
pip="$1/bin/pip"
version="${TORCH_VERSION:-2.13.0}"
if "$1/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$version')" 2>/dev/null; then
  exit 0
fi
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "$pip" install "torch==$version" --index-url "$TORCH_INDEX_URL"
elif wheels="$(mktemp -d)" && "$pip" download -q --no-deps --no-index "torch==$version" -d "$wheels" >/dev/null 2>&1; then
  # the machine's own CPU wheel, installed as that exact file (its dependencies from the index)
  "$pip" install "$wheels"/torch-*.whl
else
  "$pip" install "torch==$version" --index-url https://download.pytorch.org/whl/cpu
fi
