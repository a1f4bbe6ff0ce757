"""The Wyoming front (Home Assistant's voice protocol, PyPI `wyoming`): runs in the gateway's event loop,
at [gateway] wyoming_uri (default tcp://127.0.0.1:10200; unix:///path; "" = off), a client of the talker
like the HTTP front (daemons/gateway/talker_link.py). It loads no model.

    describe                         -> info{tts: [one TtsProgram]}: voices = "default" + every voice of
                                        voices_dir (read again on every describe), each with the model's
                                        languages as codes (en, zh, de, ...); supports_synthesize_streaming
    synthesize{text, voice?}         -> audio-start{rate 24000, width 2, channels 1}, audio-chunk per talker
                                        audio message as it arrives (s16le), audio-stop
    synthesize-start{voice?}, synthesize-chunk{text} x N, synthesize-stop
                                     -> per finished sentence (daemons/engine/segment.py's rules, as the text
                                        comes in) audio-start / chunks / audio-stop, then synthesize-stopped;
                                        a `synthesize` inside a stream (sent for old servers) is ignored
    ping{text}                       -> pong{text}
    anything else                    -> ignored

`voice.name`: "default" (or none) is the model's default voice, else a voices_dir name or a [gateway]
voice_aliases key; `voice.language`: a code (en, en_US, en-GB, zh, ...) or a model language name, else
the voice's own language or auto. Wyoming has no seed or sampling fields: [sampling] in the configuration
applies ([sampling] seed makes the audio reproducible).

Errors are `error{text, code}` and the connection stays open: unknown_voice, invalid_text (empty),
text_too_long ([gateway] max_input_chars per synthesize, or text waiting in a stream), bad_request (a
chunk or stop outside a stream, a synthesize without text), and the talker's codes (busy,
unknown_language, predictor_unavailable, vocoder_unavailable, shutting_down, timeout, ...) or
not_running when the talker does not answer. An error after a block's audio-start is followed by that
block's audio-stop (its audio is cut short); in a stream, the first error drops the rest of its text and
the stream still ends with synthesize-stopped. An event that cannot be read (not a JSON object with a string
type, data_length/payload_length not an integer in 0..1 MiB, or not whole within 10 s of its first byte)
gets error{bad_request} and the connection closes. Requests of one connection run one after the other, in
order; a connection that closes cancels its request in the talker. No authentication: bind to
127.0.0.1 (the default) unless the network is trusted.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import re
from dataclasses import dataclass, field
from urllib.parse import urlparse

import zmq.asyncio
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler, AsyncServer
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from daemons.config import Config
from daemons.engine.pcm import SAMPLE_RATE, to_int16
from daemons.engine.segment import split_text

from .hostile import loads_strict
from .talker_link import TalkerError, TalkerLink, manifest, resolve_voice, voice_names

log = logging.getLogger("qwen3_tts.gateway.wyoming")

DEFAULT_VOICE = "default"
ATTRIBUTION = Attribution(name="Qwen (Alibaba Cloud)", url="https://github.com/QwenLM/Qwen3-TTS")
# the model's language names -> ISO 639-1 codes (what Home Assistant matches its pipeline language against)
LANGUAGE_CODES = {"chinese": "zh", "english": "en", "japanese": "ja", "korean": "ko", "german": "de",
                  "french": "fr", "russian": "ru", "portuguese": "pt", "spanish": "es", "italian": "it"}
DESCRIBE_PING_S = 0.5      # describe asks the talker for its languages, briefly (it answers at once)
MAX_EVENT_BYTES = 1 << 20  # data and payload of one client event (a synthesize is a few KB of text)
EVENT_TIMEOUT_S = 10.0     # the rest of an event once its first byte has come


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("qwen3-tts")
    except Exception:  # not installed as a distribution (a source checkout on PYTHONPATH)
        return "0.1.0"


def model_language(value) -> str:
    """A Wyoming language (en, en_US, en-GB, english, auto) -> the talker's language name (unknown ones pass
    through: the talker answers unknown_language with its list)."""
    if not isinstance(value, str) or value.strip().lower() in ("", "auto"):
        return "auto"
    v = value.strip().lower().replace("-", "_")
    if v in LANGUAGE_CODES:
        return v
    by_code = {c: n for n, c in LANGUAGE_CODES.items()}
    return by_code.get(v.split("_")[0], value.strip())


class _Refused(Exception):
    """A request this front refuses before it reaches the talker (code, text)."""

    def __init__(self, code: str, text: str):
        super().__init__(text)
        self.code, self.text = code, text


@dataclass
class _Stream:
    """One synthesize-start .. synthesize-stop: its request header, the text not yet a whole sentence,
    and whether it failed (its remaining text is dropped then)."""
    header: dict | None
    buffer: str = ""
    failed: bool = False
    pending_chars: int = 0       # text queued for synthesis and not yet started
    blocks: int = 0

    def sentences(self, final: bool, max_chars: int) -> list[str]:
        """Take the finished sentences out of the buffer (all of it when `final`)."""
        if not self.buffer.strip():
            if final:
                self.buffer = ""
            return []
        pieces = split_text(self.buffer, max_chars=max_chars)
        if final or re.search(r"\n\s*\n\s*$", self.buffer):  # the end, or a paragraph break: all finished
            self.buffer = ""
            return pieces
        if len(pieces) < 2:  # the last piece may still grow: it is kept until more text (or the stop) comes
            return []
        tail = pieces[-1]
        if self.buffer[-1:].isspace():
            tail += " "  # "word " + "next": the space the split dropped
        self.buffer = tail
        return pieces[:-1]


@dataclass
class _Job:
    kind: str                    # speak | error | stopped
    text: str = ""
    header: dict = field(default_factory=dict)
    stream: _Stream | None = None
    code: str = ""


class WyomingFront:
    def __init__(self, cfg: Config, ctx: zmq.asyncio.Context | None = None):
        self.cfg = cfg
        self.own_ctx = ctx is None
        self.ctx = ctx or zmq.asyncio.Context()
        self.link = TalkerLink(self.ctx, cfg.endpoints["talker"], cfg.limits.request_timeout_s, cfg.security)
        man = manifest(cfg)
        self.languages: list[str] = sorted(man.get("languages") or []) if isinstance(man.get("languages"),
                                                                                       dict) else []
        self.random_weights: bool = bool((man.get("source") or {}).get("random_weights")) \
            if isinstance(man.get("source"), dict) else False
        self.server: AsyncServer | None = None
        self.zeroconf = None
        self.handlers: set[WyomingHandler] = set()

    # --- life cycle
    async def start(self) -> None:
        uri = self.cfg.gateway.wyoming_uri
        self.server = AsyncServer.from_uri(uri)
        await self.server.start(self.handler)  # OSError when it cannot bind
        log.info("Wyoming server at %s (talker %s)", uri, self.link.endpoint)
        if self.cfg.gateway.wyoming_zeroconf:
            await self.start_zeroconf(uri)

    async def start_zeroconf(self, uri: str) -> None:
        u = urlparse(uri)
        if u.scheme != "tcp":
            log.warning("wyoming_zeroconf: only a tcp:// Wyoming server can be announced, not %s", uri)
            return
        if importlib.util.find_spec("zeroconf") is None:
            log.warning("wyoming_zeroconf: the zeroconf package is not installed (pip install zeroconf); "
                        "not announcing the Wyoming server")
            return
        from wyoming.zeroconf import HomeAssistantZeroconf

        host = None if u.hostname in ("0.0.0.0", "::") else u.hostname
        if host and host.startswith("127."):
            log.warning("wyoming_zeroconf: announcing %s, a loopback address other machines cannot reach "
                        "(wyoming_uri = \"tcp://0.0.0.0:%d\" serves the network)", host, u.port)
        try:
            self.zeroconf = HomeAssistantZeroconf(port=u.port, host=host)
            await self.zeroconf.register_server()
            log.info("Wyoming server announced over mDNS as %s._wyoming._tcp.local. (%s:%d)", self.zeroconf.name,
                     self.zeroconf.host, u.port)
        except Exception as e:  # no multicast route, no network: serve anyway
            log.warning("wyoming_zeroconf: could not announce the Wyoming server: %r", e)
            self.zeroconf = None

    async def stop(self) -> None:
        if self.zeroconf is not None:
            with contextlib.suppress(Exception):
                await self.zeroconf._aiozc.async_close()
        if self.server is not None:
            await self.server.stop()
        for h in list(self.handlers):
            await h.disconnect()
        if self.own_ctx:
            self.ctx.destroy(0)

    def handler(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> "WyomingHandler":
        return WyomingHandler(self, reader, writer)

    # --- describe
    async def info(self) -> Info:
        try:
            pong = await self.link.ping(DESCRIBE_PING_S)
            langs = pong.get("languages")
            if isinstance(langs, list) and all(isinstance(x, str) for x in langs):
                self.languages = sorted(langs)
        except TalkerError:
            pass  # the talker is away: the languages last known (or the local manifest's)
        # unknown yet (the talker away, the model on another machine): the released model's languages
        codes = list(dict.fromkeys(LANGUAGE_CODES.get(x, x) for x in self.languages)) or list(LANGUAGE_CODES.values())
        voices = [TtsVoice(name=DEFAULT_VOICE, languages=codes, attribution=ATTRIBUTION, installed=True,
                           description="the model's default voice", version=None)]
        for n in voice_names(self.cfg):
            if n != DEFAULT_VOICE:
                voices.append(TtsVoice(name=n, languages=codes, attribution=ATTRIBUTION, installed=True,
                                       description=f"voice {n} (voices_dir)", version=None))
            else:
                voices[0] = TtsVoice(name=n, languages=codes, attribution=ATTRIBUTION, installed=True,
                                     description=f"voice {n} (voices_dir)", version=None)
        desc = "Qwen3-TTS-12Hz-0.6B-Base (llama.cpp talker and code predictor, streaming ONNX vocoder)"
        if self.random_weights:
            desc += "; RANDOM WEIGHTS: its audio is noise, not speech"
        program = TtsProgram(name="qwen3-tts", attribution=ATTRIBUTION, installed=True, description=desc,
                             version=_version(), voices=voices, supports_synthesize_streaming=True)
        return Info(tts=[program])

    # --- requests
    def request_header(self, voice) -> dict:
        """A Wyoming `voice` object (or None) -> the talker request's header without the text; raises
        _Refused / TalkerError(unknown_voice)."""
        if voice is not None and not isinstance(voice, dict):
            raise _Refused("bad_request", "voice must be an object {name?, language?, speaker?}")
        voice = voice or {}
        name, lang = voice.get("name"), voice.get("language")
        if name is not None and not isinstance(name, str):
            raise _Refused("bad_request", "voice.name must be a string")
        if lang is not None and not isinstance(lang, str):
            raise _Refused("bad_request", "voice.language must be a string")
        header = {"language": model_language(lang), "non_streaming": False, "return_codes": False, "params": {}}
        if name == DEFAULT_VOICE and DEFAULT_VOICE not in voice_names(self.cfg):
            name = None
        resolved = resolve_voice(self.cfg, name)
        if resolved is not None:
            header["voice"] = resolved
        return header


class BadEvent(Exception):
    """A client event this front will not read (the message says why, in one line)."""


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """One event (None at the end of the stream), as wyoming.event.async_read_event reads it, but bounded:
    the header line is a JSON object with a string type and data_length/payload_length are integers in
    0..MAX_EVENT_BYTES, and once its first byte is here the whole event arrives within EVENT_TIMEOUT_S (a
    connection may idle between events as long as it likes). The header line is at most the reader's limit
    (asyncio's 64 KiB). Raises BadEvent."""
    first = await reader.read(1)
    if not first:
        return None
    try:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            line = first + (await reader.readline() if first != b"\n" else b"")
            header = loads_strict(line)
            if not isinstance(header, dict) or not isinstance(header.get("type"), str):
                raise BadEvent("an event header is a JSON object with a string \"type\"")
            sizes = [header.get(k) for k in ("data_length", "payload_length")]
            for k, n in zip(("data_length", "payload_length"), sizes):
                if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_EVENT_BYTES):
                    raise BadEvent(f"{k} must be an integer in 0..{MAX_EVENT_BYTES}")
            data = header.get("data") or {}
            if not isinstance(data, dict):
                raise BadEvent("an event's data is a JSON object")
            if sizes[0]:
                more = loads_strict(await reader.readexactly(sizes[0]))
                if not isinstance(more, dict):
                    raise BadEvent("an event's data is a JSON object")
                data.update(more)
            payload = await reader.readexactly(sizes[1]) if sizes[1] else None
    except TimeoutError:
        raise BadEvent(f"an event did not arrive whole within {EVENT_TIMEOUT_S:g} s") from None
    except asyncio.IncompleteReadError:
        return None
    except ValueError as e:  # not JSON, not UTF-8, or a header line over the reader's limit
        raise BadEvent(f"unreadable event: {e}") from None
    return Event(type=header["type"], data=data, payload=payload)


class WyomingHandler(AsyncEventHandler):
    """One client connection: events are read here; the synthesis runs in one worker task per connection,
    job after job, so a stream's text keeps coming in while its first sentences are spoken."""

    def __init__(self, front: WyomingFront, reader, writer):
        super().__init__(reader, writer)
        self.front, self.cfg = front, front.cfg
        self.jobs: asyncio.Queue[_Job] = asyncio.Queue()
        self.worker: asyncio.Task | None = None
        self.stream: _Stream | None = None
        front.handlers.add(self)

    # --- reading side
    async def run(self) -> None:
        """The package's loop, with read_event() instead of its reader (which waits forever for a lying
        data_length and buffers any payload_length): a bad event gets an error event and the connection closes."""
        self._is_running = True
        try:
            while self._is_running:
                try:
                    event = await read_event(self.reader)
                except BadEvent as e:
                    log.info("Wyoming connection closed: %s", e)
                    with contextlib.suppress(ConnectionError, OSError):
                        await self.write_event(Error(text=str(e), code="bad_request").event())
                    break
                if event is None or not await self.handle_event(event):
                    break
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            await self.disconnect()
            self.writer.close()

    async def handle_event(self, event: Event) -> bool:
        try:
            await self.dispatch(event)
        except (ConnectionError, OSError):
            return False
        except Exception as e:  # never a traceback to the client, never a dead connection
            log.exception("Wyoming event %r: internal error", event.type)
            await self.write_event(Error(text=f"internal error: {type(e).__name__}", code="internal").event())
        return True

    def enqueue(self, job: _Job) -> None:
        if job.stream is not None and job.kind == "speak":
            job.stream.pending_chars += len(job.text)
        self.jobs.put_nowait(job)
        if self.worker is None or self.worker.done():
            self.worker = asyncio.create_task(self.work(), name="wyoming synthesis")

    def refuse(self, code: str, text: str, stream: _Stream | None = None) -> None:
        """An error, in order with the audio before it."""
        if stream is not None:
            stream.failed = True
        self.enqueue(_Job("error", text=text, code=code))

    async def dispatch(self, event: Event) -> None:
        data = event.data if isinstance(event.data, dict) else {}
        if Describe.is_type(event.type):
            await self.write_event((await self.front.info()).event())
        elif Ping.is_type(event.type):
            await self.write_event(Pong(text=data.get("text")).event())
        elif SynthesizeStart.is_type(event.type):
            if self.stream is not None:
                self.refuse("bad_request", "synthesize-start inside a stream: send synthesize-stop first")
                return
            self.stream = _Stream(None)
            try:
                self.stream.header = self.front.request_header(data.get("voice"))
            except (TalkerError, _Refused) as e:
                self.refuse(e.code, getattr(e, "message", None) or getattr(e, "text", str(e)), self.stream)
        elif SynthesizeChunk.is_type(event.type):
            s = self.stream
            if s is None:
                self.refuse("bad_request", "synthesize-chunk outside a stream: send synthesize-start first")
                return
            text = data.get("text")
            if not isinstance(text, str):
                self.refuse("bad_request", "synthesize-chunk needs a text string", s)
                return
            if s.failed:
                return
            if s.pending_chars + len(s.buffer) + len(text) > self.cfg.gateway.max_input_chars:
                self.refuse("text_too_long", f"more than {self.cfg.gateway.max_input_chars} characters of this "
                                             "stream wait for synthesis; the rest of the stream is dropped", s)
                return
            s.buffer += text
            for sentence in s.sentences(False, self.cfg.limits.segment_max_chars):
                self.enqueue(_Job("speak", text=sentence, header=s.header, stream=s))
        elif SynthesizeStop.is_type(event.type):
            s = self.stream
            if s is None:
                self.refuse("bad_request", "synthesize-stop outside a stream: send synthesize-start first")
                return
            if not s.failed:
                for sentence in s.sentences(True, self.cfg.limits.segment_max_chars):
                    self.enqueue(_Job("speak", text=sentence, header=s.header, stream=s))
            self.stream = None
            self.enqueue(_Job("stopped", stream=s))
        elif Synthesize.is_type(event.type):
            if self.stream is not None:
                return  # the compatibility synthesize inside a stream: its text came in the chunks
            text = data.get("text")
            if not isinstance(text, str):
                self.refuse("bad_request", "synthesize needs a text string")
                return
            if not text.strip():
                self.refuse("invalid_text", "text is empty")
                return
            if len(text) > self.cfg.gateway.max_input_chars:
                self.refuse("text_too_long", f"text has {len(text)} characters, more than "
                                             f"{self.cfg.gateway.max_input_chars}")
                return
            try:
                header = self.front.request_header(data.get("voice"))
            except (TalkerError, _Refused) as e:
                self.refuse(e.code, getattr(e, "message", None) or getattr(e, "text", str(e)))
                return
            self.enqueue(_Job("speak", text=text, header=header))
        else:
            log.debug("Wyoming event %r ignored", event.type)

    async def disconnect(self) -> None:
        self.front.handlers.discard(self)
        w, self.worker = self.worker, None
        if w is not None and not w.done():
            w.cancel()  # its talker request is cancelled on the way out
            with contextlib.suppress(BaseException):
                await w

    # --- synthesis side
    async def work(self) -> None:
        try:
            while True:
                job = await self.jobs.get()
                if job.kind == "error":
                    await self.write_event(Error(text=job.text, code=job.code).event())
                elif job.kind == "stopped":
                    await self.write_event(SynthesizeStopped().event())
                elif job.stream is None or not job.stream.failed:
                    if job.stream is not None:
                        job.stream.pending_chars -= len(job.text)
                    await self.speak(job)
        except (ConnectionError, OSError):
            log.info("Wyoming client went away")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("Wyoming synthesis: internal error")
            with contextlib.suppress(Exception):
                await self.write_event(Error(text="internal error", code="internal").event())

    async def speak(self, job: _Job) -> None:
        started = False
        position = 0  # samples written in this block
        header = {**job.header, "text": job.text}
        try:
            async with contextlib.aclosing(self.front.link.synthesize(header)) as msgs:
                async for m in msgs:
                    if m.type == "done":
                        if m.header.get("random_weights") and not self.front.random_weights:
                            log.warning("the talker serves a random-weight model: its audio is noise, not speech")
                        self.front.random_weights = bool(m.header.get("random_weights"))
                        break
                    if not started:
                        await self.write_event(AudioStart(rate=SAMPLE_RATE, width=2, channels=1,
                                                          timestamp=0).event())
                        started = True
                    pcm = to_int16(m.arrays["pcm"])
                    if len(pcm):
                        await self.write_event(AudioChunk(rate=SAMPLE_RATE, width=2, channels=1, audio=pcm.tobytes(),
                                                          timestamp=position * 1000 // SAMPLE_RATE).event())
                        position += len(pcm)
        except TalkerError as e:
            log.info("Wyoming synthesis failed: %s: %s", e.code, e.message)
            if job.stream is not None:
                job.stream.failed = True
            await self.write_event(Error(text=e.message, code=e.code).event())
            if started:
                await self.write_event(AudioStop(timestamp=position * 1000 // SAMPLE_RATE).event())
            return
        if not started:  # no audio at all (cannot happen for a non-empty text, but keep the block whole)
            await self.write_event(AudioStart(rate=SAMPLE_RATE, width=2, channels=1, timestamp=0).event())
        await self.write_event(AudioStop(timestamp=position * 1000 // SAMPLE_RATE).event())
        if job.stream is not None:
            job.stream.blocks += 1


async def start_wyoming(cfg: Config, ctx: zmq.asyncio.Context | None = None) -> WyomingFront | None:
    """Start the Wyoming front of [gateway] wyoming_uri in the running event loop (None when it is "");
    raises OSError when it cannot listen there."""
    if not cfg.gateway.wyoming_uri:
        return None
    front = WyomingFront(cfg, ctx)
    await front.start()
    return front
