#!/usr/bin/env bash
# The test command: sets up .venv (runtime + conversion + dev extras) if needed, then runs pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k parity -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh dev
export TOKENIZERS_PARALLELISM=false
# llama.cpp's CPU backend is built with OpenMP here, whose threads spin-wait at every barrier: with 2
# threads on a 2-core machine where another process keeps one core busy, one tiny-model utterance took
# 20-85 s instead of 0.4 s (measured), and tests timed out by chance. Passive waiting: ~1-2 s under the same
# load, the same results (inherited by the daemons the tests start). The board's daemons keep the default.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec .venv/bin/python -m pytest "$@"
