"""Vocoder daemon: one stateful decoder stream per request id; frames in, 24 kHz PCM out."""
from __future__ import annotations

import hashlib
import time
from collections import OrderedDict

import numpy as np
import zmq

from . import protocol
from .engine.manifest import ModelDir
from .service import WorkerService
from .vocoder_backend import open_vocoder

MAX_STREAMS = 32  # least recently used streams beyond this are dropped
MAX_CONTEXTS = 8  # decoder states primed with a voice's reference codes, least recently used dropped
PRIME_STEP_FRAMES = 4  # idle-time priming works in steps this small, so a request waits at most one step
VOICES_RESCAN_S = 30.0


class VocoderDaemon(WorkerService):
    role = "vocoder"

    def load(self) -> None:
        self.md = ModelDir(self.cfg.model_dir)
        # [vocoder] backend: onnxruntime, or the RKNN NPU model with onnxruntime as the logged fallback
        self.engine = open_vocoder(self.md.file(self.md.vocoder["onnx"]), self.md.vocoder, self.cfg.vocoder_backend,
                                   threads=self.threads, model_dir=self.md.path, log=self.log)
        self.streams: OrderedDict[str, tuple] = OrderedDict()  # id -> (stream, next seq)
        self.contexts: OrderedDict[str, object] = OrderedDict()  # sha256 of reference codes -> primed stream
        self.context_hits = self.context_misses = self.primed_idle = 0
        self._idle_job = None  # (key, stream, codes, next frame): a named voice being primed between requests
        self._voices_seen: dict = {}
        self._next_scan = 0.0
        self.sock = self.bind_router(self.cfg.endpoints["vocoder"])

    def warmup(self) -> None:
        self.engine.new_stream().decode(np.zeros((2, 16), dtype=np.int64))

    def pong(self) -> dict:
        return {"streams": len(self.streams), "contexts": len(self.contexts), "context_hits": self.context_hits,
                "context_misses": self.context_misses, "primed_idle": self.primed_idle}

    # --- idle-time priming of the named voices -------------------------------------------------------
    def serve_once(self, timeout_ms: int) -> None:
        """Between requests, prime the in-context voices of `voices_dir`, a few frames at a time, so even
        their first use finds the vocoder state ready (priming is ~1 s per 12 reference frames at full size)."""
        if self._idle_job is None:
            self._idle_job = self._next_idle_job()
        if self._idle_job is None:
            return super().serve_once(timeout_ms)
        if self.sock.poll(0, zmq.POLLIN):  # requests first
            return super().serve_once(0)
        key, stream, codes, at = self._idle_job
        stream.decode(codes[at:at + PRIME_STEP_FRAMES])
        at += PRIME_STEP_FRAMES
        if at < len(codes):
            self._idle_job = (key, stream, codes, at)
            return
        self._idle_job = None
        if key not in self.contexts:
            self.remember_context(key, stream)
            self.primed_idle += 1
            self.log.info("primed the vocoder with voice reference %s (%d frames) while idle", key[:12], len(codes))

    def _next_idle_job(self):
        if self.cfg.voices_dir is None or len(self.contexts) >= MAX_CONTEXTS or time.monotonic() < self._next_scan:
            return None
        from .engine.voice import Voice, VoiceError

        for path in sorted(self.cfg.voices_dir.glob("*.json")):
            try:
                stamp = path.stat().st_mtime_ns
                if self._voices_seen.get(path) == stamp:
                    continue
                self._voices_seen[path] = stamp
                v = Voice.load(path)
                if v.ref_codes is None:
                    continue
                codes = self.engine.validate(v.ref_codes)
            except (OSError, VoiceError, ValueError) as e:
                self.log.info("voice %s not primed: %s", path.name, getattr(e, "message", e))
                continue
            key = self._context_key(codes)
            if key not in self.contexts:
                return key, self.engine.new_stream(), codes, 0
        self._next_scan = time.monotonic() + VOICES_RESCAN_S
        return None

    @staticmethod
    def _context_key(codes) -> str:
        return hashlib.sha256(np.ascontiguousarray(codes, dtype=np.int64).tobytes()).hexdigest()

    def remember_context(self, key: str, primed) -> None:
        """Keep a primed stream as the most recent, dropping the least recently used beyond MAX_CONTEXTS."""
        self.contexts[key] = primed
        self.contexts.move_to_end(key)
        while len(self.contexts) > MAX_CONTEXTS:
            self.contexts.popitem(last=False)

    def handle_prime(self, ident: bytes, msg: protocol.Message) -> None:
        """Sent by the talker when an in-context request starts, so priming overlaps its prefill; no answer
        (the stream's seq-0 message carries the context again and finds it primed, or primes it then)."""
        try:
            self.primed_stream(msg.arrays.get("context"), clone=False)
        except (ValueError, TypeError) as e:
            self.log.info("prime for %s ignored: %s", msg.id, e)

    def primed_stream(self, context, clone: bool = True):
        """A new stream that has already decoded `context` (an in-context voice's reference codes) and
        dropped its audio: the official decode(ref + generated) then cut, without the re-decode per
        request: the primed state is kept per reference."""
        if context is None:
            raise ValueError("no context codes")
        ctx = self.engine.validate(context)
        key = self._context_key(ctx)
        primed = self.contexts.get(key)
        if primed is None:
            self.context_misses += 1
            primed = self.engine.new_stream()
            primed.decode(ctx)
        else:
            self.context_hits += 1
        self.remember_context(key, primed)
        return primed.clone() if clone else None

    def status_line(self) -> str:
        return super().status_line() + f" backend={getattr(self.engine, 'backend', 'onnx')}"

    def handle_close(self, ident: bytes, msg: protocol.Message) -> None:
        self.streams.pop(msg.id, None)

    def _stream_at(self, ident: bytes, msg: protocol.Message):
        """The stream of `msg.id` if `msg.seq` is the next one expected (seq 0 opens a stream), else None
        after answering `unknown_stream`: a restarted vocoder (or a lost chunk) must not continue a stream
        from the wrong state."""
        rid, seq = msg.id, msg.header.get("seq")
        if rid is None or not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            self.reply(self.sock, ident, protocol.error(rid, "bad_request", f"{msg.type} needs an id and a seq >= 0"))
            return None
        if seq == 0:
            context = msg.arrays.get("context")
            try:
                stream = self.engine.new_stream() if context is None else self.primed_stream(context)
            except (ValueError, TypeError) as e:
                self.reply(self.sock, ident, protocol.error(rid, "bad_request", f"context: {e}"))
                return None
            self.streams[rid] = (stream, 0)
        entry = self.streams.get(rid)
        if entry is None or entry[1] != seq:
            self.reply(self.sock, ident, protocol.error(rid, "unknown_stream",
                                                        f"no stream state for {rid!r} at seq {seq}"))
            self.streams.pop(rid, None)
            return None
        return entry[0]

    def _answer(self, ident: bytes, msg: protocol.Message, stream, pcm, **extra) -> None:
        rid, seq = msg.id, msg.header["seq"]
        self.streams[rid] = (stream, seq + 1)
        self.streams.move_to_end(rid)
        while len(self.streams) > MAX_STREAMS:
            self.streams.popitem(last=False)
        self.reply(self.sock, ident, protocol.encode("audio", {"pcm": pcm}, id=rid, seq=seq, **extra))

    def handle_frames(self, ident: bytes, msg: protocol.Message) -> None:
        stream = self._stream_at(ident, msg)
        if stream is None:
            return
        try:
            pcm = stream.decode(msg.arrays.get("codes"))
        except (ValueError, TypeError) as e:
            self.streams.pop(msg.id, None)
            self.reply(self.sock, ident, protocol.error(msg.id, "bad_request", str(e)))
            return
        self._answer(ident, msg, stream, pcm)

    def handle_pause(self, ident: bytes, msg: protocol.Message) -> None:
        """Silence between segments, in stream order; the decoder state is untouched (no seam)."""
        n = msg.header.get("samples")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= 10 * 24000:
            self.reply(self.sock, ident, protocol.error(msg.id, "bad_request", "samples must be 0..240000"))
            return
        stream = self._stream_at(ident, msg)
        if stream is not None:
            self._answer(ident, msg, stream, np.zeros(n, dtype=np.float32), pause=True)
