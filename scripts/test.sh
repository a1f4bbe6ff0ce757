#!/usr/bin/env bash
# The test command: sets up .venv (runtime + conversion + dev extras) if needed, then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k parity -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
export TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
