"""The life of one synthesis request in the talker daemon, without sockets: its sentence segments, the
frame loop (`generate_frames`, the same loop as in-process `synth`), stop reasons, the near-silence
runaway rule, pauses between segments and the numbered chunk stream to the vocoder.

The daemon owns the sockets and the queue; a `Request` talks to the world only through a `Links`
object (two send functions), so it runs unchanged in a unit test with a recording stand-in. The daemon
calls `begin()`, then `step()` while the request is `active`, `deliver()` for each vocoder answer,
`flush()` when chunks wait for a (re)connecting vocoder and `overdue()` for its timers; it reacts to
`state` ("generating" -> "draining" -> "done", or "gone" when the client vanished) and to
`RequestFailed`, which ends the request with a typed error."""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from . import protocol
from .config import Limits
from .engine.errors import TTSError
from .engine.generate import TIMES, Generation, Predictor, RunawayRules, Talker, generate_frames
from .engine.sampling import Sampler, SamplingParams
from .engine.segment import Segment

FRAME_SAMPLES = 1920


class RequestFailed(Exception):
    """Ends the request with `error{code, message}` to its client."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class Links(Protocol):
    def client(self, frames: list) -> bool:
        """Send to the request's client; False: the client is gone."""

    def vocoder(self, frames: list) -> bool:
        """Send to the vocoder daemon; False: not connected now (the request retries later)."""


@dataclass
class Engines:
    """What a request generates with: the talker engine, the predictor (in-process or remote), the
    codec vocabulary for the sampler, and the limits of the daemon's configuration."""
    talker: Talker
    predictor: Predictor
    codec_vocab: int
    codec_eos: int
    limits: Limits
    n_ctx: int = 2048               # talker context: a segment's prompt plus its frames must fit
    random_weights: bool = False    # said in every `done`, so clients can label the audio as noise


@dataclass
class Request:
    id: str
    ident: bytes
    segments: list[Segment]
    params: SamplingParams
    return_codes: bool
    pause_samples: int
    context: np.ndarray | None = None  # in-context voice: reference codes, the vocoder's left context
    accepted: float = field(default_factory=time.monotonic)
    # The id on the predictor and vocoder sockets, minted here: a client's id never reaches them, so no
    # client can name (close, reset, advance) another request's stream there.
    wire_id: str = field(default_factory=lambda: secrets.token_hex(12))
    state: str = "queued"           # queued | generating | draining | done | gone
    last_segment: bool = False      # set on shutdown: finish the current segment, then end
    base_seed: int = 0
    seg: int = -1                   # index of the segment being generated
    gen: Generation = field(default_factory=Generation)
    results: list = field(default_factory=list)   # per finished segment: {index, frames, stop, seed, chars}
    frames: list = field(default_factory=list)
    pending: list = field(default_factory=list)   # frames not yet handed to the vocoder
    seg_start: int = 0              # global frame index where the current segment started
    text_end: int = 0               # global frame index from which its text queue is used up
    silent_run: int = 0             # consecutive near-silent frames heard after text_end
    audio_frames: int = 0           # frames whose audio came back
    stop_silence: bool = False
    seq_sent: int = 0
    seq_done: int = 0
    last_voc: float = 0.0
    blocked_since: float | None = None
    pause_pending: bool = False
    generator: object = None
    links: Links | None = None
    engines: Engines | None = None
    # where the generation time went (seconds, summed over segments; `timing()` turns it into ms/frame)
    times: dict = field(default_factory=lambda: dict.fromkeys(TIMES + ("step",), 0.0))
    burst_frames: int = 0           # frames whose predictor used the idle vocoder's CPUs too
    gen_start: float | None = None  # perf_counter at its first step and after its latest one
    gen_end: float = 0.0

    # --- start and segments -----------------------------------------------------------------------
    def begin(self, engines: Engines, links: Links, base_seed: int) -> None:
        self.engines, self.links, self.base_seed = engines, links, base_seed
        self.state = "generating"
        if self.context is not None:  # the vocoder primes the reference while the talker prefills
            # not connected: no matter, the first frames carry the context anyway
            links.vocoder(protocol.encode("prime", {"context": np.asarray(self.context, np.int64)},
                                          id=self.wire_id))
        self._next_segment()

    def _next_segment(self) -> None:
        """Prefill the next segment's prompt; the vocoder stream (same id, next seq) carries on, so the
        boundary has no seam."""
        if self.seg >= 0:
            self.segments[self.seg].release()  # one sentence's prompt rows at a time
        self.seg += 1
        seg, e = self.segments[self.seg], self.engines
        room = e.n_ctx - len(seg.prompt.prefill)
        if room < 1:
            raise RequestFailed("invalid_request", f"segment {self.seg + 1}'s prompt does not fit the talker "
                                                   f"context ({e.n_ctx} positions)")
        seg.cap = min(seg.cap, room)
        params = SamplingParams(**{**vars(self.params), "seed": (self.base_seed + self.seg) % (1 << 63)})
        sampler = Sampler(params, e.codec_vocab, e.codec_eos)
        self.gen = Generation()
        self.seg_start = len(self.frames)
        self.text_end = self.seg_start + len(seg.prompt.trailing)
        self.silent_run = 0
        self.stop_silence = False
        runaway = RunawayRules(loop_frames=e.limits.loop_frames)
        self.generator = generate_frames(e.talker, e.predictor, seg.prompt, sampler, seg.cap, self.gen, runaway)

    # --- one frame ------------------------------------------------------------------------------
    def step(self) -> None:
        """One unit of work while generating: a frame, a pause, or the end of a segment."""
        t0 = time.perf_counter()
        if self.gen_start is None:
            self.gen_start = t0
        try:
            self._step()
        except TTSError as e:
            raise RequestFailed(e.code, e.message) from None
        self.gen_end = time.perf_counter()  # every step: frames, progress notes, vocoder sends, segment ends
        self.times["step"] += self.gen_end - t0

    def _step(self) -> None:
        if self.pause_pending:  # silence after the previous segment, in stream order
            if self.pending:
                self._send_frames()  # still waiting for a (re)connecting vocoder
            elif self._send_pause():
                self.pause_pending = False
            return
        if self.awaiting_audio():
            if self.pending:
                self._send_frames()  # a short chunk: the audio the rule waits for must be on its way
            return
        fr = None
        if self.stop_silence:
            self.gen.stop = "runaway_silence"
        else:
            fr = next(self.generator, None)
        if fr is None:
            self._end_segment()
            return
        self.frames.append(fr)
        self.pending.append(fr)
        # a per-frame note to the client: also how a vanished client is noticed within one frame
        if not self.links.client(protocol.encode("progress", id=self.id, frame=len(self.frames),
                                                 segment=self.seg)):
            self.state = "gone"
            return
        if len(self.pending) >= self._chunk_size():
            self._send_frames()

    def awaiting_audio(self) -> bool:
        """Past its text, with the silence rule on, the segment waits while it is `silence_lag_frames`
        ahead of the audio heard: the rule's verdict then comes at a bounded frame, not at the vocoder's pace."""
        L = self.engines.limits
        n = len(self.frames)
        return (self.state == "generating" and not self.pause_pending and not self.stop_silence
                and L.silence_frames > 0 and n >= self.text_end
                and n - self.audio_frames >= L.silence_lag_frames)

    def _end_segment(self) -> None:
        for k, v in self.gen.times.items():
            self.times[k] += v
        self.burst_frames += self.gen.burst_frames
        self.results.append({"index": self.seg, "frames": self.gen.frames, "stop": self.gen.stop,
                             "seed": self.gen.seed, "chars": len(self.segments[self.seg].text)})
        if self.pending:
            self._send_frames()
        if self.seg + 1 < len(self.segments) and not self.last_segment:
            self.pause_pending = self.pause_samples > 0
            self._next_segment()
            return
        self.state = "draining"
        self._maybe_done()

    def _chunk_size(self) -> int:
        L = self.engines.limits
        return L.first_chunk_frames if self.seq_sent == 0 else L.chunk_frames

    # --- the vocoder stream ---------------------------------------------------------------------
    def _first_arrays(self, arrays: dict) -> dict | None:
        """The message that opens a vocoder stream carries the in-context reference codes as left context."""
        if self.seq_sent == 0 and self.context is not None:
            arrays = {**arrays, "context": np.asarray(self.context, dtype=np.int64)}
        return arrays or None

    def _sent(self, ok: bool) -> bool:
        if not ok:  # the vocoder is not connected (restarting): `overdue` turns a long wait into an error
            self.blocked_since = self.blocked_since or time.monotonic()
            return False
        self.blocked_since = None
        self.seq_sent += 1
        self.last_voc = time.monotonic()
        return True

    def _send_frames(self) -> None:
        """Hand the pending frames over, at most `vocoder_max_frames` a message (frames that piled up while
        the vocoder was away go out as several messages)."""
        n = self.engines.limits.vocoder_max_frames
        while self.pending:
            msg = protocol.encode("frames", self._first_arrays({"codes": np.stack(self.pending[:n])}),
                                  id=self.wire_id, seq=self.seq_sent)
            if not self._sent(self.links.vocoder(msg)):
                return
            self.pending = self.pending[n:]

    def _send_pause(self) -> bool:
        return self._sent(self.links.vocoder(protocol.encode("pause", self._first_arrays({}), id=self.wire_id,
                                                             seq=self.seq_sent, samples=self.pause_samples)))

    def flush(self) -> None:
        """Hand over frames that waited for a (re)connecting vocoder (after generation ended)."""
        if self.pending:
            self._send_frames()
            self._maybe_done()

    def deliver(self, msg: protocol.Message) -> None:
        """One answer of the vocoder for this request: forward its audio, in order."""
        if msg.type == "error":
            raise RequestFailed("vocoder_unavailable", f"vocoder: {msg.header.get('message')}")
        if msg.type in ("priming", "decoding") and msg.header.get("seq") == self.seq_done:
            # priming this stream's reference, or between the steps of a long message: alive, audio to follow
            self.last_voc = time.monotonic()
            return
        if msg.type != "audio" or msg.header.get("seq") != self.seq_done:
            raise RequestFailed("vocoder_unavailable", "vocoder answered out of order")
        self.seq_done += 1
        self.last_voc = time.monotonic()
        pcm = msg.arrays["pcm"]
        if not msg.header.get("pause"):
            self._hear(pcm)
        if not self.links.client(protocol.encode("audio", {"pcm": pcm}, id=self.id, seq=msg.header["seq"])):
            self.state = "gone"
            return
        self._maybe_done()

    def _hear(self, pcm: np.ndarray) -> None:
        """Near-silence runaway rule: count near-silent frames once the current segment's text is used up."""
        L = self.engines.limits
        n = len(pcm) // FRAME_SAMPLES
        if n == 0 or L.silence_frames <= 0:
            return
        rms = np.sqrt(np.mean(pcm[:n * FRAME_SAMPLES].reshape(n, FRAME_SAMPLES).astype(np.float64) ** 2, axis=1))
        for i in range(n):
            f = self.audio_frames + i
            if f < max(self.text_end, self.seg_start):
                continue
            self.silent_run = self.silent_run + 1 if rms[i] < L.silence_rms else 0
            if self.silent_run >= L.silence_frames and self.state == "generating":
                self.stop_silence = True
        self.audio_frames += n

    def _maybe_done(self) -> None:
        if self.state != "draining" or self.pending or self.seq_done != self.seq_sent:
            return
        if len(self.results) < len(self.segments):  # cut short by a shutdown: say so, never a short `done`
            self.links.client(protocol.error(self.id, "shutting_down",
                                             f"the talker daemon is stopping: {len(self.results)} of "
                                             f"{len(self.segments)} sentences were spoken"))
            self.state = "done"
            return
        arrays = {"codes": np.stack(self.frames) if self.frames else np.zeros((0, 16), np.int64)} \
            if self.return_codes else None
        self.links.client(protocol.encode("done", arrays, id=self.id, frames=len(self.frames), stop=self.stop,
                                          seed=self.base_seed, segments=self.results,
                                          random_weights=self.engines.random_weights, timing=self.timing()))
        self.state = "done"

    def timing(self) -> dict:
        """Per frame (ms): talker step, code-0 sampling, predictor call (round trip when remote) and its
        compute; `step` = all of the request's steps (those + progress notes, vocoder sends, later
        segments' prefills); `span` = wall time from its first step to its last, over frames (`step` + the
        daemon's loop between steps: polling, vocoder replies, other clients). `prefill_ms` is the total;
        `burst_frames` counts the frames whose predictor ran with its burst threads (the vocoder idle)."""
        n = max(len(self.frames), 1)
        t = {f"{k}_ms": round(v * 1000 / n, 3) for k, v in self.times.items() if k != "prefill"}
        t["span_ms"] = round((self.gen_end - self.gen_start) * 1000 / n, 3) if self.gen_start else 0.0
        t["prefill_ms"] = round(self.times["prefill"] * 1000, 3)
        t["burst_frames"] = self.burst_frames
        return t

    @property
    def stop(self) -> str:
        """The request's stop reason: "eos" when every segment ended on EOS, else the first other one."""
        stops = [r["stop"] for r in self.results]
        return next((x for x in stops if x != "eos"), "eos")

    def close(self) -> None:
        """Drop the vocoder's stream state of this request (if one was opened)."""
        if self.seq_sent and self.links is not None:
            self.links.vocoder(protocol.encode("close", id=self.wire_id))

    # --- timers ---------------------------------------------------------------------------------
    def overdue(self, now: float) -> None:
        L = self.engines.limits
        if self.blocked_since and now - self.blocked_since > L.vocoder_timeout_s:
            raise RequestFailed("vocoder_unavailable", "the vocoder daemon is not running")
        if self.seq_done < self.seq_sent and now - self.last_voc > L.vocoder_timeout_s:
            raise RequestFailed("vocoder_unavailable",
                                f"no audio from the vocoder daemon within {L.vocoder_timeout_s:g} s")
        if now - self.accepted > L.request_timeout_s:
            raise RequestFailed("timeout", f"request exceeded {L.request_timeout_s:g} s")
