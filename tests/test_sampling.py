"""The top-k fast path of the sampler draws exactly what the full-vector path draws from the same stream."""
from __future__ import annotations

import numpy as np

from daemons.engine import sampling as S


def full_vector_draw(logits, temperature, top_k, rng):
    x = logits.astype(np.float64) / temperature
    kth = np.partition(x, -top_k)[-top_k]
    x[x < kth] = -np.inf
    p = np.exp(x - x.max())
    p /= p.sum()
    return int(rng.choice(x.shape[0], p=p))


def test_top_k_fast_path_is_the_same_draw():
    gen = np.random.default_rng(0)
    for i in range(2000):
        lg = (gen.standard_normal(2048) * (1 + i % 7)).astype(np.float32)
        k = (1, 5, 50, 2047)[i % 4]
        t = (0.5, 0.9, 1.3)[i % 3]
        a = S.draw(lg, t, k, 1.0, np.random.default_rng([i, 5]))
        assert a == full_vector_draw(lg, t, k, np.random.default_rng([i, 5])), i
    ties = np.zeros(64, np.float32)  # all tied: every id stays a candidate, like the masked path
    assert S.draw(ties, 1.0, 3, 1.0, np.random.default_rng(3)) == full_vector_draw(ties, 1.0, 3,
                                                                                   np.random.default_rng(3))


def test_validate_rejects_non_finite_tiny_and_huge_values_naming_the_key():
    import math

    import pytest

    S.SamplingParams().validate()  # the defaults are valid
    S.SamplingParams(temperature=S.MIN_TEMPERATURE, top_k=S.MAX_TOP_K).validate()  # the bounds themselves
    bad = [("temperature", 5e-324), ("temperature", 0.0), ("temperature", -1.0), ("temperature", math.nan),
           ("temperature", math.inf), ("sub_temperature", 1e-6), ("sub_temperature", math.nan),
           ("top_p", math.nan), ("top_p", 0.0), ("top_p", 1.5), ("sub_top_p", -math.inf),
           ("top_k", S.MAX_TOP_K + 1), ("top_k", -1), ("top_k", math.inf), ("top_k", 2.5), ("top_k", True),
           ("sub_top_k", 1 << 70), ("repetition_penalty", math.nan), ("repetition_penalty", 1e-9),
           ("repetition_penalty", math.inf), ("temperature", "0.9"), ("temperature", True)]
    for key, value in bad:
        with pytest.raises(ValueError, match=key):
            S.SamplingParams(**{key: value}).validate()
