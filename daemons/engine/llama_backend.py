"""A llama.cpp model fed input embeddings (llama-cpp-python low-level API).

Both the talker and the code predictor are plain `qwen3` GGUFs whose inputs are embedding rows, not
tokens. One decode returns the post-final-norm hidden state of the last row (what the code predictor
consumes) and the logits of the same row (the talker's codec head)."""
from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

import llama_cpp as L

from .errors import ModelError

_init_lock = threading.Lock()
_initialised = False
_log_cb = None  # the ctypes callback must outlive every llama.cpp call


def _quiet_logs(level_threshold: int = 4) -> None:
    """llama.cpp logs every tensor at load time; keep only errors (GGML_LOG_LEVEL_ERROR = 4)."""
    global _log_cb

    @L.llama_log_callback
    def _cb(level, text, _user):
        if level >= level_threshold and level != 5:  # 5 = CONT (continuation of the previous line)
            try:
                import sys
                sys.stderr.write(text.decode("utf-8", "replace"))
            except Exception:
                pass

    _log_cb = _cb
    L.llama_log_set(_log_cb, ctypes.c_void_p(0))


def _backend_init() -> None:
    global _initialised
    with _init_lock:
        if not _initialised:
            _quiet_logs()
            L.llama_backend_init()
            _initialised = True


class EmbeddingLM:
    """One llama.cpp model + context with a single sequence (id 0) and an explicit position counter."""

    def __init__(self, gguf_path: str | Path, n_ctx: int, threads: int, max_batch: int = 512, kv_type: str = "f32",
                 n_ctx_start: int | None = None):
        """`n_ctx` positions at most; the KV cache starts at `n_ctx_start` of them (default: all) and grows
        (doubling) when more are needed. llama.cpp zeroes the whole KV buffer when it creates a context, so
        every allocated position is resident memory whether used or not (112 KiB each for the f16 talker)."""
        _backend_init()
        path = Path(gguf_path)
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        # read the weights into memory instead of mapping the file: llama.cpp repacks the quantized tensors
        # for the CPU kernels anyway, and a mapping keeps the file's pages resident on top (talker: -200 MB)
        mp.load_mode = L.LLAMA_LOAD_MODE_NONE
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise ModelError(f"llama.cpp could not load {path}")
        self.n_embd = L.llama_model_n_embd(self.model)
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        cp = L.llama_context_default_params()
        cp.n_batch = max(max_batch, 1)
        cp.n_ubatch = max(max_batch, 1)
        cp.n_seq_max = 1
        cp.n_threads = threads
        cp.n_threads_batch = threads
        self.threads = threads
        cp.embeddings = True  # post-norm hidden states of output rows (pooling NONE)
        cp.pooling_type = L.LLAMA_POOLING_TYPE_NONE
        cp.flash_attn_type = 0  # disabled: with an F32 KV cache this matches the reference to ~1e-6
        if kv_type not in ("f32", "f16"):
            raise ValueError(f"kv_type must be f32 or f16, got {kv_type!r}")
        cp.type_k = cp.type_v = L.GGML_TYPE_F32 if kv_type == "f32" else L.GGML_TYPE_F16
        self.kv_type = kv_type
        cp.no_perf = True
        self._cparams, self._path = cp, path
        self.ctx = None
        self.n_ctx = n_ctx
        self._new_context(min(n_ctx, n_ctx_start or n_ctx))
        self.n_ctx = max(self.n_ctx, self.ctx_size)  # llama.cpp may round a size up
        self.max_batch = max(max_batch, 1)
        self._batch = L.llama_batch_init(self.max_batch, self.n_embd, 1)
        self.pos = 0  # next position == number of rows in the KV cache
        self.decode_calls = 0
        self.grows = 0

    def _new_context(self, size: int) -> None:
        self._cparams.n_ctx = size
        ctx = L.llama_init_from_model(self.model, self._cparams)
        if not ctx:
            if self.ctx is None:
                L.llama_model_free(self.model)
            raise ModelError(f"llama.cpp could not create a context of {size} positions for {self._path}")
        self.ctx = ctx
        self.ctx_size = L.llama_n_ctx(ctx)
        L.llama_set_n_threads(ctx, self.threads, self.threads)  # a regrown context keeps set_threads' count
        self._mem = L.llama_get_memory(ctx)
        self._views: dict[int, np.ndarray] = {}  # output buffer address -> numpy view (see _view)

    def set_threads(self, n: int) -> None:
        """Threads for the next decodes (llama.cpp takes them per call; results do not depend on them: each
        output row's dot products stay on one thread)."""
        if n != self.threads:
            L.llama_set_n_threads(self.ctx, n, n)
            self.threads = n

    def reserve(self, n: int) -> None:
        """Room for `n` positions: a KV cache of twice the size (or `n`, up to `n_ctx`), the sequence's rows
        carried over through llama.cpp's state blob. Outputs do not depend on the cache's size (attention
        covers the used cells padded to 256; the rest is masked)."""
        if n <= self.ctx_size:
            return
        if n > self.n_ctx:
            raise ValueError(f"context full: {n} positions > n_ctx {self.n_ctx}")
        size = min(self.n_ctx, max(n, 2 * self.ctx_size))
        pos, data = self.pos, (self._state() if self.pos else None)
        L.llama_free(self.ctx)  # before the new one: never both caches at once
        self.ctx = None
        self._new_context(size)
        self.grows += 1
        self.pos = 0
        if data is not None and not self.load_seq(data, pos):
            raise RuntimeError(f"llama.cpp refused the sequence state while growing the context to {size}")

    def reset(self, keep: int = 0) -> None:
        """Drop the KV cache from position `keep` on (0: empty)."""
        L.llama_memory_seq_rm(self._mem, 0, keep, -1)
        self.pos = keep

    def _view(self, ptr, n: int) -> np.ndarray:
        """A numpy view of n floats at a llama.cpp output pointer. np.ctypeslib.as_array builds a ctypes
        array type per call (~40 µs); the output buffers move only when llama.cpp reallocates them, so the
        views are kept per address."""
        addr = ctypes.cast(ptr, ctypes.c_void_p).value
        if not addr:
            raise RuntimeError("llama.cpp returned no output row")
        v = self._views.get(addr)
        if v is None or v.shape[0] != n:
            if len(self._views) > 64:
                self._views.clear()
            v = self._views[addr] = np.ctypeslib.as_array((ctypes.c_float * n).from_address(addr))
        return v

    def decode(self, rows: np.ndarray, want_logits: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Append `rows` [n, n_embd] at the next positions; return (hidden, logits) of the last row.
        Returned arrays are copies (llama.cpp reuses its output buffers)."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim == 1:
            if rows.shape[0] == self.n_embd and self.pos < self.n_ctx:
                return self.decode_row(rows, want_logits)
            rows = rows[None, :]
        n = rows.shape[0]
        if rows.shape[1] != self.n_embd:
            raise ValueError(f"row width {rows.shape[1]} != model width {self.n_embd}")
        if n == 0:
            raise ValueError("nothing to decode")
        if self.pos + n > self.n_ctx:
            raise ValueError(f"context full: {self.pos} + {n} rows > n_ctx {self.n_ctx}")
        self.reserve(self.pos + n)
        for start in range(0, n, self.max_batch):
            part = rows[start:start + self.max_batch]
            k = part.shape[0]
            last = start + k == n
            b = self._batch
            ctypes.memmove(b.embd, part.ctypes.data, part.nbytes)
            for i in range(k):
                b.pos[i] = self.pos + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = 1 if (last and i == k - 1) else 0
            b.n_tokens = k
            rc = L.llama_decode(self.ctx, b)
            self.decode_calls += 1
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with code {rc}")
            self.pos += k
        return self._outputs(want_logits)

    def decode_row(self, row: np.ndarray, want_logits: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """`decode` of one contiguous float32 row [n_embd] (the predictor's 14 single-row steps, every talker
        step) without the general path's per-row Python loop: only the position changes between calls."""
        if row.dtype != np.float32 or row.shape != (self.n_embd,) or not row.flags.c_contiguous:
            raise ValueError(f"decode_row needs a contiguous float32 row of {self.n_embd}")
        if self.pos >= self.n_ctx:
            raise ValueError(f"context full: {self.pos} + 1 rows > n_ctx {self.n_ctx}")
        if self.pos >= self.ctx_size:
            self.reserve(self.pos + 1)
        b = self._batch
        ctypes.memmove(b.embd, row.ctypes.data, row.nbytes)
        b.pos[0] = self.pos
        b.n_seq_id[0] = 1
        b.seq_id[0][0] = 0
        b.logits[0] = 1
        b.n_tokens = 1
        rc = L.llama_decode(self.ctx, b)
        self.decode_calls += 1
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")
        self.pos += 1
        return self._outputs(want_logits)

    def _outputs(self, want_logits: bool) -> tuple[np.ndarray, np.ndarray | None]:
        hidden = self._view(L.llama_get_embeddings_ith(self.ctx, -1), self.n_embd).copy()
        logits = self._view(L.llama_get_logits_ith(self.ctx, -1), self.n_vocab).copy() if want_logits else None
        return hidden, logits

    def save_seq(self) -> bytes:
        """The KV cache of the sequence (positions 0..pos-1) as llama.cpp's sequence state blob."""
        return bytes(self._state())

    def _state(self) -> bytearray:
        n = L.llama_state_seq_get_size(self.ctx, 0)
        # a bytearray seen through ctypes: a ctypes array's own zeroing and bytes() of it go element by
        # element (0.75 s for a 500-row talker state; llama.cpp's copy itself takes 4 ms)
        out = bytearray(n)
        got = L.llama_state_seq_get_data(self.ctx, (ctypes.c_uint8 * n).from_buffer(out), n, 0)
        if got != n:
            raise RuntimeError(f"llama_state_seq_get_data wrote {got} of {n} bytes")
        return out

    def load_seq(self, data: bytes, pos: int) -> bool:
        """Replace the sequence by a blob from `save_seq` holding `pos` rows; False if llama.cpp refuses it
        (the sequence is then empty)."""
        self.reset()
        if pos > self.n_ctx:
            return False
        self.reserve(pos)
        buf = np.frombuffer(data, np.uint8).ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))  # no copy
        if L.llama_state_seq_set_data(self.ctx, buf, len(data), 0) != len(data) \
                or L.llama_memory_seq_pos_max(self._mem, 0) != pos - 1:
            self.reset()
            return False
        self.pos = pos
        return True

    def close(self) -> None:
        if getattr(self, "ctx", None):
            L.llama_batch_free(self._batch)
            L.llama_free(self.ctx)
            L.llama_model_free(self.model)
            self.ctx = None

    def __del__(self):  # best effort; daemons call close() explicitly
        try:
            self.close()
        except Exception:
            pass
