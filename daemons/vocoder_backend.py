"""The vocoder backend the configuration asks for (`[vocoder] backend`, docs/RKNN.md): the RKNN NPU engine
when it loads, else onnxruntime with one log line saying why. Configuration -> engine wiring, so it lives
with the shells; the engines themselves know nothing of the configuration.

    engine = open_vocoder(model_dir, manifest["vocoder"], VocoderBackend(), threads=2, log=logger)
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from .config import DEFAULT_RKNN_FILE, ConfigError, VocoderBackend, parse_npu_core_mask
from .engine.errors import ModelError
from .engine.vocoder import VocoderEngine
from .engine.vocoder_rknn import RknnUnavailable, RknnVocoderEngine


def open_vocoder(onnx_model: str | Path, state_spec: Mapping[str, Any] | str | Path | None = None,
                 backend_cfg: Any = None, *, threads: int | None = None, model_dir: str | Path | None = None,
                 log: logging.Logger | None = None):
    """The vocoder engine for the configured backend (`daemons.config.VocoderBackend`; None = defaults).

    backend "onnx": onnxruntime. "auto"/"rknn": `RknnVocoderEngine` when the .rknn file (relative to
    `model_dir`, default the folder of `onnx_model`), rknn-toolkit-lite2 and the NPU driver all work,
    else onnxruntime and exactly one log line saying why (info for "auto", warning for "rknn"), with the
    library's own reason in it (what it prints itself is captured, docs/RKNN.md).
    The onnxruntime engine is always built: it is the fallback and decodes the partial chunks."""
    log = log or logging.getLogger("qwen3_tts.vocoder")
    b = backend_cfg if backend_cfg is not None else VocoderBackend()
    cpu = VocoderEngine(onnx_model, state_spec, threads=threads)
    if b.backend == "onnx":
        log.info("vocoder backend: onnxruntime (backend = \"onnx\")")
        return cpu
    base = Path(model_dir) if model_dir is not None else Path(onnx_model).parent
    if Path(onnx_model).is_dir() and model_dir is None:
        base = Path(onnx_model)
    rknn_path = Path(b.rknn_file or DEFAULT_RKNN_FILE)
    if not rknn_path.is_absolute():
        rknn_path = base / rknn_path
    try:
        mask = parse_npu_core_mask(b.npu_core_mask, "vocoder.npu_core_mask")
        eng = RknnVocoderEngine(rknn_path, cpu, core_mask=mask, threads=threads)
    except (RknnUnavailable, ConfigError, ModelError) as e:
        what = getattr(e, "what", "config")
        level = logging.WARNING if b.backend == "rknn" else logging.INFO
        log.log(level, "vocoder backend: onnxruntime (RKNN %s unavailable: %s)", what, e)
        cpu.fallback_reason = f"{what}: {e}"
        return cpu
    log.info("vocoder backend: rknn (%s, %s, %s graph, chunk %d, npu_core_mask %s; partial chunks on onnxruntime)",
             rknn_path, eng.precision, eng.graph, eng.chunk, b.npu_core_mask)
    for line in eng.runtime_log:  # what rknn-toolkit-lite2 printed while starting (captured, not on the console)
        log.debug("rknn-toolkit-lite2: %s", line)
    return eng

