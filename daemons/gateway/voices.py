"""Voice cloning over HTTP: `POST /v1/audio/voices` and `DELETE /v1/audio/voices/{id}` of the gateway.

    POST   /v1/audio/voices        multipart: name, audio_sample (<= 10 MiB, any format soundfile reads),
                                   optional transcript (in-context voice; without it x-vector only),
                                   language (the voice's default for requests that say auto); OpenAI's
                                   consent / type=audio_sample are accepted and ignored
                                   -> {"object":"audio.voice","id","name","created_at","type":"audio_sample",
                                       "mode","language","reference_frames"}
    DELETE /v1/audio/voices/{id}   -> {"id","object":"audio.voice.deleted","deleted":true}

The gateway loads no model at start: the two voice encoders (speech tokenizer + speaker encoder, ONNX, the
same `daemons.engine.voice.encode_voice` that `tts-client encode-voice` runs) are loaded on the first
upload. Encoding runs in a worker thread (the event loop keeps serving speech), one upload at a time;
at most MAX_WAITING more wait for their turn, further ones get 429. The voice is written atomically
(Voice.save to a hidden name that does not end in .json, then a hard link to `<voices_dir>/<name>.json`,
which fails instead of overwriting): an existing voice is never replaced (409; DELETE it first), and a
failed upload writes nothing. The talker reads `<voices_dir>/<name>.json` on every request, so a new voice
works at once and a deleted one is unknown at once, without a restart.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import time
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from .http import ApiError

log = logging.getLogger("qwen3_tts.gateway")

MAX_AUDIO_BYTES = 10 * 1024 * 1024     # OpenAI's limit for audio_sample
FORM_SLACK = 256 * 1024                # the other fields and the multipart framing
MAX_FIELD_BYTES = 64 * 1024            # name, transcript, language, consent, type
DRAIN_MAX = 64 * 1024 * 1024           # an oversized body is read (and dropped) up to this, so the client sees
                                       # the 413 instead of a reset while it is still sending
MAX_WAITING = 4                        # uploads waiting for the encoder besides the one running
ENCODER_THREADS = 2                    # onnxruntime threads of the voice encoders (the gateway is not pinned)
# A voice name: what daemons.engine.voice.NAME_RE allows (letters, digits, '.', '_', '-'; 1-64, first
# letter or digit), matched as a whole string (no trailing newline).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_HELP = "1-64 letters, digits, '.', '_' or '-', starting with a letter or a digit"


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code, param)


class VoiceUploads:
    def __init__(self, gw):
        self.gw = gw
        self.cfg = gw.cfg
        self.encoder = None                 # daemons.engine.voice_encoder.VoiceEncoder, on the first upload
        self.lock = asyncio.Lock()          # one encoding at a time
        self.waiting = 0

    # --- helpers
    def voices_dir(self) -> Path:
        d = self.cfg.voices_dir
        if d is None:
            raise ApiError(400, "this server has no voices directory (set voices_dir in the configuration), so "
                                "voices cannot be uploaded or deleted", "no_voices_dir")
        return Path(d)

    def check_name(self, name, param: str = "name") -> str:
        if isinstance(name, UploadFile):
            raise _bad(f"{param} must be a text field, not a file", param)
        if not isinstance(name, str) or not name:
            raise _bad(f"{param} is required", param, "missing_field")
        if not NAME.fullmatch(name):
            raise _bad(f"bad voice name {name[:80]!r}: {NAME_HELP}", param)
        if name in self.cfg.gateway.voice_aliases:
            raise _bad(f"voice name {name!r} is reserved: it is an alias in [gateway] voice_aliases", param,
                       "reserved_name")
        return name

    @staticmethod
    def text_field(form, key: str) -> str | None:
        v = form.get(key)
        if v is None:
            return None
        if not isinstance(v, str):
            raise _bad(f"{key} must be a text field, not a file", key)
        return v.strip() or None

    async def read_body(self, request: Request) -> bytes:
        """The whole body, at most MAX_AUDIO_BYTES + FORM_SLACK (else 413 once it has been drained)."""
        cap = MAX_AUDIO_BYTES + FORM_SLACK
        too_big = ApiError(413, f"the upload is larger than {MAX_AUDIO_BYTES // (1024 * 1024)} MiB "
                                "(audio_sample is at most 10 MiB)", "file_too_large", "audio_sample")
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise _bad("bad Content-Length header", None, "invalid_request") from None
            if n > cap:
                if n <= DRAIN_MAX:
                    async for _ in request.stream():
                        pass
                raise too_big
        buf = bytearray()
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > cap:
                buf = bytearray()
                if seen > DRAIN_MAX:
                    raise too_big
                continue
            buf += chunk
        if seen > cap:
            raise too_big
        return bytes(buf)

    async def parse_form(self, request: Request, body: bytes):
        ctype = request.headers.get("content-type", "")
        if not ctype.lower().startswith("multipart/form-data"):
            raise _bad("send multipart/form-data with the fields name and audio_sample (a file)", None,
                       "invalid_request")
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            return await Request(request.scope, replay).form(max_files=1, max_fields=16,
                                                             max_part_size=MAX_FIELD_BYTES)
        except HTTPException as e:   # starlette's MultiPartException, turned into a 400 by Request.form
            raise _bad(f"malformed multipart body: {e.detail}", None, "invalid_request") from None
        except Exception as e:  # noqa: BLE001 - any parser failure is the client's malformed body
            raise _bad(f"malformed multipart body: {e}", None, "invalid_request") from None

    # --- work in the worker thread
    def _encode(self, data: bytes, transcript: str | None, language: str):
        from daemons.engine.errors import ModelError, TTSError
        from daemons.engine.voice import encode_voice
        from daemons.engine.voice_encoder import VoiceEncoder

        try:
            if self.encoder is None:
                self.encoder = VoiceEncoder(self.cfg.model_dir, threads=ENCODER_THREADS).load()
            return encode_voice(self.encoder.model, data, transcript, language, encoder=self.encoder)
        except ModelError as e:
            raise ApiError(503, f"voice cloning is not available on this server: {e.message}",
                           "voice_encoder_unavailable", type_="server_error") from None
        except TTSError as e:
            msg = e.message
            if msg.startswith("cannot read reference audio"):  # soundfile names its BytesIO: say what it was
                msg = ("audio_sample is not a recording this server can read (wav, flac, ogg/opus, mp3, ...): "
                       + msg.rsplit(": ", 1)[-1])
            param = ("transcript" if msg.startswith("reference text") else
                     "language" if msg.startswith("unknown language") else "audio_sample")
            raise _bad(msg, param, e.code) from None

    def _save(self, voice, d: Path, name: str) -> float:
        final = d / f"{name}.json"
        hidden = d / f".{name}.upload"       # not *.json: no scan of voices_dir ever sees it
        try:
            d.mkdir(parents=True, exist_ok=True)
            voice.save(hidden)
            try:
                os.link(hidden, final)          # atomic, and never replaces an existing voice
            except FileExistsError:
                raise ApiError(409, f"voice {name!r} already exists; delete it first "
                                    f"(DELETE /v1/audio/voices/{name})", "voice_exists", "name") from None
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if final.exists():               # a file system without hard links: check, then rename
                    raise ApiError(409, f"voice {name!r} already exists; delete it first", "voice_exists",
                                   "name") from None
                os.replace(hidden, final)
            return final.stat().st_mtime
        except OSError as e:
            raise ApiError(500, f"cannot write the voice to {d}: {e.strerror or e}", "voices_dir_not_writable",
                           type_="server_error") from None
        finally:
            try:
                os.unlink(hidden)
            except OSError:
                pass

    # --- routes
    async def upload(self, request: Request):
        try:
            self.gw.check_key(request)
            d = self.voices_dir()
            form = await self.parse_form(request, await self.read_body(request))
            try:
                name = self.check_name(form.get("name"))
                kind = self.text_field(form, "type")
                if kind not in (None, "audio_sample"):
                    raise _bad(f"type {kind!r} is not supported: only audio_sample (a recording)", "type")
                transcript = self.text_field(form, "transcript")
                language = self.text_field(form, "language") or "auto"
                f = form.get("audio_sample")
                if f is None:
                    raise _bad("audio_sample (a file: the reference recording, 1-30 s) is required",
                               "audio_sample", "missing_field")
                if not isinstance(f, UploadFile):
                    raise _bad("audio_sample must be a file (multipart file field)", "audio_sample")
                data = await f.read(MAX_AUDIO_BYTES + 1)
            finally:
                await form.close()
            if len(data) > MAX_AUDIO_BYTES:
                raise ApiError(413, "audio_sample is larger than 10 MiB", "file_too_large", "audio_sample")
            if not data:
                raise _bad("audio_sample is empty (0 bytes)", "audio_sample")
            if (d / f"{name}.json").exists():
                raise ApiError(409, f"voice {name!r} already exists; delete it first "
                                    f"(DELETE /v1/audio/voices/{name})", "voice_exists", "name")
            if self.waiting > MAX_WAITING:
                raise ApiError(429, "voice encoder busy: too many uploads waiting", "busy", type_="server_error")
            self.waiting += 1
            try:
                async with self.lock:
                    t0 = time.monotonic()
                    voice = await asyncio.to_thread(self._encode, data, transcript, language)
                    created = await asyncio.to_thread(self._save, voice, d, name)
            finally:
                self.waiting -= 1
        except ApiError as e:
            self.gw.metrics.errors.labels(e.code).inc()
            return e.response()
        frames = 0 if voice.ref_codes is None else len(voice.ref_codes)
        log.info("voice %r uploaded: %s, %d reference frames, language %s, encoded in %.2f s", name,
                         voice.mode, frames, voice.language, time.monotonic() - t0)
        return JSONResponse({"object": "audio.voice", "id": name, "name": name, "created_at": int(created),
                             "type": "audio_sample", "mode": voice.mode, "language": voice.language,
                             "reference_frames": frames})

    async def delete(self, request: Request):
        try:
            self.gw.check_key(request)
            d = self.voices_dir()
            name = self.check_name(request.path_params.get("voice_id"), "voice_id")
            try:
                os.unlink(d / f"{name}.json")
            except FileNotFoundError:
                raise ApiError(404, f"no voice {name!r} in the voices directory", "voice_not_found",
                               "voice_id") from None
            except OSError as e:
                raise ApiError(500, f"cannot delete the voice {name!r}: {e.strerror or e}",
                               "voices_dir_not_writable", type_="server_error") from None
        except ApiError as e:
            self.gw.metrics.errors.labels(e.code).inc()
            return e.response()
        log.info("voice %r deleted", name)
        return JSONResponse({"id": name, "object": "audio.voice.deleted", "deleted": True})
