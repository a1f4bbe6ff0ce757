#!/usr/bin/env bash
# Create (or refresh) the project virtual environment in .venv.
#   scripts/setup_env.sh            runtime only (what the board needs)
#   scripts/setup_env.sh convert    + conversion tools (torch, qwen-tts, gguf, onnx)
#   scripts/setup_env.sh dev        + conversion + test tools
# Idempotent: a stamp keyed on pyproject.toml and the install level skips work already done.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"
case "$extras" in
  "") spec="."; level=0 ;;
  convert) spec=".[convert]"; level=1 ;;
  dev) spec=".[convert,dev]"; level=2 ;;
  *) echo "usage: $0 [convert|dev]" >&2; exit 2 ;;
esac
# dev: the web page test (tests/test_web.py) drives Debian's Chromium; install it when missing and we can
# (root + apt-get). Checked on every run (cheap), before the stamp: a removed browser comes back.
if [ "$level" = 2 ] && ! { command -v chromium >/dev/null && command -v chromedriver >/dev/null; }; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    aptlog="$(mktemp)"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver \
             >"$aptlog" 2>&1 \
           || { DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$aptlog" 2>&1 \
                && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
                     chromium-driver >>"$aptlog" 2>&1; }; }; then
      echo "setup_env: could not install chromium + chromium-driver with apt-get (see $aptlog);" \
           "tests/test_web.py will skip (fail with CI=true)" >&2
    else
      rm -f "$aptlog"
    fi
  else
    echo "setup_env: chromium + chromium-driver missing and not root with apt-get: install them" \
         "(apt-get install chromium chromium-driver) or tests/test_web.py skips (fails with CI=true)" >&2
  fi
fi
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=".venv/.qwen3-tts-setup"
hash="$(sha256sum pyproject.toml | cut -c1-16)"
# dev includes convert includes runtime: a stamp at the same or a higher level is enough.
if [ -f "$stamp" ] && awk -v h="$hash" -v l="$level" '$1 == h && $2 >= l {found=1} END {exit !found}' "$stamp"; then
  exit 0
fi
. .venv/bin/activate
pip install -q --upgrade pip wheel setuptools
# llama.cpp: a -march=native build hits SIGILL on some x86 VMs (AMX kernels), so build portable on x86.
if [ "$(uname -m)" = "x86_64" ]; then export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"; fi
if [ "$(uname -m)" = "aarch64" ]; then
  # The board: the NPU runtime (rknn-toolkit-lite2, aarch64 only) too; torch (conversion only) is PyPI's
  # aarch64 wheel, a CPU build (pyproject.toml pins it per machine). llama-cpp-python builds natively with
  # the A76/A55 features (docs/BOARD.md); a prebuilt wheel in PIP_FIND_LINKS is used as it is.
  spec="${spec%]}"; [ "$spec" = "." ] && spec=".[rknn]" || spec="$spec,rknn]"
  export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16}"
  if [ -n "$extras" ]; then pip install -q "torch==2.9.1"; fi
elif [ -n "$extras" ]; then
  # Install the CPU torch first so qwen-tts cannot pull a CUDA build.
  pip install -q "torch==2.13.0"
fi
pip install -q -e "$spec"
if [ -n "$extras" ]; then
  # qwen-tts pulls a CUDA-linked torchaudio that cannot load here; the 12 Hz path never needs it
  # (scripts/official.py registers a stand-in module instead).
  pip uninstall -q -y torchaudio 2>/dev/null || true
fi
echo "$hash $level" >> "$stamp"
