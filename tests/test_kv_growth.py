"""The talker's KV cache starts small and grows (daemons/engine/llama_backend.py): llama.cpp makes every
allocated position resident, so a 2048-position cache would cost its full size for every short sentence.
Growing must not change a single output: attention covers the used cells padded to 256, the rest masked."""
from __future__ import annotations

import numpy as np
import pytest

from daemons.engine.llama_backend import EmbeddingLM
from daemons.engine.manifest import ModelDir


@pytest.fixture(scope="module")
def gguf(tiny_model):
    md = ModelDir(tiny_model)
    return md.file(md.talker["gguf"]), md.talker["hidden_size"]


def _rows(n, width, seed=0):
    return (np.random.default_rng(seed).standard_normal((n, width)) * 0.05).astype(np.float32)


def test_growing_in_the_middle_of_a_sequence_changes_no_output(gguf):
    path, width = gguf
    rows = _rows(700, width)
    small = EmbeddingLM(path, n_ctx=1024, threads=1, n_ctx_start=256)
    full = EmbeddingLM(path, n_ctx=1024, threads=1)
    try:
        assert small.ctx_size == 256 and full.ctx_size == 1024 and small.n_ctx == full.n_ctx == 1024
        a, b = small.decode(rows[:200]), full.decode(rows[:200])
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
        for i in range(200, 700):  # across 256 (-> 512) and 512 (-> 1024), rows carried over each time
            a, b = small.decode_row(rows[i]), full.decode_row(rows[i])
            assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), i
        assert small.grows == 2 and small.ctx_size == 1024 and small.pos == full.pos == 700
        a, b = small.decode(rows[:100]), full.decode(rows[:100])  # a batch after the growth, too
        assert np.array_equal(a[1], b[1])
        with pytest.raises(ValueError, match="context full"):
            small.decode(rows[:300])  # 800 + 300 > n_ctx: the logical limit stays
    finally:
        small.close()
        full.close()


def test_a_saved_sequence_loads_into_a_smaller_cache(gguf):
    """A prefix-cache blob of more rows than the cache holds makes it grow first."""
    path, width = gguf
    rows = _rows(301, width, seed=1)
    src = EmbeddingLM(path, n_ctx=1024, threads=1)
    dst = EmbeddingLM(path, n_ctx=1024, threads=1, n_ctx_start=256)
    try:
        src.decode(rows[:300], want_logits=False)
        blob = src.save_seq()
        assert dst.load_seq(blob, 300) and dst.ctx_size == 512 and dst.pos == 300
        assert np.array_equal(dst.decode_row(rows[300])[1], src.decode_row(rows[300])[1])
        assert not dst.load_seq(blob, 2000)  # more rows than n_ctx: refused, not grown
    finally:
        src.close()
        dst.close()


def test_the_talker_grows_before_the_prompt_for_the_frames_to_come(tiny_model):
    """TalkerEngine.prefill(frames=N) sizes the cache for the prompt and N steps while it is empty, so a
    segment never grows (and copies its rows) in the middle of its stream."""
    from daemons.engine.talker import N_CTX_START, TalkerEngine

    md = ModelDir(tiny_model)
    t = TalkerEngine(md, threads=1, prefix_cache=False)
    try:
        assert t.lm.ctx_size == N_CTX_START
        rows = _rows(40, md.talker["hidden_size"], seed=2)
        t.prefill(rows, frames=100)
        assert t.lm.grows == 0  # 140 positions fit in the first cache
        t.prefill(rows, frames=N_CTX_START)
        assert t.lm.grows == 1 and t.lm.ctx_size >= 40 + N_CTX_START and t.lm.pos == 40
        for _ in range(N_CTX_START):
            t.step(rows[0])
        assert t.lm.grows == 1
        t.prefill(rows, frames=10 ** 6)  # capped at n_ctx: the cache is never bigger than the context
        assert t.lm.ctx_size == t.lm.n_ctx
    finally:
        t.close()
