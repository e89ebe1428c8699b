#!/usr/bin/env bash
# The test command: set up the environment if needed, then run the whole suite (slow tests included).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
cd "$ROOT"
exec "$VENV_PYTHON" -m pytest "$@"
