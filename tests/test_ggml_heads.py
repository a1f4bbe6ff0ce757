"""GgmlHeads (the code predictor's heads as ggml matvecs) against fp32 numpy."""
import numpy as np
import pytest

from daemons.engine.ggml_heads import GgmlHeads


@pytest.fixture(scope="module")
def heads():
    rng = np.random.default_rng(3)
    return (rng.standard_normal((3, 256, 128)) * 0.05).astype(np.float32), \
        rng.standard_normal((4, 128)).astype(np.float32)


@pytest.mark.parametrize("wtype,tol", [("f32", 1e-5), ("f16", 2e-3), ("q8_0", 2e-2)])
def test_matches_numpy(heads, wtype, tol):
    w, hs = heads
    g = GgmlHeads(w, wtype)
    try:
        for h in hs:
            for j in range(w.shape[0]):
                ref = w[j] @ h
                got = np.array(g.logits(j, h))
                assert got.shape == ref.shape
                assert np.abs(got - ref).max() <= tol * np.abs(ref).max()
        assert g.nbytes > 0
    finally:
        g.close()


def test_heads_are_distinct(heads):
    """each head has its own graph: head 1 must not return head 0's logits"""
    w, hs = heads
    g = GgmlHeads(w, "f32")
    a, b = np.array(g.logits(0, hs[0])), np.array(g.logits(1, hs[0]))
    g.close()
    assert not np.allclose(a, b)


def test_bad_type(heads):
    with pytest.raises(ValueError, match="head type"):
        GgmlHeads(heads[0], "q5_9")
