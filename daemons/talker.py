"""Talker engine: the 28-layer talker LLM in llama.cpp, fed prompt/feedback embedding rows.
Each call returns the post-norm hidden state (for the code predictor) and the codec-head logits
(codebook 0 + control tokens) of the last row."""
from __future__ import annotations

import numpy as np

from .llama_backend import EmbeddingLM
from .manifest import ModelDir


class TalkerEngine:
    def __init__(self, md: ModelDir, threads: int, n_ctx: int = 4096):
        self.md = md
        self.lm = EmbeddingLM(md.file(md.talker["gguf"]), n_ctx=n_ctx, threads=threads)
        self.codec_vocab = md.talker["codec_vocab"]
        if self.lm.n_vocab != self.codec_vocab or self.lm.n_embd != md.talker["hidden_size"]:
            raise ValueError(f"talker GGUF ({self.lm.n_vocab} x {self.lm.n_embd}) does not match the manifest")

    @property
    def capacity(self) -> int:
        """Rows that still fit in the context."""
        return self.lm.n_ctx - self.lm.pos

    def prefill(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.lm.reset()
        return self.lm.decode(rows)

    def step(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.lm.decode(row)

    def close(self) -> None:
        self.lm.close()
