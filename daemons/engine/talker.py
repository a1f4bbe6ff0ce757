"""Talker engine: the 28-layer talker LLM in llama.cpp, fed prompt/feedback embedding rows.
Each call returns the post-norm hidden state (for the code predictor) and the codec-head logits
(codebook 0 + control tokens) of the last row."""
from __future__ import annotations

import llama_cpp
import numpy as np

from .llama_backend import EmbeddingLM
from .manifest import ModelDir
from .prefix_cache import PrefixCache


# One segment = prompt (text, or a 30 s in-context reference: ~400 rows) + its frame cap (a 300-character
# sentence: ~25 + 6 x 100 tokens); 2048 positions leave room for both. At full size the KV cache costs
# 28 layers x 2 x 1024 x 2048 = 224 MiB in f16 (4096 in f32 was 896 MiB).
DEFAULT_N_CTX = 2048
# ... but the cache starts at 512 positions (56 MiB) and doubles when a segment needs more: most sentences
# with their prompt fit in 512, and llama.cpp makes every allocated position resident.
N_CTX_START = 512


def kv_type_for(md: ModelDir) -> str:
    """f32 KV for the f32 reference conversion (greedy parity with the official model to ~1e-6);
    f16, llama.cpp's default, for the quantized models that are approximations anyway."""
    return "f32" if md.manifest.get("quant") == "f32" else "f16"


class TalkerEngine:
    def __init__(self, md: ModelDir, threads: int, n_ctx: int = DEFAULT_N_CTX, prefix_cache: bool = True,
                 cache_dir=None, cache_bytes: int = 256 << 20, kv_type: str | None = None,
                 cache_dir_bytes: int = 1 << 30, log=None):
        self.md = md
        gguf = md.talker["gguf"]
        kv_type = kv_type or kv_type_for(md)
        self.lm = EmbeddingLM(md.file(gguf), n_ctx=n_ctx, threads=threads, kv_type=kv_type,
                              n_ctx_start=N_CTX_START)
        self.codec_vocab = md.talker["codec_vocab"]
        if self.lm.n_vocab != self.codec_vocab or self.lm.n_embd != md.talker["hidden_size"]:
            raise ValueError(f"talker GGUF ({self.lm.n_vocab} x {self.lm.n_embd}) does not match the manifest")
        # the state blob is only valid for this exact model, KV layout and llama.cpp state format
        ns = f"{md.manifest['files'].get(gguf, gguf)}:kv-{kv_type}:llama-cpp-{llama_cpp.__version__}"
        self.cache = PrefixCache(ns, cache_bytes, cache_dir, cache_dir_bytes, log) if prefix_cache else None
        self.prefill_rows = 0  # rows actually run through the model by prefill()

    @property
    def capacity(self) -> int:
        """Rows that still fit in the context."""
        return self.lm.n_ctx - self.lm.pos

    def prefill(self, rows: np.ndarray, fixed: int = 0, frames: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Start a new utterance. The first `fixed` rows (text-independent) come from the prefix cache
        when it has them; otherwise they are decoded and their KV state is stored for the next time.
        `frames`: the most steps that will follow; the KV cache grows for them now, while it is empty
        (growing later carries the rows over: a state copy in the middle of the stream)."""
        self.lm.reset()
        self.lm.reserve(min(len(rows) + frames, self.lm.n_ctx))
        fixed = min(fixed, len(rows) - 1)
        if self.cache is not None and fixed > 0:
            key = self.cache.key(rows[:fixed])
            data = self.cache.get(key)
            if data is not None and self.lm.load_seq(data, fixed):
                self.cache.hits += 1
                self.cache.rows_skipped += fixed
            else:
                self.cache.misses += 1
                self.lm.decode(rows[:fixed], want_logits=False)
                self.prefill_rows += fixed
                self.cache.put(key, self.lm.save_seq())
            rows = rows[fixed:]
        self.prefill_rows += len(rows)
        return self.lm.decode(rows)

    def step(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.lm.decode(row)

    def close(self) -> None:
        self.lm.close()
