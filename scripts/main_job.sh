#!/usr/bin/env bash
# The main job: set up the environment if needed, then train, sample and evaluate an NCSN and a DDPM on the
# embedded digits, on CPU (see scripts/main_job.py; pass --output_dir DIR or --quick through).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
exec "$VENV_PYTHON" scripts/main_job.py "$@"
