"""Vocoder daemon: one stateful decoder stream per (connection, request id); frames in, 24 kHz PCM out.

Every message is validated before any work: codes int [n, 16] with 1 <= n <= MAX_FRAMES_PER_MESSAGE (64) and
every code in the codebook, reference contexts of at most [limits] max_ref_frames frames, pause samples
0..240000, seq an int >= 0. Frames and contexts are decoded DECODE_STEP_FRAMES at a time: onnxruntime's arena
(and its memory pattern per input shape) keeps the peak of the largest call for good, so no call is larger. Streams are keyed by the ROUTER identity of the connection and the id, so one connection cannot
close, reset, advance or evict another's stream; the socket file is 0600 (only the talker's user reaches it).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import Counter, OrderedDict

import numpy as np
import zmq

from . import protocol
from .engine.file_store import FileStore
from .engine.manifest import ModelDir
from .engine.voice import Voice, VoiceError
from .service import WORKER_RCVHWM, WorkerService, describe
from .vocoder_backend import open_vocoder

MAX_FRAMES_PER_MESSAGE = 64  # frames in one `frames` message (the talker sends chunks of 2-4); more: bad_request
MAX_STREAMS = 32  # streams beyond this are dropped: the least recently used of the connection holding the most
MAX_CONTEXTS = 8  # decoder states primed with a voice's reference codes, least recently used dropped
MAX_PRIME_JOBS = 4  # contexts waiting to be primed (from `prime` messages, then voices_dir), oldest dropped
PRIME_STEP_FRAMES = 4  # priming between messages works in steps this small, so a request waits at most one step
# Largest decoder call. Measured on the tiny model (onnxruntime defaults): RSS kept after calls of 64 frames
# +88 MiB, 32: +43, 16: +21 (2000 frames: +1.5 GiB). The audio of a stream does not depend on the steps.
DECODE_STEP_FRAMES = 16
VOICES_RESCAN_S = 30.0
MAX_PAUSE_SAMPLES = 10 * 24000
MAX_SEQ = 1 << 62


class VocoderDaemon(WorkerService):
    role = "vocoder"

    def load(self) -> None:
        self.md = ModelDir(self.cfg.model_dir)
        # [vocoder] backend: onnxruntime, or the RKNN NPU model with onnxruntime as the logged fallback
        self.engine = open_vocoder(self.md.file(self.md.vocoder["onnx"]), self.md.vocoder, self.cfg.vocoder_backend,
                                   threads=self.threads, model_dir=self.md.path, log=self.log)
        # [limits] vocoder_max_frames when the config has it, else the module's cap
        self.max_frames = int(getattr(self.limits, "vocoder_max_frames", MAX_FRAMES_PER_MESSAGE))
        self.max_context = self.limits.max_ref_frames
        self.streams: OrderedDict[tuple[bytes, str], tuple] = OrderedDict()  # (connection, id) -> (stream, next seq)
        self.contexts: OrderedDict[str, object] = OrderedDict()  # sha256 of reference codes -> primed stream
        # contexts being primed between messages: key -> [stream, codes, next frame, from voices_dir]; the
        # first one is worked on next (`prime` messages go first, voices_dir's idle jobs after them)
        self.jobs: OrderedDict[str, list] = OrderedDict()
        self.context_hits = self.context_misses = self.primed_idle = 0
        self.context_disk_hits = 0  # primed states read back from cache_dir instead of priming again
        self.store = self._open_store()
        self.unsaved: OrderedDict[str, object] = OrderedDict()  # primed states to write when idle
        self._voices_seen: dict = {}
        self._next_scan = 0.0
        self.sock = self.bind_router(self.cfg.endpoints["vocoder"], private=True, rcvhwm=WORKER_RCVHWM)

    def warmup(self) -> None:
        self.engine.new_stream().decode(np.zeros((2, 16), dtype=np.int64))

    def pong(self) -> dict:
        """Counters of the primed states in memory (hits, misses); context_disk_hits: misses that were read
        back from cache_dir instead of being primed again."""
        return {"streams": len(self.streams), "contexts": len(self.contexts), "context_hits": self.context_hits,
                "context_misses": self.context_misses, "primed_idle": self.primed_idle,
                "context_disk_hits": self.context_disk_hits, "context_unsaved": len(self.unsaved),
                "context_cache_dir": str(self.store.dir) if self.store and self.store.enabled else None}

    def status_line(self) -> str:
        return super().status_line() + f" backend={getattr(self.engine, 'backend', 'onnx')}"

    # --- validation --------------------------------------------------------------------------------
    def check_codes(self, a, what: str, cap: int) -> np.ndarray:
        """int codes [n, 16], 1 <= n <= cap, each in the codebook (ValueError naming `what` otherwise)."""
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{what}: missing (an int array [n, 16])")
        if a.ndim != 2 or a.shape[1] != 16 or not 1 <= a.shape[0] <= cap:
            raise ValueError(f"{what}: shape {list(a.shape)}, must be [n, 16] with n in 1..{cap}")
        try:
            return self.engine.validate(a)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{what}: {e}") from None

    def context_of(self, msg: protocol.Message) -> np.ndarray | None:
        c = msg.arrays.get("context")
        return None if c is None else self.check_codes(c, "context", self.max_context)

    # --- priming of reference contexts, between messages ----------------------------------------------
    def serve_once(self, timeout_ms: int) -> None:
        """Messages first; between them, prime the contexts announced by `prime` and the in-context voices
        of `voices_dir` a few frames at a time, so even their first use finds the vocoder state ready
        (priming is ~1 s per 12 reference frames at full size)."""
        if self.unsaved and not self.sock.poll(0, zmq.POLLIN):  # idle: one primed state to disk
            self._write_context(*self.unsaved.popitem(last=False))
            return
        if not self.jobs:
            self._add_idle_job()
        if not self.jobs:
            return super().serve_once(timeout_ms)
        if self.sock.poll(0, zmq.POLLIN):  # requests first
            return super().serve_once(0)
        key, job = next(iter(self.jobs.items()))
        try:
            self._advance(job, PRIME_STEP_FRAMES)
        except Exception as e:  # validated codes cannot fail; if they do, drop the job, never retry it forever
            self.jobs.pop(key, None)
            self.log.error("priming %s dropped: %s", key[:12], describe(e))
            return
        if job[2] < len(job[1]):
            return
        del self.jobs[key]
        if key not in self.contexts:
            self.remember_context(key, job[0])
            self._save_context(key, job[0])
            if job[3]:
                self.primed_idle += 1
                self.log.info("primed the vocoder with voice reference %s (%d frames) while idle", key[:12],
                              len(job[1]))

    @staticmethod
    def _advance(job: list, step: int) -> None:
        job[2] = job[0].prime(job[1], job[2], step)  # head-only for most of the reference (engine/vocoder.py)

    def _add_job(self, key: str, codes: np.ndarray, idle: bool) -> None:
        if key in self.jobs:
            if not idle:
                self.jobs.move_to_end(key, last=False)
            return
        self.jobs[key] = [self.engine.new_stream(), codes, 0, idle]
        if not idle:
            self.jobs.move_to_end(key, last=False)
        while len(self.jobs) > MAX_PRIME_JOBS:
            self.jobs.popitem(last=True)

    def _add_idle_job(self) -> None:
        if self.cfg.voices_dir is None or len(self.contexts) >= MAX_CONTEXTS or time.monotonic() < self._next_scan:
            return
        try:
            paths = sorted(self.cfg.voices_dir.glob("*.json"))
        except OSError as e:
            self.log.info("voices_dir %r not scanned: %r", str(self.cfg.voices_dir), str(e))
            paths = []
        for path in paths:
            try:
                stamp = path.stat().st_mtime_ns
                if self._voices_seen.get(path) == stamp:
                    continue
                self._voices_seen[path] = stamp
                v = Voice.load(path)
                if v.ref_codes is None:
                    continue
                codes = self.check_codes(v.ref_codes, "reference codes", self.max_context)
            except (OSError, VoiceError, ValueError) as e:
                self.log.info("voice %r not primed: %r", path.name, str(getattr(e, "message", e))[:300])
                continue
            except Exception as e:  # whatever a file holds, the scan goes on (one line, not a crash loop)
                self.log.warning("voice %r not primed: %s", path.name, describe(e))
                continue
            key = self._context_key(codes)
            if key in self.contexts or key in self.jobs:
                continue
            if self._load_context(key) is not None:  # primed before a restart: read back, not primed again
                self.log.info("vocoder state for voice reference %s (%s) read from the cache", key[:12], path.name)
                if len(self.contexts) >= MAX_CONTEXTS:
                    return
                continue
            self._add_job(key, codes, idle=True)
            return
        self._next_scan = time.monotonic() + VOICES_RESCAN_S

    @staticmethod
    def _context_key(codes) -> str:
        return hashlib.sha256(np.ascontiguousarray(codes, dtype=np.int64).tobytes()).hexdigest()

    # --- primed states on disk (cache_dir/vocoder-contexts: checksummed files, engine/file_store.py) ------
    def _open_store(self) -> FileStore | None:
        if self.cfg.cache_dir is None:
            return None
        # a state is only valid for this vocoder: the model file's hash, its state layout, the backend
        # (the NPU computes slightly different numbers than onnxruntime) and, for RKNN, its model file
        ident = {"onnx": self.md.manifest["files"].get(self.md.vocoder["onnx"], self.md.vocoder["onnx"]),
                 "spec": self.md.vocoder, "backend": getattr(self.engine, "backend", "onnx")}
        rknn = getattr(self.engine, "path", None) if ident["backend"] == "rknn" else None
        if rknn is not None:
            try:
                st = rknn.stat()
                ident["rknn"] = [rknn.name, st.st_size, st.st_mtime_ns]
            except OSError:  # loaded a moment ago; if it is gone now, no state can be matched to it
                return None
        return FileStore(self.cfg.cache_dir / "vocoder-contexts", json.dumps(ident, sort_keys=True), ".state",
                         int(self.limits.vocoder_cache_mb * 2 ** 20), self.log)

    def _save_context(self, key: str, primed) -> None:
        """Queue a newly primed state for the disk (written between messages, never before a request's audio;
        the stream is not decoded any more: requests decode clones of it)."""
        if self.store is not None:
            self.unsaved[key] = primed

    def _write_context(self, key: str, primed) -> None:
        states = primed.get_state()
        self.store.put(key, np.int64(primed.frames).tobytes() + b"".join(s.tobytes() for s in states))

    def run(self) -> int:
        try:
            return super().run()
        finally:  # stopping: primed states still in memory only go to disk now
            while self.unsaved:
                self._write_context(*self.unsaved.popitem(last=False))

    def _load_context(self, key: str):
        """The primed stream stored for `key` (then kept in memory), or None."""
        data = self.store.get(key) if self.store is not None else None
        if data is None:
            return None
        layout = self.engine.initial_state()
        if len(data) != 8 + sum(s.nbytes for s in layout):  # checksummed, so only a layout the key missed
            self.log.warning("cached vocoder state %s ignored: its size does not match the model's state", key[:12])
            return None
        states, at = [], 8
        for s in layout:
            states.append(np.frombuffer(data, s.dtype, s.size, at).reshape(s.shape))
            at += s.nbytes
        stream = self.engine.new_stream()
        stream.set_state(states, int(np.frombuffer(data, np.int64, 1)[0]))
        self.context_disk_hits += 1
        self.remember_context(key, stream)
        return stream

    def remember_context(self, key: str, primed) -> None:
        """Keep a primed stream as the most recent, dropping the least recently used beyond MAX_CONTEXTS."""
        self.contexts[key] = primed
        self.contexts.move_to_end(key)
        while len(self.contexts) > MAX_CONTEXTS:
            self.contexts.popitem(last=False)

    def handle_prime(self, ident: bytes, msg: protocol.Message) -> None:
        """Sent by the talker when an in-context request starts, so priming overlaps its prefill; no answer.
        Priming is queued and done between messages, in steps (the stream's seq-0 message carries the
        context again and finds it primed, or finishes priming it then)."""
        try:
            ctx = self.context_of(msg)
            if ctx is None:
                raise ValueError("no context codes")
        except ValueError as e:
            self.log.info("prime %r ignored: %r", msg.id, str(e)[:300])
            return
        key = self._context_key(ctx)
        if key in self.contexts:
            self.context_hits += 1
            self.contexts.move_to_end(key)
            return
        if key not in self.jobs and self._load_context(key) is not None:
            self.context_misses += 1  # not in memory (the counters are the memory's), but not primed again
            return
        job = self.jobs.get(key)
        if job is None or job[3]:  # not primed, nor announced before: a miss (seq 0 will find it under way)
            self.context_misses += 1
        if job is not None:
            job[3] = False  # wanted by a request now
        self._add_job(key, ctx, idle=False)

    def primed_stream(self, ctx: np.ndarray, note=None):
        """A new stream that has already decoded `ctx` (an in-context voice's reference codes, validated) and
        dropped its audio: the official decode(ref + generated) then cut, without the re-decode per request:
        the primed state is kept per reference. Priming still needed is done now: the head alone over all but
        the last frames, then DECODE_STEP_FRAMES at a time (`VocoderStream.prime`), with `note(done, total)`
        after each step. 400 frames take ~2 s at full size here (12.5 s when every frame went through the
        whole graph, which an RKNN stream still does: ~30 s on a board); the notes tell the talker the
        vocoder is at work on its stream, not gone."""
        key = self._context_key(ctx)
        primed = self.contexts.get(key)
        if primed is not None:
            self.context_hits += 1
        elif key not in self.jobs and (primed := self._load_context(key)) is not None:
            self.context_misses += 1  # read back from cache_dir (context_disk_hits): not primed again
        else:
            job = self.jobs.pop(key, None)
            if job is None or job[3]:
                self.context_misses += 1
            else:
                self.context_hits += 1  # announced by `prime` (counted as the miss there), partly done already
            if job is None:
                job = [self.engine.new_stream(), ctx, 0, False]
            while job[2] < len(ctx):
                self._advance(job, DECODE_STEP_FRAMES)
                self.notifier.watchdog()  # a long reference at full size takes seconds per step: not hung
                if note is not None:
                    note(min(job[2], len(ctx)), len(ctx))
            primed = job[0]
            self._save_context(key, primed)
        self.remember_context(key, primed)
        return primed.clone()

    # --- streams ----------------------------------------------------------------------------------
    def handle_close(self, ident: bytes, msg: protocol.Message) -> None:
        if isinstance(msg.id, str):
            self.streams.pop((ident, msg.id), None)

    def _seq(self, ident: bytes, msg: protocol.Message) -> int | None:
        rid, seq = msg.id, msg.header.get("seq")
        if rid is None or isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq < MAX_SEQ:
            self.reply(self.sock, ident, protocol.error(rid, "bad_request", f"{msg.type} needs an id and a seq >= 0"))
            return None
        return seq

    def _stream_at(self, ident: bytes, msg: protocol.Message, seq: int):
        """This connection's stream of `msg.id` if `seq` is the next one expected (seq 0 opens a stream, with
        the message's context if any), else None after answering: a restarted vocoder (or a lost chunk) must
        not continue a stream from the wrong state."""
        key = (ident, msg.id)
        if seq == 0:
            try:
                ctx = self.context_of(msg)
            except ValueError as e:
                self.reply(self.sock, ident, protocol.error(msg.id, "bad_request", str(e)))
                return None
            def note(done: int, total: int) -> None:
                self.reply(self.sock, ident, protocol.encode("priming", id=msg.id, seq=0, frames=done, of=total))

            self.streams[key] = (self.engine.new_stream() if ctx is None else self.primed_stream(ctx, note), 0)
            self._trim_streams()
        entry = self.streams.get(key)
        if entry is None or entry[1] != seq:
            self.reply(self.sock, ident, protocol.error(msg.id, "unknown_stream",
                                                        f"no stream state for {msg.id!r} at seq {seq}"))
            self.streams.pop(key, None)
            return None
        return entry[0]

    def _trim_streams(self) -> None:
        """Beyond MAX_STREAMS, drop the least recently used stream of the connection holding the most: a
        connection that opens many streams evicts its own, not the talker's."""
        while len(self.streams) > MAX_STREAMS:
            held = Counter(ident for ident, _ in self.streams)
            most = max(held.values())
            del self.streams[next(k for k in self.streams if held[k[0]] == most)]  # in LRU order

    def _answer(self, ident: bytes, msg: protocol.Message, stream, seq: int, pcm, **extra) -> None:
        key = (ident, msg.id)
        self.streams[key] = (stream, seq + 1)
        self.streams.move_to_end(key)
        self._trim_streams()
        self.reply(self.sock, ident, protocol.encode("audio", {"pcm": pcm}, id=msg.id, seq=seq, **extra))

    def handle_frames(self, ident: bytes, msg: protocol.Message) -> None:
        seq = self._seq(ident, msg)
        if seq is None:
            return
        try:
            codes = self.check_codes(msg.arrays.get("codes"), "codes", self.max_frames)
        except ValueError as e:
            self.streams.pop((ident, msg.id), None)
            self.reply(self.sock, ident, protocol.error(msg.id, "bad_request", str(e)))
            return
        stream = self._stream_at(ident, msg, seq)
        if stream is None:
            return
        parts = []
        for i in range(0, len(codes), DECODE_STEP_FRAMES):
            if i:  # up to 64 frames (piled up while the vocoder was away): 8-13 s on a board's CPU vocoder
                self.reply(self.sock, ident, protocol.encode("decoding", id=msg.id, seq=seq, frames=i,
                                                             of=len(codes)))
            parts.append(stream.decode(codes[i:i + DECODE_STEP_FRAMES]))
        self._answer(ident, msg, stream, seq, parts[0] if len(parts) == 1 else np.concatenate(parts))

    def handle_pause(self, ident: bytes, msg: protocol.Message) -> None:
        """Silence between segments, in stream order; the decoder state is untouched (no seam)."""
        seq = self._seq(ident, msg)
        if seq is None:
            return
        n = msg.header.get("samples")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_PAUSE_SAMPLES:
            self.reply(self.sock, ident, protocol.error(msg.id, "bad_request", f"samples must be 0..{MAX_PAUSE_SAMPLES}"))
            return
        stream = self._stream_at(ident, msg, seq)
        if stream is not None:
            self._answer(ident, msg, stream, seq, np.zeros(n, dtype=np.float32), pause=True)
