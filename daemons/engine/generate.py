"""The autoregressive frame loop (MODEL.md 2.7), written against small talker/predictor interfaces so the
same loop runs in one process (engines) or in the talker daemon (predictor behind a socket)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

from .prompt import Prompt
from .sampling import Sampler, SamplingParams


class Talker(Protocol):
    capacity: int

    def prefill(self, rows: np.ndarray, fixed: int = 0, frames: int = 0) -> tuple[np.ndarray, np.ndarray]: ...

    def step(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class Predictor(Protocol):
    def predict(self, hidden: np.ndarray, c0: int, params: SamplingParams, seed: int,
                frame: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class RunawayRules:
    """Stop an utterance that is clearly not speech any more (never touches one that ends on EOS first).
    A code-0 loop: the last `loop_frames` code-0 values repeat with a period of at most `loop_period`
    frames (0 disables). The near-silence rule needs audio and lives with the vocoder consumer."""
    loop_frames: int = 36
    loop_period: int = 8

    def looping(self, history: list[int]) -> bool:
        n = self.loop_frames
        if n <= 0 or len(history) < n + 1:
            return False
        tail = history[-n:]
        for p in range(1, min(self.loop_period, len(history) - n) + 1):
            if tail == history[-n - p:-p]:
                return True
        return False


def frame_cap(n_tokens: int, base: int = 25, per_token: float = 6.0) -> int:
    """Most frames a segment of `n_tokens` text tokens may take: generous for slow or cloned voices
    (6 frames = 0.48 s per token; English runs ~3.5, Chinese ~3), plus a fixed allowance."""
    return int(base + per_token * n_tokens)


@dataclass
class Generation:
    """Outcome of one utterance, filled while the frames are yielded."""
    stop: str = "running"          # "eos" | "max_frames" | "runaway_loop" | "runaway_silence" | "cancelled"
    frames: int = 0
    seed: int = 0
    code0_history: list[int] = field(default_factory=list)
    # seconds spent, for the per-frame breakdown in the talker's `done` (where the time between frames goes):
    # prefill, talker steps, code-0 sampling, predictor calls (wall; a remote one includes its round trip)
    # and the predictor's own compute (the remote one reports it: `compute_s`; in-process = its wall)
    times: dict = field(default_factory=lambda: dict.fromkeys(TIMES, 0.0))
    burst_frames: int = 0          # frames whose (remote) predictor ran on its burst threads


TIMES = ("prefill", "talker", "sample", "predictor", "predictor_compute")


def generate_frames(talker: Talker, predictor: Predictor, prompt: Prompt, sampler: Sampler,
                    max_frames: int, gen: Generation | None = None,
                    runaway: RunawayRules | None = None) -> Iterator[np.ndarray]:
    """Yield one int64 [16] frame per 80 ms of audio until EOS, `max_frames` or a runaway rule.
    The EOS frame itself is not yielded (it is not decoded). `gen.stop` says which ended it."""
    gen = gen if gen is not None else Generation()
    gen.seed = sampler.seed
    if max_frames < 1:
        raise ValueError("max_frames must be >= 1")
    tm, clock = gen.times, time.perf_counter
    t = clock()
    hidden, logits = talker.prefill(prompt.prefill, prompt.n_fixed, frames=max_frames)
    t1 = clock()
    tm["prefill"] += t1 - t
    history = gen.code0_history
    for step in range(max_frames):
        c0 = sampler.code0(logits, history)
        t2 = clock()
        tm["sample"] += t2 - t1
        history.append(c0)
        if c0 == sampler.eos:
            gen.stop = "eos"
            return
        if runaway is not None and runaway.looping(history):
            gen.stop = "runaway_loop"
            return
        codes, feedback = predictor.predict(hidden, c0, sampler.p, sampler.seed, step)
        t3 = clock()
        tm["predictor"] += t3 - t2
        tm["predictor_compute"] += getattr(predictor, "compute_s", None) or (t3 - t2)
        gen.burst_frames += getattr(predictor, "bursted", False) is True
        gen.frames += 1
        yield codes
        if step + 1 == max_frames:
            break
        t = clock()
        hidden, logits = talker.step(feedback + prompt.text_row(step))
        t1 = clock()
        tm["talker"] += t1 - t
    gen.stop = "max_frames"
