#!/usr/bin/env bash
# bash launch.sh "text" [--language L] [-o output.wav] [--voice voice.json|NAME|x.npy] [--seed N]
#   single shot: sets up if needed, starts the three daemons unless already running, waits until they
#   are ready, synthesizes to output.wav, stops what it started.
# bash launch.sh --daemon       start the daemons and leave them running
# bash launch.sh --stop         stop them
# bash launch.sh --demo "text"  use a tiny RANDOM-WEIGHT model made locally (no download; noise, not speech)
# Model: $QWEN3_TTS_MODEL_DIR or models/qwen3-tts-0.6b (downloaded + converted on first use).
set -euo pipefail
cd "$(dirname "$0")"
demo=0; mode=once; text=""; client_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --demo) demo=1 ;;
    --daemon) mode=daemon ;;
    --stop) mode=stop ;;
    -l|--language|-o|--output|--voice|--seed|--max-frames|--temperature|--top-k|--top-p) client_args+=("$1" "$2"); shift ;;
    --greedy|--streaming|--output-raw) client_args+=("$1") ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    -*) echo "launch.sh: unknown option $1" >&2; exit 2 ;;
    *) text="$1" ;;
  esac
  shift
done
PY=.venv/bin/python
# Where the sockets, pid files and logs live is decided by daemons/config.py alone (the launcher and the
# clients use the same rule): asked below, once the environment exists.
if [ "$mode" = stop ]; then
  [ -x "$PY" ] || exit 0
  exec "$PY" -m daemons.launcher stop
fi
if [ "$mode" = once ] && [ -z "$text" ]; then
  echo "usage: bash launch.sh \"text\" [--language L] [-o out.wav] [--demo] | --daemon | --stop" >&2; exit 2
fi

if [ "$demo" = 1 ]; then
  export QWEN3_TTS_MODEL_DIR="$PWD/models/demo-tiny"
  if [ ! -f "$QWEN3_TTS_MODEL_DIR/manifest.json" ]; then
    bash scripts/setup_env.sh convert
    "$PY" scripts/make_checkpoint.py models/demo-checkpoint --size tiny
    "$PY" scripts/convert.py models/demo-checkpoint "$QWEN3_TTS_MODEL_DIR" --quant f32
  fi
else
  export QWEN3_TTS_MODEL_DIR="${QWEN3_TTS_MODEL_DIR:-$PWD/models/qwen3-tts-0.6b}"
  if [ ! -f "$QWEN3_TTS_MODEL_DIR/manifest.json" ]; then
    bash scripts/setup_env.sh convert
    "$PY" scripts/fetch_model.py --out "$QWEN3_TTS_MODEL_DIR"
  fi
fi
bash scripts/setup_env.sh
QWEN3_TTS_RUNTIME_DIR=$("$PY" -m daemons.config --runtime-dir)
export QWEN3_TTS_RUNTIME_DIR   # the daemons and the client below use exactly this directory

roles=predictor,vocoder,talker
[ "$mode" = daemon ] && roles=$roles,gateway   # the OpenAI-compatible HTTP gateway ([gateway] in the config)
started=$("$PY" -m daemons.launcher start --roles "$roles")
if [ "$mode" = daemon ]; then
  echo "daemons running (sockets in $QWEN3_TTS_RUNTIME_DIR); OpenAI-compatible HTTP as configured in [gateway] (default http://127.0.0.1:8880/v1); stop with: bash launch.sh --stop"
  exit 0
fi
rc=0
"$PY" -m client.cli "$text" "${client_args[@]}" || rc=$?
if [ -n "$started" ]; then "$PY" -m daemons.launcher stop --roles "$started"; fi
exit $rc
