#!/usr/bin/env bash
# The project on the board's instruction set (issue 16): an arm64 Debian root run under qemu-user
# emulation, with the README's own set-up and a named test selection inside it, `bash launch.sh --demo`,
# the tiny-model greedy parity test on llama.cpp's aarch64 kernels, and the real rknn-toolkit-lite2
# fallback path. Times under emulation mean nothing; behaviour does. Not part of .ci/run (too slow).
#
#   sudo bash scripts/aarch64_check.sh                 # everything (root: binfmt_misc, chroot; it nices its builds)
#   bash scripts/aarch64_check.sh --stage wheel        # only cross-compile the llama-cpp-python wheel
#   bash scripts/aarch64_check.sh --fresh-venv         # rebuild the venv inside the root from scratch
#
# Cache ($QWEN3_TTS_AARCH64_CACHE, default ${XDG_CACHE_HOME:-~/.cache}/qwen3-tts/aarch64): the root
# (root/), the cross-built wheel (wheels/), pip's cache (pip/, shared with the root), logs (logs/).
# A rerun reuses them and takes minutes. Host: Debian (apt-get installs qemu-user-static, mmdebstrap,
# the aarch64 cross compilers).
#
# llama-cpp-python is cross-compiled on the host (compiling it inside the emulated root takes ~50 min on
# 2 cores) with the flags a board build uses for its Cortex-A76 (dotprod + fp16, OpenMP), not this
# host's: on the board itself the same wheel comes from
#   CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.2-a+dotprod+fp16" pip install llama-cpp-python==V
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${QWEN3_TTS_AARCH64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qwen3-tts/aarch64}"
SUITE=bookworm                       # Debian 12: python3.11, as on the host
ARM_ARCH="armv8.2-a+dotprod+fp16"    # RK3588's Cortex-A76 / A55 (both ARMv8.2-A with dotprod and fp16)
# The named test selection run inside (the whole suite is hours under emulation): tiny-model parity
# (greedy codes identical to the official implementation), the vocoder, the RKNN backend (the real
# library's part included), configuration, errors, CPU plan, sampling. The daemons run for real in
# `launch.sh --demo` below; --tests "..." picks another selection (e.g. add tests/test_daemons.py).
TESTS=(tests/test_parity.py tests/test_vocoder.py tests/test_rknn.py tests/test_rknn_lite.py tests/test_config.py
       tests/test_errors.py tests/test_cpu.py tests/test_sampling.py)
stage=all; fresh_venv=0
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) stage="$2"; shift ;;
    --fresh-venv) fresh_venv=1 ;;
    --tests) IFS=' ' read -r -a TESTS <<<"$2"; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "aarch64_check: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
case "$stage" in all|wheel|root|run) ;; *) echo "aarch64_check: --stage all|wheel|root|run" >&2; exit 2 ;; esac
ROOT="$CACHE/root"; WHEELS="$CACHE/wheels"; LOGS="$CACHE/logs"
mkdir -p "$CACHE" "$WHEELS" "$LOGS" "$CACHE/pip"
t0=$SECONDS
say() { printf '[aarch64_check %4ds] %s\n' $((SECONDS - t0)) "$*"; }
die() { say "FAILED: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (mounting binfmt_misc, chroot)"

# --- host tools
need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu)
command -v cmake >/dev/null || need+=(cmake)
command -v rsync >/dev/null || need+=(rsync)
if [ ${#need[@]} -gt 0 ]; then
  say "apt-get install ${need[*]}"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } \
    >"$LOGS/host-apt.log" 2>&1 || die "apt-get install (see $LOGS/host-apt.log)"
fi

# --- the llama-cpp-python wheel, cross-compiled for aarch64 (cached per version)
LLAMA_VER="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$REPO/pyproject.toml")"
[ -n "$LLAMA_VER" ] || die "no llama-cpp-python==VERSION pin in pyproject.toml"
WHEEL="$WHEELS/llama_cpp_python-$LLAMA_VER-py3-none-linux_aarch64.whl"
build_wheel() {
  local b="$CACHE/build" py
  py="$(command -v python3)"
  [ -x "$REPO/.venv/bin/python" ] && py="$REPO/.venv/bin/python"
  rm -rf "$b"; mkdir -p "$b"
  say "downloading the llama-cpp-python $LLAMA_VER sdist"
  "$py" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VER" -d "$b" \
    >"$LOGS/wheel.log" 2>&1 || die "pip download (see $LOGS/wheel.log)"
  cat >"$b/aarch64.cmake" <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
EOF
  say "cross-compiling llama.cpp for $ARM_ARCH (OpenMP, -j2; ~10-20 min on 2 cores; log $LOGS/wheel.log)"
  # scikit-build-core tags the wheel for the build machine; _PYTHON_HOST_PLATFORM makes it linux_aarch64.
  ( cd "$b" && CMAKE_ARGS="-DCMAKE_TOOLCHAIN_FILE=$b/aarch64.cmake -DGGML_NATIVE=OFF -DGGML_OPENMP=ON \
      -DGGML_CPU_ARM_ARCH=$ARM_ARCH -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF" \
      CMAKE_BUILD_PARALLEL_LEVEL=2 _PYTHON_HOST_PLATFORM=linux_aarch64 \
      nice -n 10 "$py" -m pip wheel -v --no-deps "llama_cpp_python-$LLAMA_VER.tar.gz" -w "$b/out" ) \
    >>"$LOGS/wheel.log" 2>&1 || die "cross build (see $LOGS/wheel.log)"
  local w; w="$(ls "$b"/out/llama_cpp_python-*.whl)"
  case "$w" in *linux_aarch64.whl) ;; *) die "built $w, not a linux_aarch64 wheel" ;; esac
  # every shared library in it must be aarch64 code
  ( cd "$b" && rm -rf chk && mkdir chk && cd chk && "$py" -m zipfile -e "$w" . \
    && for f in llama_cpp/lib/*.so; do file -L "$f" | grep -q 'ARM aarch64' || { echo "$f: not aarch64"; exit 1; }; done ) \
    || die "the wheel holds non-aarch64 libraries"
  mv "$w" "$WHEEL"; rm -rf "$b"
  say "wheel: $WHEEL"
}
if [ "$stage" != root ]; then
  if [ -f "$WHEEL" ]; then say "wheel cached: $WHEEL"; else build_wheel; fi
  [ "$stage" = wheel ] && exit 0
fi

# --- a tiny converted .rknn for the real rknn-toolkit-lite2 (rknn-toolkit2 converts on x86_64 only; cached)
RKNN_MODEL="$CACHE/rknn-model"
if [ "$stage" != root ] && [ ! -f "$RKNN_MODEL/vocoder.rknn.json" ]; then
  [ "$(uname -m)" = x86_64 ] || die "the .rknn is converted with rknn-toolkit2 on an x86_64 host"
  say "converting a tiny random-weight model and its vocoder.rknn on the host (log $LOGS/rknn-model.log)"
  {
    bash "$REPO/scripts/setup_env.sh" convert
    RKNN_VENV="$CACHE/venv-rknn" bash "$REPO/scripts/setup_rknn_env.sh"
    rm -rf "$CACHE/rknn-ckpt" "$RKNN_MODEL.tmp"
    "$REPO/.venv/bin/python" "$REPO/scripts/make_checkpoint.py" "$CACHE/rknn-ckpt" --size tiny
    "$REPO/.venv/bin/python" "$REPO/scripts/convert.py" "$CACHE/rknn-ckpt" "$RKNN_MODEL.tmp" --quant f32
    (cd "$REPO" && nice -n 10 "$CACHE/venv-rknn/bin/python" scripts/convert_rknn.py "$RKNN_MODEL.tmp" --eval-chunks 4)
  } >"$LOGS/rknn-model.log" 2>&1 || die "the tiny .rknn (see $LOGS/rknn-model.log)"
  mv "$RKNN_MODEL.tmp" "$RKNN_MODEL"
fi

# --- binfmt_misc + qemu-aarch64
[ -f /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
# Debian 12's qemu-user-static registers through systemd-binfmt (not running here: systemd is not PID 1),
# from its binfmt.d line; update-binfmts exists only with binfmt-support installed.
if [ ! -f /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  if command -v update-binfmts >/dev/null; then update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  elif [ -f /usr/lib/binfmt.d/qemu-aarch64.conf ]; then
    cat /usr/lib/binfmt.d/qemu-aarch64.conf >/proc/sys/fs/binfmt_misc/register || true
  fi
fi
[ -f /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || die "qemu-aarch64 is not registered in binfmt_misc"

# --- the arm64 Debian root (cached)
if [ ! -f "$ROOT/.qwen3-tts-root" ]; then
  say "mmdebstrap arm64 $SUITE root (~3-5 min; log $LOGS/mmdebstrap.log)"
  rm -rf "$ROOT.tmp"
  nice -n 10 mmdebstrap --arch=arm64 --variant=apt \
    --include=python3,python3-venv,python3-pip,python3-dev,ca-certificates,libgomp1,procps \
    "$SUITE" "$ROOT.tmp" >"$LOGS/mmdebstrap.log" 2>&1 || die "mmdebstrap (see $LOGS/mmdebstrap.log)"
  touch "$ROOT.tmp/.qwen3-tts-root"
  mv "$ROOT.tmp" "$ROOT"
else
  say "root cached: $ROOT"
fi

# /proc only: with the host's /sys, onnxruntime's cpuinfo reads the x86 topology and segfaults under
# qemu. The host's DNS and CA bundle so pip can reach PyPI; pip's cache lives outside the root.
mkdir -p "$ROOT/root/.cache/pip" "$ROOT/wheels" "$ROOT/opt/qwen3-tts" "$ROOT/opt/rknn-model"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp -L /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-ca.crt"
mounts=()
cleanup() {
  local m
  for ((i=${#mounts[@]}-1; i>=0; i--)); do m="${mounts[i]}"; umount -l "$m" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { mount --bind "$1" "$2"; mounts+=("$2"); }
mountpoint -q "$ROOT/proc" || { mount -t proc proc "$ROOT/proc"; mounts+=("$ROOT/proc"); }
bind "$CACHE/pip" "$ROOT/root/.cache/pip"
bind "$WHEELS" "$ROOT/wheels"
[ -d "$RKNN_MODEL" ] && bind "$RKNN_MODEL" "$ROOT/opt/rknn-model"
mountpoint -q "$ROOT/dev" || bind /dev "$ROOT/dev"
mkdir -p "$ROOT/dev/shm" "$ROOT/tmp"; chmod 1777 "$ROOT/tmp"
if [ "$stage" = root ]; then say "root ready: chroot $ROOT (mounts stay until you umount them)"; trap - EXIT; exit 0; fi

# --- the checkout, copied in (not its venvs, models or caches)
say "copying the checkout into the root"
rsync -a --delete --exclude=/.venv --exclude=/.venv-rknn --exclude=/models --exclude=.git \
  --exclude=__pycache__ --exclude=.pytest_cache --exclude=/output.wav \
  --filter='P /.venv' --filter='P /models' "$REPO/" "$ROOT/opt/qwen3-tts/"
[ "$fresh_venv" = 1 ] && rm -rf "$ROOT/opt/qwen3-tts/.venv" "$ROOT/opt/qwen3-tts/models"

# Run a command inside the root, in the checkout, with its output in a log and its tail on failure.
# QEMU_CPU=cortex-a76 emulates the board's big core (ARMv8.2-A, dotprod, fp16, no SVE): under qemu 7.2's
# default `max` CPU, PyPI's aarch64 torch dies with SIGILL in its first ConvTranspose1d (seen while
# converting the tiny checkpoint), and the board has no SVE anyway.
inroot() {
  local name="$1"; shift
  say "[arm64] $name: $*"
  if ! chroot "$ROOT" /usr/bin/env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 QEMU_CPU=cortex-a76 \
        PIP_CERT=/etc/ssl/certs/host-ca.crt PIP_FIND_LINKS=/wheels PIP_DISABLE_PIP_VERSION_CHECK=1 \
        PIP_DEFAULT_TIMEOUT=180 TOKENIZERS_PARALLELISM=false OMP_WAIT_POLICY=PASSIVE \
        /bin/bash -c 'cd /opt/qwen3-tts && "$@"' bash "$@" >"$LOGS/$name.log" 2>&1; then
    tail -n 40 "$LOGS/$name.log"
    die "$name (full log: $LOGS/$name.log)"
  fi
  tail -n 3 "$LOGS/$name.log" | sed 's/^/    /'
}
inroot uname uname -m
grep -qx aarch64 "$LOGS/uname.log" || die "the root does not run aarch64 code"
# The README's set-up: scripts/test.sh's `bash scripts/setup_env.sh dev` (runtime + conversion + test
# tools; on aarch64 it takes torch from PyPI and adds rknn-toolkit-lite2, see setup_env.sh).
inroot setup bash scripts/setup_env.sh dev
inroot versions .venv/bin/python -c 'import platform, llama_cpp, onnxruntime, numpy, rknnlite, torch
print(platform.machine(), "llama_cpp", llama_cpp.__version__, "onnxruntime", onnxruntime.__version__,
      "numpy", numpy.__version__, "torch", torch.__version__)
print(llama_cpp.llama_print_system_info().decode())'
# The README's test command with the named selection; tests/test_rknn_lite.py's real-library test loads the
# host-converted .rknn with the real rknn-toolkit-lite2 (no NPU here: the fallback path).
inroot tests env QWEN3_TTS_RKNN_TEST_MODEL=/opt/rknn-model bash scripts/test.sh -q -rs -p no:cacheprovider \
  "${TESTS[@]}"
grep -E '^[0-9]+ passed|passed|failed|error' "$LOGS/tests.log" | tail -n 1 | sed 's/^/    /'
# The demo pipeline: three real daemons on the random-weight tiny model (noise, not speech).
inroot demo bash launch.sh --demo "hello" -o /tmp/demo.wav
inroot demo-wav .venv/bin/python -c 'import soundfile as sf; d, r = sf.read("/tmp/demo.wav"); print(f"/tmp/demo.wav: {len(d)/r:.2f} s at {r} Hz (random weights: noise)")'
say "all passed on $(cat "$LOGS/uname.log") (logs in $LOGS)"
