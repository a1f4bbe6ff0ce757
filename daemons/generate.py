"""The autoregressive frame loop (MODEL.md 2.7), written against small talker/predictor interfaces so the
same loop runs in one process (engines) or in the talker daemon (predictor behind a socket)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol

import numpy as np

from .prompt import Prompt
from .sampling import Sampler, SamplingParams


class Talker(Protocol):
    capacity: int

    def prefill(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def step(self, row: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class Predictor(Protocol):
    def predict(self, hidden: np.ndarray, c0: int, params: SamplingParams, seed: int,
                frame: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class Generation:
    """Outcome of one utterance, filled while the frames are yielded."""
    stop: str = "running"          # "eos" | "max_frames"
    frames: int = 0
    seed: int = 0
    code0_history: list[int] = field(default_factory=list)


def generate_frames(talker: Talker, predictor: Predictor, prompt: Prompt, sampler: Sampler,
                    max_frames: int, gen: Generation | None = None) -> Iterator[np.ndarray]:
    """Yield one int64 [16] frame per 80 ms of audio until EOS or `max_frames`.
    The EOS frame itself is not yielded (it is not decoded)."""
    gen = gen if gen is not None else Generation()
    gen.seed = sampler.seed
    if max_frames < 1:
        raise ValueError("max_frames must be >= 1")
    hidden, logits = talker.prefill(prompt.prefill)
    history = gen.code0_history
    for step in range(max_frames):
        c0 = sampler.code0(logits, history)
        history.append(c0)
        if c0 == sampler.eos:
            gen.stop = "eos"
            return
        codes, feedback = predictor.predict(hidden, c0, sampler.p, sampler.seed, step)
        gen.frames += 1
        yield codes
        if step + 1 == max_frames:
            break
        hidden, logits = talker.step(feedback + prompt.text_row(step))
    gen.stop = "max_frames"
