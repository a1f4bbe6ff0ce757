"""Talker daemon: the request hub. Clients send text; the talker generates code 0 per frame, asks the
predictor daemon for codes 1..15 + the feedback row, streams frames to the vocoder daemon and forwards
its audio to the client. One utterance generates at a time; others wait in a bounded, fair queue
(round robin over clients); the vocoder of a finished utterance overlaps the next one's generation."""
from __future__ import annotations

import math
import secrets
import time
from collections import OrderedDict, deque

import numpy as np
import zmq

from . import protocol
from .engine.errors import InvalidRequest, InvalidText, TTSError
from .engine.manifest import ModelDir
from .engine.prompt import PromptBuilder
from .engine.sampling import SamplingParams
from .engine.segment import Segment, plan_segments
from .engine.talker import TalkerEngine
from .engine.voice import Voice, find_voice
from .service import Service
from .talker_request import Engines, Request, RequestFailed

CLIENT_PARAMS = {"do_sample": bool, "temperature": float, "top_k": int, "top_p": float,
                 "repetition_penalty": float, "sub_do_sample": bool, "sub_temperature": float,
                 "sub_top_k": int, "sub_top_p": float, "seed": int}
FRONT_RCVHWM = 256  # client messages waiting to be read (the loop reads up to 64 per frame)


def parse_params(user, defaults: SamplingParams) -> SamplingParams:
    """A request's sampling parameters over the defaults: known keys, right types, finite numbers, integers
    that are integers, then `SamplingParams.validate` for the ranges. ValueError names the bad key."""
    if not isinstance(user, dict) or set(user) - set(CLIENT_PARAMS):
        raise ValueError(f"params must be an object with keys among {', '.join(CLIENT_PARAMS)}")
    params = SamplingParams(**vars(defaults))
    for k, v in user.items():
        typ = CLIENT_PARAMS[k]
        if typ is bool:
            if not isinstance(v, bool):
                raise ValueError(f"{k} must be a boolean")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or (typ is int and v != int(v)):
            raise ValueError(f"{k} must be a finite {'integer' if typ is int else 'number'}")
        if k == "seed" and not 0 <= v < 1 << 63:
            raise ValueError("seed must be in [0, 2**63)")
        if k in ("top_k", "sub_top_k") and not 0 <= v <= 1 << 20:
            raise ValueError(f"{k} must be in 0..{1 << 20} (0 disables)")
        setattr(params, k, typ(v))
    params.validate()
    return params


class RemotePredictor:
    """The predictor daemon behind the `Predictor` interface of `generate_frames`."""

    def __init__(self, sock: zmq.Socket, timeout_s: float, max_bytes: int):
        self.sock, self.timeout_s, self.max_bytes = sock, timeout_s, max_bytes
        self.rid = ""
        self.compute_s = 0.0  # the last predict's compute time as the predictor daemon measured it
        self.burst = False    # ask for the predictor's burst threads (the vocoder is idle)
        self.bursted = False  # the last predict ran on the burst threads (the predictor says)

    def predict(self, hidden, c0, params: SamplingParams, seed, frame):
        sub = {"sub_do_sample": params.sub_do_sample, "sub_temperature": params.sub_temperature,
               "sub_top_k": params.sub_top_k, "sub_top_p": params.sub_top_p}
        extra = {"burst": True} if self.burst else {}
        msg = protocol.encode("predict", {"hidden": np.asarray(hidden, np.float32)}, id=self.rid, frame=frame,
                              c0=int(c0), seed=int(seed), params=sub, **extra)
        deadline = time.monotonic() + self.timeout_s
        while True:  # not connected (IMMEDIATE): retry until the deadline, the daemon may be restarting
            try:
                self.sock.send_multipart(msg, flags=zmq.NOBLOCK, copy=False)
                break
            except zmq.Again:
                if time.monotonic() > deadline:
                    raise RequestFailed("predictor_unavailable", "the predictor daemon is not running") from None
                time.sleep(0.01)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sock.poll(int(left * 1000) + 1, zmq.POLLIN):
                raise RequestFailed("predictor_unavailable",
                                    f"no answer from the predictor daemon within {self.timeout_s:g} s")
            try:
                r = protocol.decode(self.sock.recv_multipart(), self.max_bytes)
            except protocol.ProtocolError:
                continue
            if r.id != self.rid or r.header.get("frame") != frame:
                continue  # a late answer to an abandoned request
            if r.type == "error":
                raise RequestFailed("predictor_unavailable", f"predictor: {r.header.get('message')}")
            ms = r.header.get("ms")
            self.compute_s = ms / 1000 if isinstance(ms, (int, float)) and 0 <= ms < 1e7 else 0.0
            self.bursted = r.header.get("burst") is True
            return r.arrays["codes"].astype(np.int64), r.arrays["feedback"]


class _Links:
    """A request's two outlets: its client (ROUTER identity) and the vocoder stream, both non-blocking."""

    def __init__(self, daemon: "TalkerDaemon", ident: bytes):
        self.daemon, self.ident = daemon, ident

    def client(self, frames: list) -> bool:
        return self.daemon.send_client(self.ident, frames)

    def vocoder(self, frames: list) -> bool:
        try:
            self.daemon.voc.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.Again:
            return False


class TalkerDaemon(Service):
    role = "talker"

    def load(self) -> None:
        self.md = ModelDir(self.cfg.model_dir)
        self.prompts = PromptBuilder(self.md)
        # prompt-prefix KV states persist in cache_dir/talker-prefix (checksummed files, engine/file_store.py)
        cache = self.cfg.cache_dir / "talker-prefix" if self.cfg.cache_dir is not None else None
        self.engine = TalkerEngine(self.md, threads=self.threads, cache_dir=cache,
                                   cache_dir_bytes=int(self.limits.prefix_cache_mb * 2 ** 20), log=self.log)
        if self.engine.cache is not None:
            self.engine.cache.defer_writes = True  # written between requests (serve_once), not before audio
        # [sampling]: server-side defaults over the model's generation_config, all of its keys (a client
        # may override only CLIENT_PARAMS; min_new_tokens is the server's alone)
        self.defaults = SamplingParams.from_generation_config(self.md.generation, **self.cfg.sampling)
        self.front = self.bind_router(self.cfg.endpoints["talker"])
        # Towards clients a bounded send queue (set before clients connect: it applies to their pipes): a
        # client that stops reading until it fills loses its request (logged); no unbounded memory.
        self.front.setsockopt(zmq.SNDHWM, self.limits.client_send_queue)
        self.front.setsockopt(zmq.RCVHWM, FRONT_RCVHWM)
        self.pred_sock = self.connect_dealer(self.cfg.endpoints["predictor"])
        self.voc = self.connect_dealer(self.cfg.endpoints["vocoder"])
        self.predictor = RemotePredictor(self.pred_sock, self.limits.predictor_timeout_s,
                                         self.limits.max_message_bytes)
        self.engines = Engines(self.engine, self.predictor, self.md.talker["codec_vocab"],
                               self.md.special["codec_eos"], self.limits, n_ctx=self.engine.lm.n_ctx,
                               random_weights=bool(self.md.manifest["source"].get("random_weights")))
        self.queues: OrderedDict[bytes, deque] = OrderedDict()  # client -> its waiting requests
        self.active: Request | None = None
        self.draining: dict[str, Request] = {}      # by wire id: generated, audio still coming
        self.requests: dict[tuple[bytes, str], Request] = {}  # (client, its id): every live request
        self.drain_deadline: float | None = None

    def warmup(self) -> None:
        p = self.prompts.build("warm up", "auto")
        self.engine.prefill(p.prefill)
        self.engine.step(p.pad)

    def drained(self) -> bool:
        return self.active is None and not self.draining

    def status_line(self) -> str:
        return super().status_line() + f" queue={self.limits.queue_size}"

    def cache_stats(self) -> dict:
        """Prompt-prefix cache counters for the ping reply (disk hits: entries read back from cache_dir)."""
        c = self.engine.cache
        if c is None:
            return {}
        return {"prefix_hits": c.hits, "prefix_misses": c.misses, "prefix_disk_hits": c.disk_hits,
                "prefix_unwritten": len(c.unwritten),
                "prefix_cache_dir": str(c.dir) if c.dir is not None else None}

    def run(self) -> int:
        try:
            return super().run()
        finally:  # stopping: what is still in memory only goes to disk now
            if self.engine.cache is not None:
                self.engine.cache.flush()

    # --- client messages -------------------------------------------------------------------------
    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def send_client(self, ident: bytes, frames) -> bool:
        return self.reply(self.front, ident, frames)

    def on_client(self, ident: bytes, msg: protocol.Message) -> None:
        rid = msg.id
        if msg.type == "ping":
            self.send_client(ident, protocol.encode("pong", role=self.role, ready=True, queue=self.queued(),
                                                    active=self.active is not None,
                                                    languages=sorted(self.md.languages), **self.cache_stats()))
            return
        if msg.type == "cancel":
            req = self.requests.get((ident, rid))  # a client can cancel its own requests only
            if req is not None:
                self.fail(req, "cancelled", "cancelled by the client")
            return
        if msg.type != "synthesize":
            self.send_client(ident, protocol.error(rid, "bad_request", f"unknown message type {msg.type!r}"))
            return
        if rid is None or (ident, rid) in self.requests:
            self.send_client(ident, protocol.error(rid, "bad_request", "synthesize needs a new unique id"))
            return
        if self.stop_requested:
            self.send_client(ident, protocol.error(rid, "shutting_down", "the talker daemon is stopping"))
            return
        # admission before any work: a refused request costs no tokenizing, no voice, no prompt rows
        mine = len(self.queues.get(ident, ()))
        if self.queued() >= self.limits.queue_size + (self.active is None):
            self.send_client(ident, protocol.error(rid, "busy", f"{self.queued()} requests are waiting; "
                                                                "try again later"))
            return
        if mine >= self.limits.client_queue_size:
            self.send_client(ident, protocol.error(rid, "busy", f"this connection already has {mine} requests "
                                                                "waiting; try again later"))
            return
        try:
            req = self.make_request(ident, msg)
        except TTSError as e:
            self.send_client(ident, protocol.error(rid, e.code, e.message))
            return
        except ValueError as e:
            self.send_client(ident, protocol.error(rid, "invalid_request", str(e)))
            return
        self.queues.setdefault(ident, deque()).append(req)
        self.requests[(ident, rid)] = req
        self.send_client(ident, protocol.encode("accepted", id=rid, position=self.queued()))

    def make_request(self, ident: bytes, msg: protocol.Message) -> Request:
        h = msg.header
        L = self.limits
        text = h.get("text")
        if isinstance(text, str) and len(text) > L.max_text_chars:
            raise InvalidText(f"text is too long: {len(text)} characters (limit {L.max_text_chars})")
        params = parse_params(h.get("params") or {}, self.defaults)
        max_frames = h.get("max_frames", L.max_frames)
        if not isinstance(max_frames, int) or isinstance(max_frames, bool) or max_frames < 1:
            raise ValueError("max_frames must be a positive integer")
        pause_ms = h.get("pause_ms", L.pause_ms)
        if not isinstance(pause_ms, int) or isinstance(pause_ms, bool) or not 0 <= pause_ms <= 5000:
            raise ValueError("pause_ms must be an integer in 0..5000")
        language = h.get("language", "auto")
        if language is not None and not isinstance(language, str):
            raise ValueError("language must be a string (a language name or auto)")
        cap = min(max_frames, L.max_frames)
        ns, xv = bool(h.get("non_streaming")), msg.arrays.get("xvector")
        ref_codes = ref_text = None
        voice = self.request_voice(h.get("voice"), h.get("voice_mode"))
        if voice is not None:
            xv, ref_codes, ref_text = voice.xvector, voice.ref_codes, voice.ref_text
            if language in (None, "", "auto"):
                language = voice.language
        if h.get("segment", True):
            # lazily: only the first prompt is built now; the others when their sentence starts
            segments = plan_segments(self.prompts, text, language, max_frames=cap, non_streaming=ns, xvector=xv,
                                     ref_codes=ref_codes, ref_text=ref_text, max_chars=L.segment_max_chars,
                                     cap_base=L.cap_base_frames, cap_per_token=L.cap_frames_per_token, lazy=True)
        else:
            segments = [Segment(text, self.prompts.build(text, language, non_streaming=ns, xvector=xv,
                                                         ref_codes=ref_codes, ref_text=ref_text), cap)]
        if len(segments[0].prompt.prefill) >= self.engine.lm.n_ctx:
            raise ValueError("a segment's prompt does not fit the talker context")
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
        if mode != "xvector" and voice.ref_codes is not None and len(voice.ref_codes) > self.limits.max_ref_frames:
            raise InvalidRequest(f"the voice's reference has {len(voice.ref_codes)} frames; at most "
                                 f"{self.limits.max_ref_frames} ({self.limits.max_ref_frames * 0.08:g} s)")
        return voice.as_xvector_only() if mode == "xvector" else voice

    # --- request life cycle ------------------------------------------------------------------------
    def fail(self, req: Request, code: str, message: str) -> None:
        self.log.info("request %r failed: %s: %s", req.id, code, message)
        self.send_client(req.ident, protocol.error(req.id, code, message))
        self.forget(req)

    def forget(self, req: Request) -> None:
        if self.active is req:
            self.active = None
        q = self.queues.get(req.ident)
        if q is not None and req in q:
            q.remove(req)
            if not q:
                del self.queues[req.ident]
        self.draining.pop(req.wire_id, None)
        self.requests.pop((req.ident, req.id), None)
        req.close()

    def settle(self, req: Request) -> None:
        """Follow the request's state after it did some work."""
        if req.state == "draining" and self.active is req:  # generation ended; its audio is still coming
            self.active = None
            self.draining[req.wire_id] = req
        elif req.state == "done":
            t = req.timing()
            self.log.info("request %r done: %d frames in %d segment(s), stops %s, %.2f s; ms/frame: talker %.1f, "
                          "predictor %.1f (compute %.1f), sampling %.1f, step %.1f, span %.1f", req.id,
                          len(req.frames), len(req.results), ",".join(r["stop"] for r in req.results),
                          time.monotonic() - req.accepted, t["talker_ms"], t["predictor_ms"],
                          t["predictor_compute_ms"], t["sample_ms"], t["step_ms"], t["span_ms"])
            self.forget(req)
        elif req.state == "gone":
            self.log.info("client of %r is gone or stopped reading: cancelling", req.id)
            self.forget(req)

    def run_request(self, req: Request, work, *args) -> None:
        """Call one of the request's methods; a `RequestFailed` ends it with a typed error, and so does any
        other exception (logged with its traceback): no request can end the daemon."""
        try:
            work(*args)
        except RequestFailed as e:
            self.fail(req, e.code, e.message)
            return
        except Exception as e:
            self.log.exception("request %r: internal error", req.id)
            self.fail(req, "internal", f"internal error: {type(e).__name__}")
            return
        self.settle(req)

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
        self.active = req
        self.predictor.rid = req.wire_id
        seed = req.params.seed if req.params.seed is not None else secrets.randbits(63)
        self.run_request(req, req.begin, self.engines, _Links(self, req.ident), seed)

    def on_vocoder(self, msg: protocol.Message) -> None:
        req = self.draining.get(msg.id) or (self.active if self.active and self.active.wire_id == msg.id else None)
        if req is not None:
            self.run_request(req, req.deliver, msg)

    def in_flight(self) -> list[Request]:
        """The requests past the queue: those whose audio is still coming, and the one generating."""
        return list(self.draining.values()) + ([self.active] if self.active else [])

    def vocoder_idle(self) -> bool:
        """Nothing of ours is with the vocoder: every message sent has its answer, and no voice reference is
        being primed (until a request's first audio comes back). Then the predictor may use the vocoder's
        CPUs for a frame; the vocoder's next work is a message from this loop, sent between frames."""
        for r in self.in_flight():
            if r.seq_done != r.seq_sent or (r.context is not None and r.seq_done == 0):
                return False
        return True

    def check_timeouts(self) -> None:
        now = time.monotonic()
        for q in list(self.queues.values()):  # waiting counts towards request_timeout_s too
            for req in list(q):
                if now - req.accepted > self.limits.request_timeout_s:
                    self.fail(req, "timeout", f"request waited {self.limits.request_timeout_s:g} s in the queue")
        for req in self.in_flight():
            self.run_request(req, req.overdue, now)

    def on_stop(self) -> None:
        """SIGTERM: queued requests get `shutting_down` now; the running one finishes its current sentence
        (then `shutting_down` if sentences were left), and whatever still runs after drain_timeout_s ends."""
        if self.drain_deadline is None:
            self.drain_deadline = time.monotonic() + self.limits.drain_timeout_s
            if self.active is not None:
                self.active.last_segment = True
        for q in list(self.queues.values()):  # accepted but not started: a typed error, never silence
            for r in list(q):
                self.fail(r, "shutting_down", "the talker daemon is stopping")
        if time.monotonic() > self.drain_deadline:
            for r in self.in_flight():
                self.fail(r, "shutting_down", f"the talker daemon is stopping (drain took over "
                                              f"{self.limits.drain_timeout_s:g} s)")

    # --- the loop ---------------------------------------------------------------------------------
    def serve_once(self, timeout_ms: int) -> None:
        # a request waiting for its audio (silence rule) is not busy: sleep until the vocoder answers
        busy = (self.active is not None and not self.active.awaiting_audio()) or \
            (self.queues and not self.stop_requested)
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
                    try:
                        self.on_client(ident, msg)
                    except Exception as e:  # never reachable by design; if it is, the daemon lives on
                        self.log.exception("message %r from a client: internal error", msg.id)
                        self.send_client(ident, protocol.error(msg.id if isinstance(msg.id, str) else None,
                                                               "internal", f"internal error: {type(e).__name__}"))
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
            self.on_stop()
        if self.active is None and not self.stop_requested:
            nxt = self.next_request()
            if nxt is not None:
                self.start(nxt)
        for req in list(self.draining.values()):
            self.run_request(req, req.flush)  # frames that waited for a (re)connecting vocoder
        if self.active is not None:
            self.predictor.burst = self.vocoder_idle()
            self.run_request(self.active, self.active.step)
        self.check_timeouts()
        if self.engine.cache is not None and self.drained() and not self.queues \
                and not self.front.poll(0, zmq.POLLIN):
            self.engine.cache.flush_one()  # idle: one deferred prefix state to disk, then messages again

    def _recv_front(self):
        if not self.front.poll(0, zmq.POLLIN):
            raise zmq.Again()
        return self.recv_request(self.front)
