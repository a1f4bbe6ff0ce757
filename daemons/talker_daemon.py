"""Talker daemon: the request hub. Clients send text; the talker generates code 0 per frame, asks the
predictor daemon for codes 1..15 + the feedback row, streams frames to the vocoder daemon and forwards
its audio to the client. One utterance generates at a time; others wait in a bounded, fair queue
(round robin over clients); the vocoder of a finished utterance overlaps the next one's generation."""
from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np
import zmq

from . import protocol
from .errors import TTSError
from .generate import Generation, RunawayRules, generate_frames
from .manifest import ModelDir
from .prompt import PromptBuilder
from .sampling import Sampler, SamplingParams
from .segment import Segment, plan_segments
from .service import Service
from .talker import TalkerEngine
from .voice import Voice, find_voice

CLIENT_PARAMS = {"do_sample": bool, "temperature": float, "top_k": int, "top_p": float,
                 "repetition_penalty": float, "sub_do_sample": bool, "sub_temperature": float,
                 "sub_top_k": int, "sub_top_p": float, "seed": int}


class Unavailable(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


class RemotePredictor:
    """The predictor daemon behind the `Predictor` interface of `generate_frames`."""

    def __init__(self, sock: zmq.Socket, timeout_s: float, max_bytes: int):
        self.sock, self.timeout_s, self.max_bytes = sock, timeout_s, max_bytes
        self.rid = ""

    def predict(self, hidden, c0, params: SamplingParams, seed, frame):
        sub = {"sub_do_sample": params.sub_do_sample, "sub_temperature": params.sub_temperature,
               "sub_top_k": params.sub_top_k, "sub_top_p": params.sub_top_p}
        msg = protocol.encode("predict", {"hidden": np.asarray(hidden, np.float32)}, id=self.rid, frame=frame,
                              c0=int(c0), seed=int(seed), params=sub)
        deadline = time.monotonic() + self.timeout_s
        while True:  # not connected (IMMEDIATE): retry until the deadline, the daemon may be restarting
            try:
                self.sock.send_multipart(msg, flags=zmq.NOBLOCK, copy=False)
                break
            except zmq.Again:
                if time.monotonic() > deadline:
                    raise Unavailable("predictor_unavailable", "the predictor daemon is not running") from None
                time.sleep(0.01)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                raise Unavailable("predictor_unavailable",
                                  f"no answer from the predictor daemon within {self.timeout_s:g} s")
            try:
                r = protocol.decode(self.sock.recv_multipart(), self.max_bytes)
            except protocol.ProtocolError:
                continue
            if r.id != self.rid or r.header.get("frame") != frame:
                continue  # a late answer to an abandoned request
            if r.type == "error":
                raise Unavailable("predictor_unavailable", f"predictor: {r.header.get('message')}")
            return r.arrays["codes"].astype(np.int64), r.arrays["feedback"]


@dataclass
class Request:
    id: str
    ident: bytes
    segments: list[Segment]
    params: SamplingParams
    return_codes: bool
    pause_samples: int
    accepted: float = field(default_factory=time.monotonic)
    base_seed: int = 0
    seg: int = -1                   # index of the segment being generated
    gen: Generation = field(default_factory=Generation)
    results: list = field(default_factory=list)   # per finished segment: {index, frames, stop, seed}
    frames: list = field(default_factory=list)
    pending: list = field(default_factory=list)
    seg_start: int = 0              # global frame index where the current segment started
    text_end: int = 0               # global frame index from which its text queue is used up
    silent_run: int = 0             # consecutive near-silent frames heard after text_end
    audio_frames: int = 0           # frames whose audio came back
    stop_silence: bool = False
    seq_sent: int = 0
    seq_done: int = 0
    last_voc: float = 0.0
    generator: object = None
    finished_generating: bool = False
    blocked_since: float | None = None
    pause_pending: bool = False
    context: np.ndarray | None = None  # in-context voice: reference codes, the vocoder's left context


class TalkerDaemon(Service):
    role = "talker"

    def load(self) -> None:
        self.md = ModelDir(self.cfg.model_dir)
        self.prompts = PromptBuilder(self.md)
        self.engine = TalkerEngine(self.md, threads=self.threads)
        self.defaults = SamplingParams.from_generation_config(self.md.generation, **{
            k: v for k, v in self.cfg.sampling.items() if k in CLIENT_PARAMS})
        self.front = self.bind_router(self.cfg.endpoints["talker"])
        # No send high-water mark towards clients: a slow reader must not look like a vanished one (EAGAIN),
        # and what can queue up is bounded anyway by max_frames (progress + audio of one utterance).
        self.front.setsockopt(zmq.SNDHWM, 0)
        self.pred_sock = self.connect_dealer(self.cfg.endpoints["predictor"])
        self.voc = self.connect_dealer(self.cfg.endpoints["vocoder"])
        self.predictor = RemotePredictor(self.pred_sock, self.limits.predictor_timeout_s,
                                         self.limits.max_message_bytes)
        self.queues: OrderedDict[bytes, deque] = OrderedDict()  # client -> its waiting requests
        self.active: Request | None = None
        self.draining: dict[str, Request] = {}
        self.known_ids: set[str] = set()
        self.random_weights = bool(self.md.manifest["source"].get("random_weights"))

    def warmup(self) -> None:
        p = self.prompts.build("warm up", "auto")
        self.engine.prefill(p.prefill)
        self.engine.step(p.pad)

    def drained(self) -> bool:
        return self.active is None and not self.draining

    def status_line(self) -> str:
        return super().status_line() + f" queue={self.limits.queue_size}"

    # --- client messages -------------------------------------------------------------------------
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def send_client(self, req_or_ident, frames) -> bool:
        ident = req_or_ident.ident if isinstance(req_or_ident, Request) else req_or_ident
        return self.reply(self.front, ident, frames)

    def on_client(self, ident: bytes, msg: protocol.Message) -> None:
        rid = msg.id
        if msg.type == "ping":
            self.send_client(ident, protocol.encode("pong", role=self.role, ready=True, queue=self.queued(),
                                                    active=self.active is not None))
            return
        if msg.type == "cancel":
            self.cancel(rid, "cancelled by the client")
            return
        if msg.type != "synthesize":
            self.send_client(ident, protocol.error(rid, "bad_request", f"unknown message type {msg.type!r}"))
            return
        if rid is None or rid in self.known_ids:
            self.send_client(ident, protocol.error(rid, "bad_request", "synthesize needs a new unique id"))
            return
        if self.stop_requested:
            self.send_client(ident, protocol.error(rid, "shutting_down", "the talker daemon is stopping"))
            return
        try:
            req = self.make_request(ident, msg)
        except TTSError as e:
            self.send_client(ident, protocol.error(rid, e.code, e.message))
            return
        except ValueError as e:
            self.send_client(ident, protocol.error(rid, "invalid_request", str(e)))
            return
        # an idle talker starts the first waiting request at once, so it does not take a queue place
        if self.queued() >= self.limits.queue_size + (self.active is None):
            self.send_client(ident, protocol.error(rid, "busy", f"{self.queued()} requests are waiting; "
                                                                "try again later"))
            return
        self.queues.setdefault(ident, deque()).append(req)
        self.known_ids.add(rid)
        self.send_client(req, protocol.encode("accepted", id=rid, position=self.queued()))

    def make_request(self, ident: bytes, msg: protocol.Message) -> Request:
        h = msg.header
        text = h.get("text")
        if isinstance(text, str) and len(text) > self.limits.max_text_chars:
            from .errors import InvalidText
            raise InvalidText(f"text is too long: {len(text)} characters (limit {self.limits.max_text_chars})")
        params = SamplingParams(**vars(self.defaults))
        user = h.get("params") or {}
        if not isinstance(user, dict) or set(user) - set(CLIENT_PARAMS):
            raise ValueError(f"params must be an object with keys among {', '.join(CLIENT_PARAMS)}")
        for k, v in user.items():
            typ = CLIENT_PARAMS[k]
            if typ is bool and not isinstance(v, bool) or typ is not bool and (
                    isinstance(v, bool) or not isinstance(v, (int, float)) or (typ is int and v != int(v))):
                raise ValueError(f"{k} must be a {typ.__name__}")
            setattr(params, k, typ(v))
        params.validate()
        max_frames = h.get("max_frames", self.limits.max_frames)
        if not isinstance(max_frames, int) or isinstance(max_frames, bool) or max_frames < 1:
            raise ValueError("max_frames must be a positive integer")
        L = self.limits
        cap = min(max_frames, L.max_frames)
        language, ns, xv = h.get("language", "auto"), bool(h.get("non_streaming")), msg.arrays.get("xvector")
        ref_codes = ref_text = None
        voice = self.request_voice(h.get("voice"), h.get("voice_mode"))
        if voice is not None:
            xv, ref_codes, ref_text = voice.xvector, voice.ref_codes, voice.ref_text
            if language in (None, "", "auto"):
                language = voice.language
        if h.get("segment", True):
            segments = plan_segments(self.prompts, text, language, max_frames=cap, non_streaming=ns, xvector=xv,
                                     ref_codes=ref_codes, ref_text=ref_text, max_chars=L.segment_max_chars,
                                     cap_base=L.cap_base_frames, cap_per_token=L.cap_frames_per_token)
        else:
            segments = [Segment(text, self.prompts.build(text, language, non_streaming=ns, xvector=xv,
                                                         ref_codes=ref_codes, ref_text=ref_text), cap)]
        for sg in segments:
            room = self.engine.lm.n_ctx - len(sg.prompt.prefill)
            if room < 1:
                raise ValueError("a segment's prompt does not fit the talker context")
            sg.cap = min(sg.cap, room)
        pause_ms = h.get("pause_ms", L.pause_ms)
        if not isinstance(pause_ms, int) or isinstance(pause_ms, bool) or not 0 <= pause_ms <= 5000:
            raise ValueError("pause_ms must be an integer in 0..5000")
        return Request(msg.id, ident, segments, params, bool(h.get("return_codes")), pause_ms * 24,
                       context=ref_codes)

    def request_voice(self, spec, mode) -> Voice | None:
        """`voice`: a name from the voices directory, or a whole voice file (JSON object) sent inline.
        `voice_mode` "xvector" uses only the speaker embedding of an in-context voice."""
        if spec is None:
            return None
        hidden = self.md.talker["hidden_size"]
        if isinstance(spec, str):
            voice = find_voice(spec, self.cfg.voices_dir, hidden)
        elif isinstance(spec, dict):
            voice = Voice.from_json(spec, "voice", hidden)
        else:
            raise ValueError("voice must be a voice name or a voice file object")
        if mode not in (None, "auto", "icl", "xvector"):
            raise ValueError("voice_mode must be one of auto, icl, xvector")
        if mode == "icl" and voice.mode != "icl":
            raise ValueError("voice_mode icl needs a voice with reference codes and a transcript")
        return voice.as_xvector_only() if mode == "xvector" else voice

    def cancel(self, rid: str | None, why: str) -> None:
        for q in self.queues.values():
            for r in list(q):
                if r.id == rid:
                    q.remove(r)
                    self.fail(r, "cancelled", why)
                    return
        if self.active is not None and self.active.id == rid:
            self.fail(self.active, "cancelled", why)
        elif rid in self.draining:
            self.fail(self.draining[rid], "cancelled", why)

    # --- request life cycle ------------------------------------------------------------------------
    def fail(self, req: Request, code: str, message: str) -> None:
        self.log.info("request %s failed: %s: %s", req.id, code, message)
        self.send_client(req, protocol.error(req.id, code, message))
        self.forget(req)

    def forget(self, req: Request) -> None:
        if self.active is req:
            self.active = None
        self.draining.pop(req.id, None)
        self.known_ids.discard(req.id)
        if req.seq_sent:
            try:
                self.voc.send_multipart(protocol.encode("close", id=req.id), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass

    def next_request(self) -> Request | None:
        while self.queues:
            ident, q = next(iter(self.queues.items()))
            self.queues.move_to_end(ident)  # round robin: this client goes to the back
            if q:
                r = q.popleft()
                if not q:
                    del self.queues[ident]
                return r
            del self.queues[ident]
        return None

    def start(self, req: Request) -> None:
        req.base_seed = req.params.seed if req.params.seed is not None else secrets.randbits(63)
        self.active = req
        if req.context is not None:  # the vocoder primes the reference while the talker prefills
            try:
                self.voc.send_multipart(protocol.encode("prime", {"context": np.asarray(req.context, np.int64)},
                                                        id=req.id), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # not connected: the first frames carry the context anyway
        self.next_segment(req)

    def next_segment(self, req: Request) -> None:
        """Prefill the next segment's prompt; the vocoder stream (same id, next seq) carries on, so the
        boundary has no seam."""
        req.seg += 1
        seg = req.segments[req.seg]
        params = SamplingParams(**{**vars(req.params), "seed": (req.base_seed + req.seg) % (1 << 63)})
        sampler = Sampler(params, self.md.talker["codec_vocab"], self.md.special["codec_eos"])
        self.predictor.rid = req.id
        req.gen = Generation()
        req.seg_start = len(req.frames)
        req.text_end = req.seg_start + len(seg.prompt.trailing)
        req.silent_run = 0
        req.stop_silence = False
        runaway = RunawayRules(loop_frames=self.limits.loop_frames)
        req.generator = generate_frames(self.engine, self.predictor, seg.prompt, sampler, seg.cap, req.gen, runaway)

    def chunk_size(self, req: Request) -> int:
        return self.limits.first_chunk_frames if req.seq_sent == 0 else self.limits.chunk_frames

    def send_frames(self, req: Request) -> None:
        """Hand the pending frames to the vocoder; while it is not connected (restarting) they wait, and
        `check_timeouts` turns a long wait into `vocoder_unavailable`."""
        try:
            self.voc.send_multipart(protocol.encode("frames", self.first_arrays(req, {"codes": np.stack(req.pending)}),
                                                    id=req.id, seq=req.seq_sent), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            req.blocked_since = req.blocked_since or time.monotonic()
            return
        req.pending = []
        req.blocked_since = None
        req.seq_sent += 1
        req.last_voc = time.monotonic()

    @staticmethod
    def first_arrays(req: Request, arrays: dict) -> dict | None:
        """The message that opens a vocoder stream carries the in-context reference codes as left context."""
        if req.seq_sent == 0 and req.context is not None:
            arrays = {**arrays, "context": np.asarray(req.context, dtype=np.int64)}
        return arrays or None

    def step_active(self) -> None:
        req = self.active
        try:
            self._step(req)
        except (Unavailable, TTSError) as e:
            self.fail(req, e.code, e.message)

    def _step(self, req: Request) -> None:
        if req.pause_pending:  # silence after the previous segment, in stream order
            if req.pending:
                self.send_frames(req)  # still waiting for a (re)connecting vocoder
            elif self.send_pause(req):
                req.pause_pending = False
            return
        fr = None
        if req.stop_silence:
            req.gen.stop = "runaway_silence"
        else:
            try:
                fr = next(req.generator)
            except StopIteration:
                pass
        if fr is None:
            req.results.append({"index": req.seg, "frames": req.gen.frames, "stop": req.gen.stop,
                                "seed": req.gen.seed, "chars": len(req.segments[req.seg].text)})
            if req.pending:
                self.send_frames(req)
            if req.seg + 1 < len(req.segments):
                req.pause_pending = req.pause_samples > 0
                self.next_segment(req)
                return
            req.finished_generating = True
            self.active = None
            self.draining[req.id] = req
            self.maybe_done(req)
            return
        req.frames.append(fr)
        req.pending.append(fr)
        # a per-frame note to the client: also how a vanished client is noticed within one frame
        if not self.send_client(req, protocol.encode("progress", id=req.id, frame=len(req.frames),
                                                     segment=req.seg)):
            self.log.info("client of %s is gone: cancelling", req.id)
            self.forget(req)
            return
        if len(req.pending) >= self.chunk_size(req):
            self.send_frames(req)

    def send_pause(self, req: Request) -> bool:
        try:
            self.voc.send_multipart(protocol.encode("pause", self.first_arrays(req, {}), id=req.id,
                                                    seq=req.seq_sent, samples=req.pause_samples), flags=zmq.NOBLOCK)
        except zmq.Again:
            req.blocked_since = req.blocked_since or time.monotonic()
            return False
        req.blocked_since = None
        req.seq_sent += 1
        req.last_voc = time.monotonic()
        return True

    def hear(self, req: Request, pcm: np.ndarray) -> None:
        """Near-silence runaway rule: count near-silent frames once the current segment's text is used up."""
        L = self.limits
        n = len(pcm) // 1920
        if n == 0 or L.silence_frames <= 0:
            return
        rms = np.sqrt(np.mean(pcm[:n * 1920].reshape(n, 1920).astype(np.float64) ** 2, axis=1))
        for i in range(n):
            f = req.audio_frames + i
            if f < max(req.text_end, req.seg_start):
                continue
            req.silent_run = req.silent_run + 1 if rms[i] < L.silence_rms else 0
            if req.silent_run >= L.silence_frames and self.active is req:
                req.stop_silence = True
        req.audio_frames += n

    def on_vocoder(self, msg: protocol.Message) -> None:
        req = self.draining.get(msg.id) or (self.active if self.active and self.active.id == msg.id else None)
        if req is None:
            return
        if msg.type == "error":
            self.fail(req, "vocoder_unavailable", f"vocoder: {msg.header.get('message')}")
            return
        if msg.type != "audio" or msg.header.get("seq") != req.seq_done:
            self.fail(req, "vocoder_unavailable", "vocoder answered out of order")
            return
        req.seq_done += 1
        req.last_voc = time.monotonic()
        pcm = msg.arrays["pcm"]
        if not msg.header.get("pause"):
            self.hear(req, pcm)
        if not self.send_client(req, protocol.encode("audio", {"pcm": msg.arrays["pcm"]}, id=req.id,
                                                     seq=msg.header["seq"])):
            self.forget(req)
            return
        self.maybe_done(req)

    def maybe_done(self, req: Request) -> None:
        if req.finished_generating and not req.pending and req.seq_done == req.seq_sent:
            arrays = {"codes": np.stack(req.frames) if req.frames else np.zeros((0, 16), np.int64)} \
                if req.return_codes else None
            stops = [r["stop"] for r in req.results]
            self.send_client(req, protocol.encode("done", arrays, id=req.id, frames=len(req.frames),
                                                  stop="eos" if all(x == "eos" for x in stops) else
                                                  next(x for x in stops if x != "eos"),
                                                  seed=req.base_seed, segments=req.results,
                                                  random_weights=self.random_weights))
            self.log.info("request %s done: %d frames in %d segment(s), stops %s, %.2f s", req.id,
                          len(req.frames), len(req.results), ",".join(stops), time.monotonic() - req.accepted)
            self.forget(req)

    def check_timeouts(self) -> None:
        now = time.monotonic()
        for req in list(self.draining.values()) + ([self.active] if self.active else []):
            if req.blocked_since and now - req.blocked_since > self.limits.vocoder_timeout_s:
                self.fail(req, "vocoder_unavailable", "the vocoder daemon is not running")
            elif req.seq_done < req.seq_sent and now - req.last_voc > self.limits.vocoder_timeout_s:
                self.fail(req, "vocoder_unavailable",
                          f"no audio from the vocoder daemon within {self.limits.vocoder_timeout_s:g} s")
            elif now - req.accepted > self.limits.request_timeout_s:
                self.fail(req, "timeout", f"request exceeded {self.limits.request_timeout_s:g} s")

    # --- the loop ---------------------------------------------------------------------------------
    def serve_once(self, timeout_ms: int) -> None:
        busy = self.active is not None or (self.queues and not self.stop_requested)
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.voc, zmq.POLLIN)
        ready = dict(poller.poll(0 if busy else timeout_ms))
        if self.front in ready:
            for _ in range(64):
                try:
                    ident, msg = self._recv_front()
                except zmq.Again:
                    break
                if msg is not None:
                    self.on_client(ident, msg)
        if self.voc in ready:
            for _ in range(64):
                try:
                    frames = self.voc.recv_multipart(flags=zmq.NOBLOCK)
                except zmq.Again:
                    break
                try:
                    self.on_vocoder(protocol.decode(frames, self.limits.max_message_bytes))
                except protocol.ProtocolError as e:
                    self.log.warning("bad message from the vocoder: %s", e)
        if self.stop_requested:
            for q in self.queues.values():  # accepted but not started: a typed error, never silence
                for r in q:
                    self.fail(r, "shutting_down", "the talker daemon is stopping")
            self.queues.clear()
        if self.active is None and not self.stop_requested:
            nxt = self.next_request()
            if nxt is not None:
                self.start(nxt)
        for req in list(self.draining.values()):
            if req.pending:  # frames that waited for a (re)connecting vocoder
                self.send_frames(req)
                self.maybe_done(req)
        if self.active is not None:
            self.step_active()
        self.check_timeouts()

    def _recv_front(self):
        if not self.front.poll(0, zmq.POLLIN):
            raise zmq.Again()
        return self.recv_request(self.front)
