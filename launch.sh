#!/usr/bin/env bash
# Single-shot synthesis:  bash launch.sh "text" [--language L] [-o output.wav] [--seed N]
#   --demo   use a tiny RANDOM-WEIGHT model made locally (no download; the audio is noise, not speech)
# First use sets up .venv and downloads + converts the official checkpoint (scripts/fetch_model.py).
set -euo pipefail
cd "$(dirname "$0")"
demo=0; text=""; lang=auto; out=output.wav; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --demo) demo=1 ;;
    --language|-l) lang="$2"; shift ;;
    -o|--output) out="$2"; shift ;;
    --seed|--max-frames|--chunk-frames|--threads) extra+=("$1" "$2"); shift ;;
    --greedy) extra+=("$1") ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    -*) echo "launch.sh: unknown option $1" >&2; exit 2 ;;
    *) text="$1" ;;
  esac
  shift
done
[ -n "$text" ] || { echo "usage: bash launch.sh \"text\" [--language L] [-o out.wav] [--demo]" >&2; exit 2; }

if [ "$demo" = 1 ]; then
  model=models/demo-tiny
  if [ ! -f "$model/manifest.json" ]; then
    bash scripts/setup_env.sh convert
    .venv/bin/python scripts/make_checkpoint.py models/demo-checkpoint --size tiny
    .venv/bin/python scripts/convert.py models/demo-checkpoint "$model" --quant f32
  fi
else
  model="${QWEN3_TTS_MODEL_DIR:-models/qwen3-tts-0.6b}"
  if [ ! -f "$model/manifest.json" ]; then
    bash scripts/setup_env.sh convert
    .venv/bin/python scripts/fetch_model.py --out "$model"
  fi
fi
bash scripts/setup_env.sh
exec .venv/bin/python -m daemons.synth --model-dir "$model" --text "$text" --language "$lang" \
  --wav-out "$out" "${extra[@]}"
