"""The onnxruntime CPU session every runtime engine uses (vocoder, its RKNN CPU head, voice encoders)."""
from __future__ import annotations

from pathlib import Path


def cpu_session(path: str | Path, threads: int | None, *, spinning: bool = False, mem_arena: bool = True,
                providers: list | None = None):
    """Sequential execution, full graph optimisation, one inter-op thread and `threads` intra-op threads
    (None or 0: onnxruntime's default). Spinning is off by default: a daemon pinned next to llama.cpp must
    not burn its core between calls. onnxruntime's own exceptions propagate; callers turn them into theirs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.enable_cpu_mem_arena = mem_arena
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])
