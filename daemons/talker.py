"""Talker engine: the 28-layer talker LLM in llama.cpp, fed prompt/feedback embedding rows.
Each call returns the post-norm hidden state (for the code predictor) and the codec-head logits
(codebook 0 + control tokens) of the last row."""
from __future__ import annotations

import numpy as np

from .llama_backend import EmbeddingLM
from .manifest import ModelDir
from .prefix_cache import PrefixCache


class TalkerEngine:
    def __init__(self, md: ModelDir, threads: int, n_ctx: int = 4096, prefix_cache: bool = True,
                 cache_dir=None, cache_bytes: int = 256 << 20):
        self.md = md
        gguf = md.talker["gguf"]
        self.lm = EmbeddingLM(md.file(gguf), n_ctx=n_ctx, threads=threads)
        self.codec_vocab = md.talker["codec_vocab"]
        if self.lm.n_vocab != self.codec_vocab or self.lm.n_embd != md.talker["hidden_size"]:
            raise ValueError(f"talker GGUF ({self.lm.n_vocab} x {self.lm.n_embd}) does not match the manifest")
        # the state blob is only valid for this exact model and KV layout
        ns = f"{md.manifest['files'].get(gguf, gguf)}:kv-f32"
        self.cache = PrefixCache(ns, cache_bytes, cache_dir) if prefix_cache else None
        self.prefill_rows = 0  # rows actually run through the model by prefill()

    @property
    def capacity(self) -> int:
        """Rows that still fit in the context."""
        return self.lm.n_ctx - self.lm.pos

    def prefill(self, rows: np.ndarray, fixed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Start a new utterance. The first `fixed` rows (text-independent) come from the prefix cache
        when it has them; otherwise they are decoded and their KV state is stored for the next time."""
        self.lm.reset()
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
