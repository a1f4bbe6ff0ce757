"""The onnxruntime CPU session every runtime engine uses (vocoder, its RKNN CPU head, voice encoders)."""
from __future__ import annotations

from pathlib import Path

OPT_LEVELS = ("disabled", "basic", "extended", "all")


def cpu_session(path: str | Path, threads: int | None, *, spinning: bool = False, mem_arena: bool = True,
                mem_pattern: bool = True, opt_level: str = "all", optimized_path: str | Path | None = None,
                providers: list | None = None):
    """Sequential execution, full graph optimisation, one inter-op thread and `threads` intra-op threads
    (None or 0: onnxruntime's default). Spinning is off by default: a daemon pinned next to llama.cpp must
    not burn its core between calls. `opt_level` one of OPT_LEVELS ("all" includes the NCHWc layout
    transform of 2-D convolutions); `optimized_path` saves the optimised graph there (onnxruntime's
    offline optimisation; "all" output is specific to this CPU's kernels). onnxruntime's own exceptions
    propagate; callers turn them into theirs."""
    import onnxruntime as ort

    if opt_level not in OPT_LEVELS:
        raise ValueError(f"opt_level must be one of {OPT_LEVELS}, got {opt_level!r}")
    so = ort.SessionOptions()
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[opt_level]
    so.inter_op_num_threads = 1
    if threads:
        so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    so.enable_cpu_mem_arena = mem_arena
    so.enable_mem_pattern = mem_pattern
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
        # weights to one side file (a >2 GB protobuf limit otherwise; and the graph stays readable)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                    Path(optimized_path).name + ".data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return ort.InferenceSession(str(path), so, providers=providers or ["CPUExecutionProvider"])
