"""Code-predictor engine: the 5-layer predictor in llama.cpp (per-step decodes with a fresh KV cache
per frame), the 15 heads and the feedback embedding for the talker's next step (MODEL.md section 4)."""
from __future__ import annotations

import numpy as np

from .ggml_heads import GGML_TYPES, GgmlHeads
from .llama_backend import EmbeddingLM
from .manifest import ModelDir
from .prompt import frame_embeddings
from .sampling import SamplingParams, frame_rng, sample_sub


def default_head_type(predictor_quant: str | None) -> str:
    """fp32 numpy heads for an f32 predictor (the exact reference: greedy parity), else F16 heads in ggml:
    half the bytes (63 MB per frame), ~2e-4 relative logit error, 97 % of codes as with fp32 heads on random
    weights (Q8_0: faster still but 86 % greedy / 46 % sampled; docs/PERFORMANCE.md, issue 15 session 7)."""
    return "numpy" if (predictor_quant or "f32") == "f32" else "f16"


class PredictorEngine:
    def __init__(self, md: ModelDir, threads: int, head_type: str | None = None):
        """head_type: "numpy" (fp32 numpy matvecs) or a ggml weight type (f32, f16, q8_0, q4_0); None
        picks `default_head_type` of the model's predictor quantization."""
        self.md = md
        self.n_groups = md.talker["num_code_groups"]
        self.lm = EmbeddingLM(md.file(md.predictor["gguf"]), n_ctx=self.n_groups + 1, threads=threads,
                              max_batch=2)
        self.codec = md.codec_embedding          # talker table: C(c0) is the predictor's second input
        self.tables = md.predictor_embeddings    # E_1..E_15
        self.head_type = head_type or default_head_type(md.manifest.get("predictor_quant"))
        if self.head_type == "numpy":
            self.heads = md.predictor_heads      # lm_head[0..14], fp32
            self._ggml_heads = None
            self.heads_nbytes = int(self.heads.nbytes)
        elif self.head_type in GGML_TYPES:
            # quantized from the memory-mapped fp32 table, which is then unmapped (126 MB -> 33 MB at Q8_0)
            self._ggml_heads = GgmlHeads(md.table("predictor_heads"), self.head_type)
            self.heads_nbytes = self._ggml_heads.nbytes
        else:
            raise ValueError(f"head_type must be numpy or one of {', '.join(GGML_TYPES)}, got {head_type!r}")
        self.proj = md.mtp_projection()          # None for 0.6B (identity)
        self.codebook_size = md.predictor["codebook_size"]

    def set_threads(self, n: int) -> None:
        """llama.cpp threads of the next predicts (the same codes at any count)."""
        self.lm.set_threads(n)

    def _in(self, x: np.ndarray) -> np.ndarray:
        if self.proj is None:
            return x
        w, b = self.proj
        return x @ w.T + b

    def predict(self, hidden: np.ndarray, c0: int, params: SamplingParams, seed: int,
                frame: int) -> tuple[np.ndarray, np.ndarray]:
        """hidden: talker post-norm state of the step that produced c0; (seed, frame) select the random
        stream, so a predictor in another process draws exactly the same codes.
        Returns (codes [16] int64, feedback embedding F(codes) [hidden])."""
        rng = frame_rng(seed, frame)
        if not 0 <= c0 < self.codebook_size:
            raise ValueError(f"code 0 out of range: {c0}")
        self.lm.reset()
        h, _ = self.lm.decode(self._in(np.stack([hidden, self.codec[c0]])), want_logits=False)
        codes = np.empty(self.n_groups, dtype=np.int64)
        codes[0] = c0
        for j in range(self.n_groups - 1):
            codes[j + 1] = sample_sub(self._logits(j, h), params, rng)
            if j < self.n_groups - 2:  # the last table only feeds the talker, never the predictor
                row = self._in(self.tables[j][codes[j + 1]])
                h, _ = self.lm.decode_row(np.asarray(row, dtype=np.float32), want_logits=False)
        return codes, self._feedback(codes)

    def _logits(self, j: int, h: np.ndarray) -> np.ndarray:
        """Head j (codebook j + 1) on the predictor's hidden state [codebook_size] (a ggml head returns a view
        of its output buffer, consumed before the next call)."""
        if self._ggml_heads is not None:
            return self._ggml_heads.logits(j, h)
        return self.heads[j] @ h

    def _feedback(self, codes: np.ndarray) -> np.ndarray:
        return frame_embeddings(self.codec, self.tables, codes[None, :])[0]

    def close(self) -> None:
        self.lm.close()
        if self._ggml_heads is not None:
            self._ggml_heads.close()
