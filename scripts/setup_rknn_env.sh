#!/usr/bin/env bash
# Create (or refresh) .venv-rknn: rknn-toolkit2 (x86_64, CPython 3.11) for scripts/convert_rknn.py.
#
#   bash scripts/setup_rknn_env.sh          # idempotent: a stamp file skips work already done
#
# rknn-toolkit2 2.5.0 pins numpy<=1.26.4, onnx<=1.18, protobuf<=4.25.4 and torch<=2.4.0, which clash with
# the project's .venv (torch 2.13.0, newer onnx), so it lives in its own venv. It is installed with
# --no-deps and every dependency it actually needs is listed here explicitly: a plain `pip install
# rknn-toolkit2` would pull torch 2.4.0 and several GB of CUDA wheels. The rknn.api import needs torch
# only at import time (the ONNX path never runs it); the project's CPU torch wheel (2.13.0, found through
# pip's find-links) is installed --no-deps and works for ONNX conversion + the simulator.
# Only the x86_64 toolkit is installed here; the board needs rknn-toolkit-lite2 (aarch64), see docs/RKNN.md.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${RKNN_VENV:-.venv-rknn}"
PY="${PYTHON:-python3}"
RKNN_VERSION="2.5.0"
TORCH_VERSION="${RKNN_TORCH_VERSION:-2.13.0}"
DEPS=(
  "numpy==1.26.4" "onnx==1.18.0" "protobuf==4.25.4" "onnxruntime>=1.17,<1.23"
  "scipy" "ruamel.yaml" "tqdm" "opencv-python-headless<4.11" "fast-histogram" "psutil"
  "typing_extensions" "sympy" "filelock" "networkx" "jinja2" "fsspec" "MarkupSafe" "mpmath"
)
key="$(printf '%s\n' "$RKNN_VERSION" "$TORCH_VERSION" "${DEPS[@]}" | sha256sum | cut -c1-16)"
stamp="$VENV/.rknn-setup"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
case "$(uname -m)" in
  x86_64) ;;
  *) echo "rknn-toolkit2 wheels exist for x86_64 (and aarch64 Linux from 2.x) only; this is $(uname -m)" >&2 ;;
esac
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip wheel "setuptools<81"
"${pip[@]}" install -q "${DEPS[@]}"
"${pip[@]}" install -q --no-deps "rknn-toolkit2==$RKNN_VERSION"
# torch: imported by rknn.api at import time; no-deps so the CPU wheel is used and no CUDA is pulled
"${pip[@]}" install -q --no-deps "torch==$TORCH_VERSION"
"$VENV/bin/python" - <<'EOF'
from rknn.api import RKNN  # noqa: F401  fails here (not later) when the environment cannot work
import rknn
print("rknn-toolkit2 OK:", getattr(rknn, "__version__", "?"))
EOF
echo "$key" > "$stamp"
