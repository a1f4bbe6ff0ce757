#!/usr/bin/env python3
"""Download the official Qwen3-TTS-12Hz-0.6B-Base checkpoint and convert it for the runtime.

    python scripts/fetch_model.py [--out models/qwen3-tts-0.6b] [--quant q4_k_m]
    python scripts/fetch_model.py --checkpoint /path/to/local/copy   # no download
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.convert import QUANTS, REPO_ID, ConversionError, convert  # noqa: E402


def download(repo_id: str, dest: Path, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, local_dir=str(dest)))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {text[:120]}" if text else type(e).__name__
        raise SystemExit(f"error: cannot download {repo_id} ({reason}). If you have a copy of the checkpoint, "
                         f"pass it with --checkpoint DIR.") from None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", default=REPO_ID, help="Hugging Face repository id")
    ap.add_argument("--revision", default=None, help="branch, tag or commit")
    ap.add_argument("--checkpoint", type=Path, help="use this local checkpoint directory instead of downloading")
    ap.add_argument("--download-dir", type=Path, default=Path("models/checkpoint"),
                    help="where the download goes (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=Path("models/qwen3-tts-0.6b"),
                    help="runtime model directory to write (default: %(default)s)")
    ap.add_argument("--quant", default="q4_k_m", choices=QUANTS)
    ap.add_argument("--predictor-quant", choices=QUANTS, default=None)
    a = ap.parse_args(argv)
    ckpt = a.checkpoint if a.checkpoint else download(a.repo, a.download_dir, a.revision)
    try:
        convert(ckpt, a.out, a.quant, a.predictor_quant)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"model ready in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
