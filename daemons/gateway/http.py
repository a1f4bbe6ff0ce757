"""`qwen3-tts-daemon gateway`: the OpenAI-compatible speech server (Starlette + uvicorn, asyncio).

A client of the talker over daemons/protocol.py with zmq.asyncio (daemons/gateway/talker_link.py, shared
with the other fronts), one DEALER per HTTP request (so the talker's per-connection fairness applies per
request); it loads no model.

    POST /v1/audio/speech      OpenAI CreateSpeechRequest (+ extras language, seed, sampling, max_frames)
    GET  /v1/models            {"object":"list","data":[{"id","object":"model","created","owned_by"}]}
    GET  /v1/audio/models      {"models":[{"id"}]}              (Open WebUI, no auth)
    GET  /v1/audio/voices      {"voices":[{"id","name"}]}       (Open WebUI, no auth)
    POST /v1/audio/voices      multipart name, audio_sample, transcript?, language? -> a new voice of
                               voices_dir (daemons/gateway/voices.py); DELETE /v1/audio/voices/{id}
    GET  /health               the talker's pong (503 when it does not answer)
    GET  /metrics              Prometheus text
    GET  /                     the web page (daemons/gateway/web.py), GET /v1/info what it needs to know
    GET  /api/v1/speak         WebSocket, the seed protocol (daemons/gateway/websocket.py); GET /api/v1/voices

Every response_format streams as the talker's audio arrives (daemons/gateway/audio.py). Errors use
OpenAI's envelope {"error":{"message","type","param","code"}}. Status codes: 400 bad input, 401 bad key,
408 a request head not complete within 10 s or a body slower than hostile.body_deadline_s, 413 input
(or the JSON body: 12 bytes a character + 64 KiB) too long, 429 (+ Retry-After) talker busy, 503 talker not
answering / a daemon down / stopping,
504 no answer in time. An error after the first audio byte cannot change the status any more: a
chunked body is cut short (the client sees a truncated body), an SSE stream ends with an
{"type":"error","error":{...}} event. A client that disconnects cancels its request in the talker.
`instructions` is accepted and ignored: the Base model has no instruction control. With a random-weight
model every response carries `X-Qwen3-TTS-Random-Weights: true` (its audio is noise).
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import math
import signal
import time
from pathlib import Path

import zmq.asyncio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from daemons.config import Config
from daemons.engine.pcm import to_int16

from .audio import FORMATS, open_encoder
from .hostile import HeadTimeoutH11, body_deadline_s, loads_strict
from .talker_link import CONNECT_TIMEOUT_S, TalkerError, TalkerLink, TalkerRequest, voice_names
from . import web, websocket

log = logging.getLogger("qwen3_tts.gateway")
MODEL_IDS = ("qwen3-tts", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")
SAMPLING = {"temperature", "top_k", "top_p", "repetition_penalty", "do_sample", "sub_do_sample", "sub_temperature",
            "sub_top_k", "sub_top_p", "seed"}  # the talker's CLIENT_PARAMS
STATUS = {"busy": 429, "invalid_text": 400, "unknown_language": 400, "unknown_voice": 400, "invalid_request": 400,
          "bad_request": 400, "invalid_voice": 400, "timeout": 504, "not_running": 503, "shutting_down": 503,
          "predictor_unavailable": 503, "vocoder_unavailable": 503, "protocol": 502}


WS_PING_S = 10.0


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status == 429 else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def talker_error(code: str, message: str) -> ApiError:
    status = STATUS.get(code, 500 if code != "unknown_voice" else 400)
    if code.startswith("unknown_") or code.startswith("invalid_"):
        status = 400
    return ApiError(status, message, code, type_="invalid_request_error" if status < 500 else "server_error")


class _Gone(Exception):
    """The HTTP client disconnected before the response started."""


class _QuietCut(logging.Filter):
    """uvicorn logs an exception that ends a response with its traceback. An ApiError raised by `stream`
    after the first byte is the intended way to cut a chunked body short (the client must see an
    incomplete body), already logged there as one line: drop uvicorn's traceback of it."""

    def filter(self, record: logging.LogRecord) -> bool:
        e = record.exc_info[1] if record.exc_info else None
        while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
            e = e.exceptions[0]
        return not isinstance(e, ApiError)


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("qwen3_tts_gateway_requests", "HTTP speech requests by status code", ["code"],
                                registry=self.registry)
        self.errors = Counter("qwen3_tts_gateway_errors", "errors by code", ["code"], registry=self.registry)
        self.ttfa = Histogram("qwen3_tts_gateway_time_to_first_audio_seconds", "request -> first audio byte",
                              buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10), registry=self.registry)
        self.rtf = Histogram("qwen3_tts_gateway_rtf", "wall time / audio duration",
                             buckets=(0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 4), registry=self.registry)
        self.active = Gauge("qwen3_tts_gateway_active_streams", "responses being streamed", registry=self.registry)
        self.queue = Gauge("qwen3_tts_gateway_talker_queue", "talker queue at the last ping", registry=self.registry)


def _param(body: dict, key: str, kind, lo=None, hi=None, default=None):
    v = body.get(key, default)
    if v is None:
        return default
    ok = (isinstance(v, bool) if kind is bool else
          isinstance(v, (int, float)) and not isinstance(v, bool) and (kind is float or float(v).is_integer()))
    if not ok or (kind is float and not math.isfinite(v)):
        raise ApiError(400, f"{key} must be a {'boolean' if kind is bool else kind.__name__}", "invalid_value", key)
    if kind is int:
        v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ApiError(400, f"{key} must be in [{lo}, {hi}], got {v}", "invalid_value", key)
    return v


class Gateway:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.g = cfg.gateway
        self.endpoint = cfg.endpoints["talker"]
        self.ctx = zmq.asyncio.Context()
        self.link = TalkerLink(self.ctx, self.endpoint, cfg.limits.request_timeout_s, cfg.security)
        self.metrics = Metrics()
        # the model's manifest when it is on this machine; else (and anyway) learnt from the talker's `done`
        self.random_weights: bool | None = None
        try:
            man = json.loads((Path(cfg.model_dir) / "manifest.json").read_text())
            self.random_weights = bool(man.get("source", {}).get("random_weights"))
        except (OSError, ValueError, AttributeError):
            pass
        if self.random_weights:
            log.warning("the model has random weights: the gateway serves noise, not speech")
        from .voices import VoiceUploads  # (imports ApiError from this module)

        self.uploads = VoiceUploads(self)
        self.app = Starlette(routes=[
            Route("/v1/audio/speech", self.speech, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/audio/models", self.audio_models, methods=["GET"]),
            Route("/v1/audio/voices", self.voices, methods=["GET"]),
            Route("/v1/audio/voices", self.uploads.upload, methods=["POST"]),
            Route("/v1/audio/voices/{voice_id}", self.uploads.delete, methods=["DELETE"]),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.metrics_text, methods=["GET"]),
            *web.routes(self),  # GET / (the web page), /static/*, /v1/info
            *websocket.routes(self),  # GET /api/v1/speak (WebSocket, the seed protocol), /api/v1/voices
        ])

    # --- helpers
    def check_key(self, request: Request) -> None:
        keys = self.g.api_keys
        if not keys:
            return
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        ok = False
        for k in keys:  # compare with every key, constant time each
            ok |= hmac.compare_digest(token.encode(), k.encode())
        if not ok:
            raise ApiError(401, "invalid or missing API key (Authorization: Bearer ...)", "invalid_api_key",
                           type_="authentication_error")

    def voice_names(self) -> list[str]:
        return voice_names(self.cfg)

    def extra_headers(self) -> dict:
        return {"X-Qwen3-TTS-Random-Weights": "true"} if self.random_weights else {}

    async def ping(self) -> dict:
        return await self.link.ping(CONNECT_TIMEOUT_S)  # raises TalkerError

    # --- routes
    async def models(self, request: Request):
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model", "created": 0,
                                                         "owned_by": "qwen3-tts"} for m in MODEL_IDS]})

    async def audio_models(self, request: Request):
        return JSONResponse({"models": [{"id": m} for m in MODEL_IDS]})

    async def voices(self, request: Request):
        names = self.voice_names() + [a for a in self.g.voice_aliases if a not in self.voice_names()]
        return JSONResponse({"voices": [{"id": n, "name": n} for n in names]})

    async def health(self, request: Request):
        try:
            pong = await self.ping()
        except TalkerError as e:
            return JSONResponse({"status": "unavailable", "talker": None, "error": e.message}, status_code=503)
        self.metrics.queue.set(pong.get("queue", 0))
        return JSONResponse({"status": "ok", "talker": {k: v for k, v in pong.items() if k not in ("v", "type")}})

    async def metrics_text(self, request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def parse(self, body) -> tuple[dict, str, str, float]:
        if not isinstance(body, dict):
            raise ApiError(400, "the request body must be a JSON object", "invalid_request")
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "input must be a non-empty string", "invalid_value", "input")
        if len(text) > self.g.max_input_chars:
            raise ApiError(413, f"input has {len(text)} characters, more than {self.g.max_input_chars}",
                           "input_too_long", "input")
        if not isinstance(body.get("model", ""), str):
            raise ApiError(400, "model must be a string", "invalid_value", "model")
        fmt = body.get("response_format") or "mp3"
        if fmt not in FORMATS:
            raise ApiError(400, f"unknown response_format {fmt!r}; one of {', '.join(FORMATS)}", "invalid_value",
                           "response_format")
        sf = body.get("stream_format") or "audio"
        if sf not in ("audio", "sse"):
            raise ApiError(400, f"unknown stream_format {sf!r}; audio or sse", "invalid_value", "stream_format")
        speed = _param(body, "speed", float, 0.25, 4.0, 1.0)
        if not isinstance(body.get("instructions", ""), (str, type(None))):
            raise ApiError(400, "instructions must be a string", "invalid_value", "instructions")
        voice = body.get("voice")
        if isinstance(voice, dict):
            voice = voice.get("id")
        if voice is not None and (not isinstance(voice, str) or not voice):
            raise ApiError(400, "voice must be a name or {\"id\": name}", "invalid_value", "voice")
        header = {"text": text, "language": "auto", "non_streaming": False, "return_codes": False}
        lang = body.get("language", "auto")
        if not isinstance(lang, str) or not lang:
            raise ApiError(400, "language must be a string", "invalid_value", "language")
        header["language"] = lang
        params = {}
        for k in SAMPLING:
            if k in body:
                kind = bool if k in ("do_sample", "sub_do_sample") else int if k in ("top_k", "sub_top_k",
                                                                                     "seed") else float
                params[k] = _param(body, k, kind)
        header["params"] = params
        if "max_frames" in body:
            header["max_frames"] = _param(body, "max_frames", int, 1, None)
        if voice is not None:
            if voice in self.g.voice_aliases:
                voice = self.g.voice_aliases[voice] or None
            elif voice not in self.voice_names():
                raise ApiError(400, f"unknown voice {voice!r}; voices: "
                                    f"{', '.join(self.voice_names() + list(self.g.voice_aliases))}",
                               "unknown_voice", "voice")
            if voice is not None:
                header["voice"] = voice
        return header, fmt, sf, speed

    async def speech(self, request: Request):
        t0 = time.monotonic()
        m = self.metrics
        try:
            self.check_key(request)
            try:
                body = loads_strict(await self.read_body(request))
            except ValueError as e:  # (UnicodeDecodeError included)
                raise ApiError(400, f"the request body is not valid JSON: {e}", "invalid_json") from None
            header, fmt, sf, speed = self.parse(body)
            enc = open_encoder(fmt, speed)
            talk = self.link.request()
            rid = talk.id
            try:
                try:
                    await talk.synthesize(header)
                except TalkerError as e:
                    raise talker_error(e.code, e.message) from None
                first = await self.next_message(talk, CONNECT_TIMEOUT_S)
                deadline = time.monotonic() + self.cfg.limits.request_timeout_s
                while first.type not in ("audio", "done"):  # accepted, progress: wait for audio before headers
                    if not await talk.poll(500):
                        if await request.is_disconnected():  # gave up while queued: free its place at once
                            raise _Gone()
                        if time.monotonic() > deadline:
                            raise ApiError(504, "no audio from the talker in time", "timeout", type_="server_error")
                        continue
                    first = await self.next_message(talk, CONNECT_TIMEOUT_S)
            except BaseException:
                await talk.cancel()  # (only a request the talker has and has not finished)
                talk.close()
                raise
        except _Gone:
            log.info("speech request %s: client disconnected before its first audio, cancelled", rid)
            m.requests.labels("499").inc()
            return Response(status_code=499)
        except ApiError as e:
            m.requests.labels(str(e.status)).inc()
            m.errors.labels(e.code).inc()
            if e.status >= 500:
                log.warning("speech request failed: %s %s", e.code, e.message)
            return e.response()
        m.requests.labels("200").inc()
        m.ttfa.observe(time.monotonic() - t0)
        headers = self.extra_headers()
        media = "text/event-stream" if sf == "sse" else enc.content_type
        if sf == "sse":
            headers["Cache-Control"] = "no-cache"
        return StreamingResponse(self.stream(talk, enc, first, sf, t0, len(header["text"])),
                                 media_type=media, headers=headers)

    async def read_body(self, request: Request) -> bytes:
        """The JSON body, at most max_bytes (413 beyond, before reading it when Content-Length says so),
        arriving within hostile.body_deadline_s (408: a client sending a byte a second holds nothing long)."""
        cap = 12 * self.g.max_input_chars + 64 * 1024  # every character JSON-escaped (a pair of \uXXXX) + the rest
        too_big = ApiError(413, f"the request body is larger than {cap} bytes", "body_too_large")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise too_big
        buf = bytearray()
        try:
            async with asyncio.timeout(body_deadline_s(int(declared) if declared.isdigit() else cap)):
                async for chunk in request.stream():
                    buf += chunk
                    if len(buf) > cap:
                        raise too_big
        except TimeoutError:
            raise ApiError(408, "the request body did not arrive in time", "timeout") from None
        return bytes(buf)

    async def next_message(self, talk: TalkerRequest, timeout_s: float):
        """The request's next message (accepted, progress, audio, done); a failure as an ApiError."""
        try:
            return await talk.next(timeout_s)
        except TalkerError as e:
            raise talker_error(e.code, e.message) from None

    async def stream(self, talk: TalkerRequest, enc, msg, sf: str, t0: float, chars: int):
        rid = talk.id
        m = self.metrics
        m.active.inc()
        finished = False
        samples = 0

        def out(b: bytes):
            if sf == "sse":
                return b"data: " + json.dumps({"type": "speech.audio.delta",
                                               "audio": base64.b64encode(b).decode()}).encode() + b"\n\n"
            return b
        try:
            while True:
                if msg.type == "audio":
                    pcm = to_int16(msg.arrays["pcm"])
                    samples += len(pcm)
                    b = enc.feed(pcm)
                    if b:
                        yield out(b)
                elif msg.type == "done":
                    finished = True
                    rw = bool(msg.header.get("random_weights"))
                    if rw and not self.random_weights:
                        log.warning("the talker serves a random-weight model: its audio is noise, not speech")
                    self.random_weights = rw
                    b = enc.finish()
                    if b:
                        yield out(b)
                    if samples:
                        m.rtf.observe((time.monotonic() - t0) / (samples / 24000))
                    if sf == "sse":
                        frames = int(msg.header.get("frames", 0))
                        usage = {"input_tokens": chars, "output_tokens": frames, "total_tokens": chars + frames}
                        yield b"data: " + json.dumps({"type": "speech.audio.done", "usage": usage}).encode() + b"\n\n"
                    return
                try:
                    msg = await self.next_message(talk, self.cfg.limits.request_timeout_s)
                except ApiError as e:
                    finished = True  # the talker ended it (or stopped answering)
                    m.errors.labels(e.code).inc()
                    log.warning("speech stream %s ended early: %s %s", rid, e.code, e.message)
                    if sf == "sse":
                        yield b"data: " + json.dumps({"type": "error", **e.body()}).encode() + b"\n\n"
                        return
                    raise  # a chunked body cut short: the client sees an incomplete response
        except BaseException as e:
            if not finished:
                log.debug("speech stream %s interrupted: %r", rid, e)
            raise
        finally:
            m.active.dec()
            if not finished:  # the client went away (cancelled task / closed generator)
                log.info("speech stream %s: client disconnected, cancelling", rid)
                await talk.cancel()
            talk.close()


async def serve(cfg: Config) -> int:
    import uvicorn

    from daemons.notify import Notifier

    gw = Gateway(cfg)
    n = Notifier()
    logging.getLogger("uvicorn.error").addFilter(_QuietCut())
    for fmt in ("mp3", "opus"):  # PyAV's first encoder in a process costs ~0.1 s (codec libraries): not the first client's
        open_encoder(fmt).finish()
    from .wyoming import start_wyoming  # the Wyoming front in this event loop ([gateway] wyoming_uri)
    try:
        wy = await start_wyoming(cfg, gw.ctx)
    except OSError as e:  # e.g. the port is taken: HTTP is served all the same
        log.error("cannot serve Wyoming at %s (%s): the gateway runs without it", cfg.gateway.wyoming_uri, e)
        wy = None
    server = uvicorn.Server(uvicorn.Config(gw.app, host=cfg.gateway.host, port=cfg.gateway.port, log_level="warning",
                                           access_log=False, lifespan="off",
                                           # PCM barely compresses; deflating every WebSocket frame only costs CPU
                                           ws_per_message_deflate=False,
                                           http=HeadTimeoutH11,  # a deadline for request heads (hostile.py)
                                           # a peer that stops answering pings (or a frame that never ends) is
                                           # dropped within 20 s, not uvicorn's default 40 s
                                           ws_ping_interval=WS_PING_S, ws_ping_timeout=WS_PING_S))
    # uvicorn restores the handlers it found and re-raises the SIGTERM/SIGINT it shut down on: with the default
    # ones the process died right there (-15, or a KeyboardInterrupt traceback) before Wyoming and the ZeroMQ
    # context were closed. Handlers that do nothing let that re-raise return, and the shutdown below finish.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            return 1  # could not bind (uvicorn logged why)
        await asyncio.sleep(0.05)
    log.info("gateway listening on http://%s:%d/v1 (talker %s)", cfg.gateway.host, cfg.gateway.port, gw.endpoint)
    n.status(f"role=gateway listen={cfg.gateway.host}:{cfg.gateway.port} talker={gw.endpoint}")
    n.ready()
    while not task.done():
        n.watchdog()  # from the event loop itself: a blocked loop misses it
        await asyncio.wait([task], timeout=1.0)
        if server.should_exit:
            n.stopping()
    if wy is not None:
        await wy.stop()
    gw.ctx.destroy(0)
    return 0 if not task.exception() else 1


def run_gateway(cfg: Config) -> int:
    return asyncio.run(serve(cfg))
