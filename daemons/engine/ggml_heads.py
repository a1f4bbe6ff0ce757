"""The code predictor's 15 heads as quantized ggml matvecs (ggml through ctypes, the libraries that ship
with llama-cpp-python).

The heads are 15 [codebook, hidden] matrices; as fp32 numpy matvecs they stream 126 MB per frame (~8 ms
plus the cache misses they cause the next decodes). Stored as Q8_0 (34 bytes per 32 weights) they are 33 MB
and ggml's AVX2/NEON q8_0 dot products run them at a fraction of that time. Each head is one tiny static
graph (mul_mat of the head by a shared input row) built once and replayed: per call only the input row is
copied in."""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

import llama_cpp as L

from .llama_backend import _backend_init

GGML_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}
_lib = None


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _libs():
    """libggml-base (tensors, graphs, quantizers) and libggml-cpu (the CPU backend), from llama-cpp-python's
    own library directory: already loaded by libllama, so these are the same copies llama.cpp uses."""
    global _lib
    if _lib is None:
        d = Path(L.__file__).resolve().parent / "lib"
        base = ctypes.CDLL(str(next(d.glob("libggml-base.*"))))
        cpu = ctypes.CDLL(str(next(d.glob("libggml-cpu.*"))))
        p, sz, i64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64
        for lib, name, res, args in (
                (base, "ggml_init", p, [_InitParams]),
                (base, "ggml_free", None, [p]),
                (base, "ggml_tensor_overhead", sz, []),
                (base, "ggml_graph_overhead", sz, []),
                (base, "ggml_row_size", sz, [ctypes.c_int, i64]),
                (base, "ggml_new_tensor_2d", p, [p, ctypes.c_int, i64, i64]),
                (base, "ggml_mul_mat", p, [p, p, p]),
                (base, "ggml_new_graph", p, [p]),
                (base, "ggml_build_forward_expand", None, [p, p]),
                (base, "ggml_get_data", p, [p]),
                (base, "ggml_quantize_chunk", sz, [ctypes.c_int, p, p, i64, i64, i64, p]),
                (base, "ggml_backend_graph_compute", ctypes.c_int, [p, p]),
                (base, "ggml_backend_free", None, [p]),
                (cpu, "ggml_backend_cpu_init", p, []),
                (cpu, "ggml_backend_cpu_set_n_threads", None, [p, ctypes.c_int])):
            f = getattr(lib, name)
            f.restype, f.argtypes = res, args
        _lib = (base, cpu)
    return _lib


class GgmlHeads:
    """`logits(j, h)`: head j applied to the hidden row h (float32 [hidden]) -> float32 [codebook], a view
    of ggml's output buffer valid until the next call for the same head."""

    def __init__(self, heads: np.ndarray, wtype: str = "q8_0", threads: int = 1):
        if wtype not in GGML_TYPES:
            raise ValueError(f"head type must be one of {', '.join(GGML_TYPES)}, got {wtype!r}")
        _backend_init()
        base, cpu = _libs()
        g, v, d = heads.shape
        t = GGML_TYPES[wtype]
        wbytes = base.ggml_row_size(t, d) * v
        mem = g * (wbytes + 4 * v + 3 * base.ggml_tensor_overhead() + base.ggml_graph_overhead()) \
            + 4 * d + base.ggml_tensor_overhead() + (1 << 16)
        self._base = base
        self.ctx = base.ggml_init(_InitParams(mem, None, False))
        if not self.ctx:
            raise MemoryError(f"ggml_init({mem} bytes) failed")
        self.backend = cpu.ggml_backend_cpu_init()
        if not self.backend:
            base.ggml_free(self.ctx)
            raise RuntimeError("ggml_backend_cpu_init failed")
        cpu.ggml_backend_cpu_set_n_threads(self.backend, max(1, int(threads)))
        self.hidden, self.vocab, self.n_heads, self.wtype = d, v, g, wtype
        self.nbytes = g * wbytes
        self._x = base.ggml_new_tensor_2d(self.ctx, 0, d, 1)
        self._xv = np.ctypeslib.as_array((ctypes.c_float * d).from_address(base.ggml_get_data(self._x)))
        self._graphs, self._outs = [], []
        for j in range(g):
            w = base.ggml_new_tensor_2d(self.ctx, t, d, v)
            dst = base.ggml_get_data(w)
            src = np.ascontiguousarray(heads[j], dtype=np.float32)
            if wtype == "f32":
                ctypes.memmove(dst, src.ctypes.data, src.nbytes)
            elif wtype == "f16":
                h16 = src.astype(np.float16)
                ctypes.memmove(dst, h16.ctypes.data, h16.nbytes)
            else:
                base.ggml_quantize_chunk(t, src.ctypes.data, dst, 0, v, d, None)
            out = base.ggml_mul_mat(self.ctx, w, self._x)
            gf = base.ggml_new_graph(self.ctx)
            base.ggml_build_forward_expand(gf, out)
            self._graphs.append(gf)
            self._outs.append(np.ctypeslib.as_array(
                (ctypes.c_float * v).from_address(base.ggml_get_data(out))))

    def logits(self, j: int, h: np.ndarray) -> np.ndarray:
        self._xv[:] = h
        rc = self._base.ggml_backend_graph_compute(self.backend, self._graphs[j])
        if rc != 0:
            raise RuntimeError(f"ggml graph compute failed with status {rc}")
        return self._outs[j]

    def close(self) -> None:
        if getattr(self, "ctx", None):
            self._base.ggml_backend_free(self.backend)
            self._base.ggml_free(self.ctx)
            self.ctx = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
