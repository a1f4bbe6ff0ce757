"""The WebSocket front (the seed protocol: makima `docs/specs/qwen3-tts-spec.md` v2.0) on the gateway's HTTP
port, in the gateway's event loop; a client of the talker like the other fronts (talker_link.py). Field
names are camelCase, as in the spec's message tables (its notes use snake_case; this front does not).

    GET /api/v1/speak    WebSocket upgrade; one session per connection:
      S->C ready{sessionId, voiceLoaded, capabilities{streaming, languages, encodings, sampleRates}}  at once
      C->S start{sampleRate 24000, encoding "pcm16"|"pcm32f", voice?, language?, authToken?, contractId?}
      S->C started{sampleRate, encoding, voice, language}
      C->S speak{text, priority "normal"|"high"}
      S->C audio as BINARY frames (s16le or f32le, 24 kHz mono, no header), one per talker chunk, as they
           are generated; with start{binaryAudio: false} JSON audioChunk{data (base64), sequenceNumber,
           isFinal, timestampMs} instead (sequence per speak from 0; the last one has isFinal true and no data)
      S->C complete{durationMs, charactersProcessed, audioLengthMs}                     per finished speak
      C->S cancel          the current speak stops (in the talker too, within a frame): error{CANCELLED}
      C->S stop{reason?}   the current speak is cancelled, queued ones dropped: stopped{reason}, then close
      S->C error{code, message, recoverable}

    GET /api/v1/voices   {"voices": [{id, name, language, description, isDefault}]}   (no key needed)

Speaks of one session are spoken one after the other, in order; `priority: "high"` goes ahead of the
session's queued normal speaks (after queued high ones), never interrupting the current one. A session
holds at most MAX_QUEUED waiting speaks (more: RATE_LIMITED). `cancel` with nothing running is ignored.

Extensions (not in the spec, all optional): in start and speak (a speak's value wins) `seed` and the
sampling parameters of the HTTP front (`temperature`, `top_k`/`topK`, `top_p`/`topP`,
`repetition_penalty`/`repetitionPenalty`, `do_sample`/`doSample`, `sub_do_sample`/`subDoSample`,
`sub_temperature`/`subTemperature`, `sub_top_k`/`subTopK`, `sub_top_p`/`subTopP`) and
`max_frames`/`maxFrames` (per sentence); in start `binaryAudio` (default true). Answers carry a few more
fields: `complete` the talker's `frames`, `seed` and per-sentence `stops`; an error's `detail` names the
exact cause (a talker code such as busy or unknown_language, or invalid_json, unknown_type, not_started,
text_too_long, invalid_encoding, ...); error{CANCELLED} has `framesGenerated`, `framesAfterCancel` (frames
the talker reported after the gateway sent the cancel) and `audioLengthMs` (audio sent before it).

Error codes are the spec's: INVALID_TEXT (every refused message: the spec's one code for bad input;
`detail` says which), VOICE_NOT_FOUND, UNAUTHORIZED (not recoverable: the socket closes with 1008),
RATE_LIMITED (the talker's queue or the session's is full), TIMEOUT, CANCELLED, SYNTHESIS_ERROR (a daemon
failed mid-speak), MODEL_LOADING (the talker does not answer or is stopping). Every other error is
recoverable: the session stays open and usable. Authentication: with [gateway] api_keys, `authToken` in
start or an `Authorization: Bearer` header on the upgrade request.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from daemons.engine.pcm import SAMPLE_RATE, to_int16

from .hostile import loads_strict
from .talker_link import CONNECT_TIMEOUT_S, TalkerError, TalkerRequest, manifest, resolve_voice, voice_names
from .wyoming import LANGUAGE_CODES, model_language

if TYPE_CHECKING:
    from .http import Gateway

log = logging.getLogger("qwen3_tts.gateway.websocket")

ENCODINGS = ("pcm16", "pcm32f")
MAX_QUEUED = 32           # waiting speaks per session
READY_PING_S = 0.5        # ready asks the talker whether it is up (it answers at once)
CANCEL_ACK_S = 10.0       # how long a cancelled speak waits for the talker's "cancelled"
DEFAULT_VOICE = "default"
# name in a message -> (the talker's parameter, kind)
PARAMS = {}
for _snake, _kind in (("seed", int), ("temperature", float), ("top_k", int), ("top_p", float),
                      ("repetition_penalty", float), ("do_sample", bool), ("sub_do_sample", bool),
                      ("sub_temperature", float), ("sub_top_k", int), ("sub_top_p", float)):
    PARAMS[_snake] = (_snake, _kind)
    _camel = _snake.split("_")[0] + "".join(w.title() for w in _snake.split("_")[1:])
    PARAMS[_camel] = (_snake, _kind)
# the talker's error codes -> the spec's
CODES = {"busy": "RATE_LIMITED", "timeout": "TIMEOUT", "cancelled": "CANCELLED", "not_running": "MODEL_LOADING",
         "shutting_down": "MODEL_LOADING", "unknown_voice": "VOICE_NOT_FOUND", "invalid_voice": "VOICE_NOT_FOUND",
         "invalid_text": "INVALID_TEXT", "unknown_language": "INVALID_TEXT", "invalid_request": "INVALID_TEXT",
         "bad_request": "INVALID_TEXT"}


class Refused(Exception):
    """A message this front answers with error{code, message, recoverable} (+ detail)."""

    def __init__(self, code: str, message: str, detail: str, recoverable: bool = True):
        super().__init__(message)
        self.code, self.message, self.detail, self.recoverable = code, message, detail, recoverable


def bad(detail: str, message: str) -> Refused:
    return Refused("INVALID_TEXT", message, detail)


def _value(data: dict, key: str, kind, lo=None):
    v = data[key]
    ok = (isinstance(v, bool) if kind is bool else
          isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or float(v).is_integer()))
    if not ok or (kind is float and not np.isfinite(v)):
        what = "a boolean" if kind is bool else "an integer" if kind is int else "a number"
        raise bad("invalid_value", f"{key} must be {what}")
    v = int(v) if kind is int else v
    if lo is not None and v < lo:
        raise bad("invalid_value", f"{key} must be at least {lo}")
    return v


def parse_params(data: dict) -> tuple[dict, int | None]:
    """The extensions of a start/speak message -> (talker params, max_frames or None)."""
    params = {}
    for k, (name, kind) in PARAMS.items():
        if k in data and data[k] is not None:
            params[name] = _value(data, k, kind)
    mf = None
    for k in ("max_frames", "maxFrames"):
        if k in data and data[k] is not None:
            mf = _value(data, k, int, 1)
    return params, mf


@dataclass
class Settings:
    """What a session's start said."""
    encoding: str
    voice: str | None              # the talker's voice name, None = the model's default
    voice_label: str
    language: str
    binary: bool
    params: dict
    max_frames: int | None


@dataclass
class Speak:
    text: str
    high: bool
    header: dict
    settings: Settings
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    quiet: bool = False            # cancelled by stop: no CANCELLED error (stopped says it)
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class WebSocketFront:
    def __init__(self, gw: "Gateway"):
        self.gw, self.cfg = gw, gw.cfg
        man = manifest(self.cfg)
        langs = man.get("languages")
        self.languages: list[str] = sorted(langs) if isinstance(langs, (dict, list)) else []

    def routes(self) -> list:
        return [WebSocketRoute("/api/v1/speak", self.speak_socket), Route("/api/v1/voices", self.voices,
                                                                          methods=["GET"])]

    def key_ok(self, token) -> bool:
        if not isinstance(token, str):
            return False
        ok = False
        for k in self.gw.g.api_keys:  # compare with every key, constant time each
            ok |= hmac.compare_digest(token.encode(), k.encode())
        return ok

    async def voices(self, request: Request):
        out = []
        names = voice_names(self.cfg)
        if DEFAULT_VOICE not in names:
            out.append({"id": DEFAULT_VOICE, "name": DEFAULT_VOICE, "language": "auto",
                        "description": "the model's default voice", "isDefault": True})
        for n in names:
            lang, mode = "auto", None
            try:
                doc = json.loads((Path(self.cfg.voices_dir) / f"{n}.json").read_text())
                lang = doc.get("language") or "auto" if isinstance(doc.get("language"), str) else "auto"
                mode = doc.get("mode") if isinstance(doc.get("mode"), str) else None
            except (OSError, ValueError, AttributeError):
                pass
            desc = f"cloned voice {n} (voices_dir" + (f", {mode})" if mode else ")")
            out.append({"id": n, "name": n, "language": lang, "description": desc, "isDefault": False})
        return JSONResponse({"voices": out})

    async def talker_languages(self) -> tuple[bool, list[str]]:
        """(the talker answers, the model's languages as far as known)."""
        try:
            pong = await self.gw.link.ping(READY_PING_S)
        except TalkerError:
            return False, self.languages
        langs = pong.get("languages")
        if isinstance(langs, list) and all(isinstance(x, str) for x in langs):
            self.languages = sorted(langs)
        return bool(pong.get("ready", True)), self.languages

    async def speak_socket(self, ws: WebSocket):
        await Session(self, ws).run()


class Session:
    def __init__(self, front: WebSocketFront, ws: WebSocket):
        self.front, self.ws, self.cfg = front, ws, front.cfg
        self.id = uuid.uuid4().hex
        self.settings: Settings | None = None
        self.queue: deque[Speak] = deque()
        self.wake = asyncio.Event()
        self.current: Speak | None = None
        self.worker: asyncio.Task | None = None
        self.send_lock = asyncio.Lock()
        keys = front.gw.g.api_keys
        self.authed = not keys
        self.bearer: str | None = None
        auth = ws.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            self.bearer = auth[7:].strip()

    # --- sending
    async def send_json(self, obj: dict) -> None:
        async with self.send_lock:
            await self.ws.send_text(json.dumps(obj, separators=(",", ":")))

    async def send_bytes(self, b: bytes) -> None:
        async with self.send_lock:
            await self.ws.send_bytes(b)

    async def error(self, e: Refused, **extra) -> None:
        log.info("websocket session %s: %s (%s): %s", self.id[:8], e.code, e.detail, e.message)
        await self.send_json({"type": "error", "code": e.code, "message": e.message, "recoverable": e.recoverable,
                              "detail": e.detail, **extra})

    # --- life cycle
    async def run(self) -> None:
        await self.ws.accept()
        try:
            if self.bearer is not None and not self.authed:
                if not self.front.key_ok(self.bearer):
                    await self.refuse_auth("invalid API key (Authorization: Bearer ...)")
                    return
                self.authed = True
            up, langs = await self.front.talker_languages()
            await self.send_json({"type": "ready", "sessionId": self.id, "voiceLoaded": up,
                                  "capabilities": {"streaming": True, "languages": langs or list(LANGUAGE_CODES),
                                                   "encodings": list(ENCODINGS), "sampleRates": [SAMPLE_RATE]},
                                  "randomWeights": bool(self.front.gw.random_weights)})
            self.worker = asyncio.create_task(self.work(), name=f"websocket {self.id[:8]}")
            while True:
                msg = await self.ws.receive()
                if msg["type"] == "websocket.disconnect":
                    return
                if not await self.dispatch(msg):
                    return
        except (WebSocketDisconnect, ConnectionError, OSError, RuntimeError):
            pass  # the client went away (a send or receive on a closed socket)
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """The socket is gone: cancel the current speak in the talker, drop the queue."""
        self.queue.clear()
        w, self.worker = self.worker, None
        if w is not None and not w.done():
            w.cancel()  # its talker request is cancelled on the way out
            with contextlib.suppress(BaseException):
                await w

    async def refuse_auth(self, message: str) -> None:
        await self.error(Refused("UNAUTHORIZED", message, "invalid_api_key", recoverable=False))
        await self.ws.close(1008)

    async def dispatch(self, msg: dict) -> bool:
        """One client message; False when the session ends."""
        try:
            text = msg.get("text")
            if text is None:
                raise bad("binary_message", "messages must be JSON text; binary frames are not accepted")
            try:
                data = loads_strict(text)
            except ValueError as e:
                raise bad("invalid_json", f"the message is not valid JSON: {e}") from None
            if not isinstance(data, dict) or not isinstance(data.get("type"), str):
                raise bad("invalid_message", "a message is a JSON object with a string \"type\"")
            kind = data["type"]
            if kind == "start":
                return await self.on_start(data)
            if kind == "speak":
                self.on_speak(data)
            elif kind == "cancel":
                if self.current is not None:
                    self.current.cancelled.set()
            elif kind == "stop":
                await self.on_stop(data)
                return False
            else:
                raise bad("unknown_type", f"unknown message type {kind!r}; one of start, speak, cancel, stop")
        except Refused as e:
            await self.error(e)
        except (WebSocketDisconnect, ConnectionError, OSError, RuntimeError):
            raise
        except Exception as e:  # never a traceback to the client, never a dead session
            log.exception("websocket session %s: internal error", self.id[:8])
            await self.error(Refused("SYNTHESIS_ERROR", f"internal error: {type(e).__name__}", "internal"))
        return True

    async def on_start(self, data: dict) -> bool:
        if not self.authed:
            if not self.front.key_ok(data.get("authToken")):
                await self.refuse_auth("invalid or missing authToken (this server needs an API key)")
                return False
            self.authed = True
        if self.current is not None or self.queue:
            raise bad("session_busy", "start while speaks are running or queued: wait for them or cancel")
        rate = data.get("sampleRate", SAMPLE_RATE)
        if rate is None:
            rate = SAMPLE_RATE
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate != SAMPLE_RATE:
            raise bad("unsupported_sample_rate", f"sampleRate must be {SAMPLE_RATE} (the model's rate), got {rate!r}")
        enc = data.get("encoding") or "pcm16"
        if enc not in ENCODINGS:
            raise bad("invalid_encoding", f"encoding must be one of {', '.join(ENCODINGS)}, got {enc!r}")
        voice = data.get("voice")
        if voice is not None and not isinstance(voice, str):
            raise bad("invalid_voice", "voice must be a voice name (GET /api/v1/voices)")
        if voice == DEFAULT_VOICE and DEFAULT_VOICE not in voice_names(self.cfg):
            voice = None
        try:
            resolved = resolve_voice(self.cfg, voice)
        except TalkerError as e:
            raise Refused("VOICE_NOT_FOUND", e.message, e.code) from None
        lang = data.get("language")
        if lang is not None and not isinstance(lang, str):
            raise bad("invalid_language", "language must be a string (a language name or code, or auto)")
        lang = model_language(lang)
        known = self.front.languages
        if known and lang != "auto" and lang.lower() not in known:
            raise bad("unknown_language", f"unknown language {lang!r}; one of auto, {', '.join(known)}")
        binary = data.get("binaryAudio", True)
        if not isinstance(binary, bool):
            raise bad("invalid_value", "binaryAudio must be a boolean")
        params, mf = parse_params(data)
        self.settings = Settings(enc, resolved, voice or DEFAULT_VOICE, lang.lower() if lang != "auto" else "auto",
                                 binary, params, mf)
        await self.send_json({"type": "started", "sampleRate": SAMPLE_RATE, "encoding": enc,
                              "voice": voice or DEFAULT_VOICE, "language": self.settings.language})
        return True

    def on_speak(self, data: dict) -> None:
        s = self.settings
        if s is None:
            raise bad("not_started", "speak before start: send start first")
        text = data.get("text")
        if not isinstance(text, str):
            raise bad("invalid_text", "speak needs a text string")
        if not text.strip():
            raise bad("empty_text", "text is empty")
        limit = self.cfg.gateway.max_input_chars
        if len(text) > limit:
            raise bad("text_too_long", f"text has {len(text)} characters, more than {limit}")
        prio = data.get("priority") or "normal"
        if prio not in ("normal", "high"):
            raise bad("invalid_priority", f"priority must be normal or high, got {prio!r}")
        params, mf = parse_params(data)
        if len(self.queue) >= MAX_QUEUED:
            raise Refused("RATE_LIMITED", f"{len(self.queue)} speaks of this session are waiting; try again later",
                          "session_queue_full")
        header = {"text": text, "language": s.language, "non_streaming": False, "return_codes": False,
                  "params": {**s.params, **params}}
        if (mf or s.max_frames) is not None:
            header["max_frames"] = mf or s.max_frames
        if s.voice is not None:
            header["voice"] = s.voice
        sp = Speak(text, prio == "high", header, s)
        if sp.high:  # ahead of the queued normal ones, after the queued high ones
            i = 0
            while i < len(self.queue) and self.queue[i].high:
                i += 1
            self.queue.insert(i, sp)
        else:
            self.queue.append(sp)
        self.wake.set()

    async def on_stop(self, data: dict) -> None:
        reason = data.get("reason")
        reason = reason if isinstance(reason, str) and reason else "client_request"
        self.queue.clear()
        cur = self.current
        if cur is not None:
            cur.quiet = True
            cur.cancelled.set()
        w, self.worker = self.worker, None
        if w is not None:
            if cur is not None:  # cancelled in the talker and answered: the talker is free when stopped is sent
                await asyncio.wait([asyncio.ensure_future(cur.finished.wait()), w],
                                   return_when=asyncio.FIRST_COMPLETED)
            w.cancel()
            with contextlib.suppress(BaseException):
                await w
        await self.send_json({"type": "stopped", "reason": reason})
        await self.ws.close(1000)

    # --- synthesis side
    async def work(self) -> None:
        try:
            while True:
                while not self.queue:
                    self.wake.clear()
                    await self.wake.wait()
                sp = self.queue.popleft()
                self.current = sp
                try:
                    await self.speak(sp)
                except (WebSocketDisconnect, ConnectionError, OSError, RuntimeError, asyncio.CancelledError):
                    raise
                except Exception as e:  # never a dead session
                    log.exception("websocket session %s: internal error", self.id[:8])
                    await self.error(Refused("SYNTHESIS_ERROR", f"internal error: {type(e).__name__}", "internal"))
                finally:
                    self.current = None
                    sp.finished.set()
        except (WebSocketDisconnect, ConnectionError, OSError, RuntimeError):
            log.info("websocket session %s: the client went away", self.id[:8])

    async def next_or_cancel(self, req: TalkerRequest, sp: Speak, timeout_s: float):
        """The request's next message, or None as soon as the speak is cancelled."""
        if sp.cancelled.is_set():
            return None
        poll = asyncio.ensure_future(req.poll(int(timeout_s * 1000)))
        cancel = asyncio.ensure_future(sp.cancelled.wait())
        try:
            await asyncio.wait({poll, cancel}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for f in (poll, cancel):
                if not f.done():
                    f.cancel()
        if sp.cancelled.is_set():
            return None
        if not poll.result():
            raise TalkerError("timeout", f"no answer from the talker daemon within {timeout_s:g} s")
        return await req.next(timeout_s)

    async def speak(self, sp: Speak) -> None:
        s = sp.settings
        t0 = time.monotonic()
        samples = seq = frames = 0
        req = self.front.gw.link.request()
        try:
            try:
                await req.synthesize(sp.header)
                timeout = CONNECT_TIMEOUT_S  # the first answer (accepted or an error) comes at once
                while True:
                    m = await self.next_or_cancel(req, sp, timeout)
                    if m is None:
                        await self.cancelled(req, sp, frames, samples)
                        return
                    timeout = self.cfg.limits.request_timeout_s
                    if m.type == "progress":
                        frames = int(m.header.get("frame", frames))
                    elif m.type == "audio":
                        pcm = np.asarray(m.arrays["pcm"], np.float32).reshape(-1)
                        if not len(pcm):
                            continue
                        b = to_int16(pcm).tobytes() if s.encoding == "pcm16" else pcm.astype("<f4").tobytes()
                        if s.binary:
                            await self.send_bytes(b)
                        else:
                            await self.send_json({"type": "audioChunk", "data": base64.b64encode(b).decode(),
                                                  "sequenceNumber": seq, "isFinal": False,
                                                  "timestampMs": ms(samples)})
                        seq += 1
                        samples += len(pcm)
                    elif m.type == "done":
                        if m.header.get("random_weights") is not None:
                            self.front.gw.random_weights = bool(m.header["random_weights"])
                        if not s.binary:
                            await self.send_json({"type": "audioChunk", "data": "", "sequenceNumber": seq,
                                                  "isFinal": True, "timestampMs": ms(samples)})
                        segs = m.header.get("segments") or []
                        await self.send_json({
                            "type": "complete", "durationMs": round((time.monotonic() - t0) * 1000),
                            "charactersProcessed": len(sp.text), "audioLengthMs": ms(samples),
                            "frames": m.header.get("frames"), "seed": m.header.get("seed"),
                            "stops": [g.get("stop") for g in segs if isinstance(g, dict)]})
                        return
            except TalkerError as e:
                if sp.cancelled.is_set() and e.code == "cancelled":
                    return
                code = CODES.get(e.code, "INVALID_TEXT" if e.code.startswith(("invalid_", "unknown_"))
                                 else "SYNTHESIS_ERROR")
                if sp.quiet:
                    return
                await self.error(Refused(code, e.message, e.code), audioLengthMs=ms(samples))
        finally:
            await req.cancel()  # (only when the talker has it and has not finished it)
            req.close()

    async def cancelled(self, req: TalkerRequest, sp: Speak, frames: int, samples: int) -> None:
        """The client cancelled the current speak: no more of its audio; cancel it in the talker and wait
        for the talker's answer (so the talker is free when CANCELLED is sent), counting its frames."""
        at_cancel, after = frames, None
        try:
            for m in await req.pending():  # already here: dropped, its frames counted before the cancel
                if m.type == "progress":
                    at_cancel = int(m.header.get("frame", at_cancel))
            frames = at_cancel
            if await req.cancel():
                after = 0
                deadline = time.monotonic() + CANCEL_ACK_S
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        after = None
                        break
                    m = await req.next(left)
                    if m.type == "progress":
                        frames = int(m.header.get("frame", frames))
                        after = frames - at_cancel
                    elif m.type == "done":
                        break
            elif req.finished:
                after = 0  # it had ended already
        except TalkerError as e:
            if e.code != "cancelled":
                log.info("websocket session %s: cancelled speak ended with %s: %s", self.id[:8], e.code, e.message)
                if e.code == "timeout":
                    after = None
        if sp.quiet:
            return
        await self.error(Refused("CANCELLED", "cancelled by the client", "cancelled"),
                         framesGenerated=frames, framesAfterCancel=after, audioLengthMs=ms(samples))


def ms(samples: int):
    """Samples at 24 kHz -> milliseconds (an integer whenever it is one: frames and pauses always are)."""
    v = samples * 1000 / SAMPLE_RATE
    return int(v) if v.is_integer() else round(v, 3)


def routes(gw: "Gateway") -> list:
    return WebSocketFront(gw).routes()
