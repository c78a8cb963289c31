#!/usr/bin/env bash
# Creates .venv (if missing) and installs csekit with the given extras.
# torch is installed FIRST and explicitly: on a machine without torch, a bare `torch`
# requirement would pull a multi-GB CUDA build. Override with CSEKIT_TORCH_SPEC, e.g.
# CSEKIT_TORCH_SPEC="torch" on a GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-test}"
py="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "${CSEKIT_TORCH_SPEC:-torch==2.13.0}"
fi
.venv/bin/python -m pip install -q -e ".[${extras}]"
