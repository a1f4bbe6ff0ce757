"""Voice cloning over HTTP: `POST /v1/audio/voices` and `DELETE /v1/audio/voices/{id}` of the gateway.

    POST   /v1/audio/voices        multipart: name, audio_sample (<= 10 MiB, any format soundfile reads),
                                   optional transcript (in-context voice; without it x-vector only),
                                   language (the voice's default for requests that say auto); OpenAI's
                                   consent / type=audio_sample are accepted and ignored
                                   -> {"object":"audio.voice","id","name","created_at","type":"audio_sample",
                                       "mode","language","reference_frames"}
    DELETE /v1/audio/voices/{id}   -> {"id","object":"audio.voice.deleted","deleted":true}

The gateway loads no model: the two voice encoders (speech tokenizer + speaker encoder, ONNX, the same
`daemons.engine.voice.encode_voice` that `tts-client encode-voice` runs) live in a child process
(daemons/gateway/encoder_child.py, EncoderProcess below), started on the first upload, which loads them,
encodes the uploads one at a time and exits after `[gateway] encoder_idle_s` without one, so the gateway
itself stays at its idle RSS (the encoders are hundreds of MB at full size). The event loop keeps serving
speech meanwhile; at most MAX_WAITING more uploads wait for their turn, further ones get 429. A child that
dies mid-upload (killed, OOM) fails that upload with 503 voice_encoder_crashed; the next upload starts a
new child. The voice is written atomically, by the gateway (Voice.save to a hidden name that does not end in
.json, then a hard link to `<voices_dir>/<name>.json`, which fails instead of overwriting): an existing
voice is never replaced (409; DELETE it first), and a failed upload writes nothing. The talker reads
`<voices_dir>/<name>.json` on every request, so a new voice works at once and a deleted one is unknown at
once, without a restart.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import pickle
import re
import sys
import time
from pathlib import Path

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from .encoder_child import HEADER, MAX_FRAME
from .hostile import body_deadline_s
from .http import ApiError

log = logging.getLogger("qwen3_tts.gateway")

MAX_AUDIO_BYTES = 10 * 1024 * 1024     # OpenAI's limit for audio_sample
FORM_SLACK = 256 * 1024                # the other fields and the multipart framing
MAX_FIELD_BYTES = 64 * 1024            # name, transcript, language, consent, type
DRAIN_MAX = 64 * 1024 * 1024           # an oversized body is read (and dropped) up to this, so the client sees
                                       # the 413 instead of a reset while it is still sending
MAX_WAITING = 4                        # uploads waiting for the encoder besides the one running
ENCODER_THREADS = 2                    # onnxruntime (and OpenMP/BLAS) threads of the encoder child, at most one
                                       # per CPU of the gateway's affinity, which the child inherits
STOP_TIMEOUT_S = 5.0                   # an idle child asked to exit (stdin closed) is killed after this
# A voice name: what daemons.engine.voice.NAME_RE allows (letters, digits, '.', '_', '-'; 1-64, first
# letter or digit), matched as a whole string (no trailing newline).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_HELP = "1-64 letters, digits, '.', '_' or '-', starting with a letter or a digit"


def _bad(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code, param)


class EncoderCrashed(Exception):
    def __init__(self, how: str):
        super().__init__(how)
        self.how = how


class EncoderHung(EncoderCrashed):
    """No reply within the request timeout (e.g. a SIGSTOPped child): the child was killed."""


def _exit_status(rc: int | None) -> str:
    if rc is None:
        return "did not exit"
    if rc < 0:
        try:
            import signal
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


class EncoderProcess:
    """The voice-encoder child (daemons/gateway/encoder_child.py): started on demand, one request at a time
    over its stdin/stdout, asked to exit (stdin closed) after `idle_s` without a request; a new one is started
    by the next request after it exited or crashed. `encode()` returns the child's reply tuple or raises
    EncoderCrashed; a cancelled `encode()` kills the child (its reply would belong to nobody)."""

    def __init__(self, model_dir, idle_s: float, threads: int, reply_timeout_s: float = 600.0):
        self.model_dir = str(model_dir)
        self.idle_s = float(idle_s)
        self.reply_timeout_s = float(reply_timeout_s)  # a hung child must not hold uploads forever
        self.threads = max(1, min(threads, len(os.sched_getaffinity(0))))
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()
        self.pending = 0                    # encode() calls waiting for the lock
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_task: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        p = self.proc
        return p.pid if p is not None and p.returncode is None else None

    async def _start(self) -> asyncio.subprocess.Process:
        env = dict(os.environ)
        # the child imports the same daemons package as this process, wherever it came from
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "daemons.gateway.encoder_child", "--model-dir", self.model_dir,
                "--threads", str(self.threads), "--parent", str(os.getpid()),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env)
        except OSError as e:
            raise ApiError(503, f"voice cloning is not available on this server: cannot start the voice encoder "
                                f"process ({e.strerror or e})", "voice_encoder_unavailable",
                           type_="server_error") from None
        log.info("voice encoder process %d started (%d threads, exits after %g s without an upload)", proc.pid,
                 self.threads, self.idle_s)
        return proc

    async def _reap(self, proc, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        try:
            return await asyncio.wait_for(proc.wait(), timeout_s)
        except asyncio.TimeoutError:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            try:
                return await asyncio.wait_for(proc.wait(), timeout_s)
            except asyncio.TimeoutError:
                return None

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            try:
                proc.kill()                 # asyncio's child watcher reaps it
            except ProcessLookupError:
                pass

    async def encode(self, request: dict):
        self.pending += 1
        try:
            await self.lock.acquire()
        finally:
            self.pending -= 1
        try:
            self._disarm()
            if self.proc is None or self.proc.returncode is not None:
                self.proc = await self._start()
            proc = self.proc
            body = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
            try:
                async with asyncio.timeout(self.reply_timeout_s):
                    proc.stdin.write(HEADER.pack(len(body)) + body)
                    await proc.stdin.drain()
                    (n,) = HEADER.unpack(await proc.stdout.readexactly(HEADER.size))
                    if n > MAX_FRAME:
                        raise ValueError(f"reply frame of {n} bytes")
                    reply = pickle.loads(await proc.stdout.readexactly(n))
            except TimeoutError:
                log.error("voice encoder process %d: no reply within %g s; killed", proc.pid, self.reply_timeout_s)
                self._kill()
                raise EncoderHung(f"no reply within {self.reply_timeout_s:g} s") from None
            except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError):
                self.proc = None
                how = _exit_status(await self._reap(proc))
                log.error("voice encoder process %d died during an upload (%s)", proc.pid, how)
                raise EncoderCrashed(how) from None
            except asyncio.CancelledError:
                log.warning("upload cancelled while encoding: voice encoder process %d killed", proc.pid)
                self._kill()
                raise
            except Exception as e:  # noqa: BLE001 - a garbled reply: this child is not to be trusted again
                log.error("voice encoder process %d: bad reply (%s); killed", proc.pid, e)
                self._kill()
                raise EncoderCrashed(f"bad reply: {e}") from None
            return reply
        finally:
            self._arm()
            self.lock.release()

    # --- idle exit
    def _disarm(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    def _arm(self) -> None:
        self._disarm()
        if self.proc is not None:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(self.idle_s, self._idle_fired)

    def _idle_fired(self) -> None:
        self._idle_timer = None
        self._idle_task = asyncio.ensure_future(self.stop_if_idle())

    async def stop_if_idle(self) -> None:
        if self.pending or self.lock.locked():
            return                          # an upload is coming: it re-arms the timer when done
        async with self.lock:
            proc, self.proc = self.proc, None
            if proc is None or proc.returncode is not None:
                return
            try:
                proc.stdin.close()          # EOF: the child exits between requests
            except OSError:
                pass
            rc = await self._reap(proc)
            log.info("voice encoder process %d stopped after %g s idle (%s)", proc.pid, self.idle_s,
                     _exit_status(rc))


class VoiceUploads:
    def __init__(self, gw):
        self.gw = gw
        self.cfg = gw.cfg
        self.encoder = EncoderProcess(self.cfg.model_dir, self.cfg.gateway.encoder_idle_s, ENCODER_THREADS,
                                      self.cfg.limits.request_timeout_s)
        self.lock = asyncio.Lock()          # one upload (encoding + saving) at a time
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
        """The whole body, at most MAX_AUDIO_BYTES + FORM_SLACK (else 413 once it has been drained), within
        hostile.body_deadline_s of its size (408: a client sending a byte a second holds nothing long)."""
        declared = request.headers.get("content-length", "")
        n = int(declared) if declared.isdigit() else MAX_AUDIO_BYTES + FORM_SLACK
        try:
            async with asyncio.timeout(body_deadline_s(min(n, DRAIN_MAX))):
                return await self._read_body(request)
        except TimeoutError:
            raise ApiError(408, "the upload did not arrive in time", "timeout") from None

    async def _read_body(self, request: Request) -> bytes:
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

    # --- encoding in the child process; saving in a worker thread
    async def _encode(self, data: bytes, transcript: str | None, language: str):
        try:
            reply = await self.encoder.encode({"audio": data, "transcript": transcript, "language": language})
        except EncoderHung as e:
            raise ApiError(504, f"the voice encoder process gave no answer in time ({e.how}, request_timeout_s); "
                                "it was stopped, nothing was saved, try again", "timeout",
                           type_="server_error") from None
        except EncoderCrashed as e:
            raise ApiError(503, f"the voice encoder process failed while encoding this upload ({e.how}); "
                                "nothing was saved, try again", "voice_encoder_crashed",
                           type_="server_error") from None
        kind = reply[0]
        if kind == "ok":
            return reply[1]
        if kind == "model_error":
            raise ApiError(503, f"voice cloning is not available on this server: {reply[1]}",
                           "voice_encoder_unavailable", type_="server_error")
        if kind == "tts_error":
            msg, code = reply[1], reply[2]
            if msg.startswith("cannot read reference audio"):  # soundfile names its BytesIO: say what it was
                msg = ("audio_sample is not a recording this server can read (wav, flac, ogg/opus, mp3, ...): "
                       + msg.rsplit(": ", 1)[-1])
            param = ("transcript" if msg.startswith("reference text") else
                     "language" if msg.startswith("unknown language") else "audio_sample")
            raise _bad(msg, param, code)
        raise ApiError(500, f"voice encoding failed: {reply[1] if len(reply) > 1 else reply}",
                       "voice_encoder_error", type_="server_error")

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
                    voice = await self._encode(data, transcript, language)
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
