#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install the package with its dev extra.
# torch is installed as torch==2.13.0 when missing: a bare `torch` requirement would pull a multi-GB CUDA build.
# Sourced by scripts/test.sh; sets VENV_PYTHON for the caller.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HF_DDPM_NCSN_VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
VENV_PYTHON="$VENV/bin/python"
"$VENV_PYTHON" -c "import torch" 2>/dev/null || "$VENV_PYTHON" -m pip install --quiet "torch==2.13.0"
"$VENV_PYTHON" -m pip install --quiet -e "$ROOT[dev]"
export VENV_PYTHON
