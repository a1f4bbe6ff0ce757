"""Sampling with the official defaults, in the order of the HF logits processors (MODEL.md 3.4, 4).

Code 0 (talker): repetition penalty over the utterance's code-0 history -> EOS blocked for the first
`min_new_tokens` frames -> everything in [vocab-1024, vocab) except EOS suppressed -> temperature ->
top-k -> top-p -> draw. Codes 1..15 (predictor): temperature -> top-k -> top-p -> draw.
Greedy takes the argmax after the penalty/masking steps."""
from __future__ import annotations

import math
import numbers
import secrets
from dataclasses import dataclass

import numpy as np


from .sampling_bounds import MAX_TOP_K, MIN_REPETITION_PENALTY, MIN_TEMPERATURE  # noqa: F401 (re-exported)


@dataclass
class SamplingParams:
    do_sample: bool = True
    temperature: float = 0.9
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    sub_do_sample: bool = True
    sub_temperature: float = 0.9
    sub_top_k: int = 50
    sub_top_p: float = 1.0
    min_new_tokens: int = 2
    seed: int | None = None

    @classmethod
    def from_generation_config(cls, g: dict, **overrides) -> "SamplingParams":
        p = cls(do_sample=g.get("do_sample", True), temperature=g.get("temperature", 0.9),
                top_k=g.get("top_k", 50), top_p=g.get("top_p", 1.0),
                repetition_penalty=g.get("repetition_penalty", 1.05),
                sub_do_sample=g.get("subtalker_dosample", True),
                sub_temperature=g.get("subtalker_temperature", 0.9),
                sub_top_k=g.get("subtalker_top_k", 50), sub_top_p=g.get("subtalker_top_p", 1.0))
        for k, v in overrides.items():
            if v is not None:
                setattr(p, k, v)
        return p

    def validate(self) -> None:
        """ValueError unless every value is finite and in range: temperatures >= MIN_TEMPERATURE, top_p in
        (0, 1], top_k integers in 0..MAX_TOP_K (0 disables), repetition_penalty >= MIN_REPETITION_PENALTY."""
        for name in ("temperature", "sub_temperature", "top_p", "sub_top_p", "repetition_penalty"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number")
        for name in ("temperature", "sub_temperature"):
            if not getattr(self, name) >= MIN_TEMPERATURE:
                raise ValueError(f"{name} must be >= {MIN_TEMPERATURE:g} (use do_sample false for greedy)")
        for name in ("top_p", "sub_top_p"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1]")
        for name in ("top_k", "sub_top_k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v <= MAX_TOP_K:
                raise ValueError(f"{name} must be an integer in 0..{MAX_TOP_K} (0 disables)")
        if not self.repetition_penalty >= MIN_REPETITION_PENALTY:
            raise ValueError(f"repetition_penalty must be >= {MIN_REPETITION_PENALTY:g}")


def draw(logits: np.ndarray, temperature: float, top_k: int, top_p: float, rng: np.random.Generator) -> int:
    if 0 < top_k < logits.shape[0] and top_p >= 1.0:
        return _draw_top_k(logits, temperature, top_k, rng)
    x = logits.astype(np.float64) / temperature
    if 0 < top_k < x.shape[0]:
        kth = np.partition(x, -top_k)[-top_k]
        x[x < kth] = -np.inf
    if top_p < 1.0:
        order = np.argsort(x)  # ascending, like HF TopPLogitsWarper
        p = np.exp(x[order] - x[order[-1]])
        p /= p.sum()
        remove = np.cumsum(p) <= (1 - top_p)
        remove[-1] = False  # always keep the best token
        x[order[remove]] = -np.inf
    p = np.exp(x - x.max())
    p /= p.sum()
    return int(rng.choice(x.shape[0], p=p))


def _draw_top_k(logits: np.ndarray, temperature: float, top_k: int, rng: np.random.Generator) -> int:
    """`draw` for top-k without top-p (the official defaults) on the k candidates only: the same
    distribution and the same use of the random stream as `rng.choice` over the whole masked vector (one
    uniform, searched in the cumulative sum in index order), at a tenth of the cost."""
    x = logits.astype(np.float64) / temperature
    kth = np.partition(x, -top_k)[-top_k]
    idx = np.flatnonzero(x >= kth)  # ascending ids, ties at the k-th value kept, as in `draw`
    v = x[idx]
    p = np.exp(v - v.max())
    cdf = np.cumsum(p / p.sum())
    cdf /= cdf[-1]
    return int(idx[min(int(np.searchsorted(cdf, rng.random(), side="right")), len(idx) - 1)])


def sample_sub(logits: np.ndarray, p: SamplingParams, rng: np.random.Generator) -> int:
    """One of codes 1..15 from a predictor head's logits."""
    if not p.sub_do_sample:
        return int(np.argmax(logits))
    return draw(np.asarray(logits, dtype=np.float32), p.sub_temperature, p.sub_top_k, p.sub_top_p, rng)


def frame_rng(seed: int, frame: int) -> np.random.Generator:
    """The predictor's random stream for one frame of a request."""
    return np.random.default_rng([seed, 1, frame])


class Sampler:
    """Per-request sampling state. Random streams derive from one request seed: code 0 draws from
    stream (seed, 0); the predictor's draws for frame i from (seed, 1, i), so a predictor in another
    process reproduces them from (seed, i) alone."""

    def __init__(self, params: SamplingParams, codec_vocab: int, eos_id: int):
        params.validate()
        self.p = params
        self.eos = eos_id
        self.seed = params.seed if params.seed is not None else secrets.randbits(63)
        self.rng = np.random.default_rng([self.seed, 0])
        suppress = np.zeros(codec_vocab, dtype=bool)
        suppress[codec_vocab - 1024:] = True
        suppress[eos_id] = False
        self.suppress = suppress

    def code0(self, logits: np.ndarray, history: list[int]) -> int:
        x = np.array(logits, dtype=np.float32)
        if history and self.p.repetition_penalty != 1.0:
            idx = np.unique(np.asarray(history, dtype=np.int64))
            s = x[idx]
            x[idx] = np.where(s < 0, s * np.float32(self.p.repetition_penalty),
                              s / np.float32(self.p.repetition_penalty))
        if len(history) < self.p.min_new_tokens:
            x[self.eos] = -np.inf
        x[self.suppress] = -np.inf
        if not self.p.do_sample:
            return int(np.argmax(x))
        return draw(x, self.p.temperature, self.p.top_k, self.p.top_p, self.rng)
