"""Requests from an asyncio serving front to the talker daemon (zmq.asyncio, daemons/protocol.py): the one
talker client of the gateway's fronts (http.py, wyoming.py, websocket.py).

    link = TalkerLink(ctx, cfg.endpoints["talker"], cfg.limits.request_timeout_s, cfg.security)
    async with contextlib.aclosing(link.synthesize(header)) as msgs:
        async for m in msgs:          # "audio" messages (pcm f32) as they arrive, then the one "done"
            ...
    # a typed failure raises TalkerError(code, message): the talker's own codes (busy, invalid_text,
    # unknown_language, unknown_voice, predictor_unavailable, shutting_down, cancelled, ...) or
    # not_running / timeout / protocol from this side

`synthesize` is the whole request as a generator; a front that needs more control (HTTP waits for the
first audio while watching its client, the WebSocket front cancels from another task) uses the
`TalkerRequest` underneath it: send(), next() (every message of the request, `accepted` and `progress`
included; an `error` raises), poll(), pending(), cancel(), close().

One DEALER per request (so the talker's per-connection fairness applies per request). A new DEALER waits
for its connection with poll(POLLOUT) (IMMEDIATE: writable once the connection is up), not fixed sleeps.
A talker that goes away while it has the request (killed, restarted) is noticed at once by the socket's
monitor (daemons/peer_watch.py): the request ends with `not_running`, not after `request_timeout_s`.
Leaving a request early (aclose, cancellation, an exception in the consumer) sends `cancel` for it, so
the talker stops working on it; the cancel send is awaited, so a refused send (zmq.Again) is consumed
here and never logged as "Future exception was never retrieved". Also the voice names a front may ask
for (`voice_names`, `resolve_voice`: voices_dir + [gateway] voice_aliases) and the model's languages.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import AsyncIterator

import zmq
import zmq.asyncio

from daemons import protocol
from daemons.config import Config, SecurityConfig
from daemons.curve import Curve, unreachable_hint
from daemons.peer_watch import LOST, PeerWatch

CONNECT_TIMEOUT_S = 3.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
WATCH_SLICE_MS = 250  # how often a waiting request looks at its connection's monitor


class TalkerError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class TalkerRequest:
    """One request to the talker on its own DEALER. `sent`: the talker has it (cancel means something);
    `finished`: the talker is done with it (its `done` or `error` came, or it was cancelled)."""

    def __init__(self, link: "TalkerLink", rid: str | None = None):
        self.link, self.endpoint = link, link.endpoint
        self.id = rid or uuid.uuid4().hex
        self.sent = self.finished = False
        s = link.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)  # no peer: sends fail at once instead of queueing
        if link.curve is not None:  # a tcp:// talker on another board: CURVE client keys ([security])
            link.curve.client(s, link.endpoint)
        s.connect(link.endpoint)
        self.sock = s
        self.watch = PeerWatch(s)

    async def send(self, frames, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        self.watch.reset()  # a connection that dropped before this request does not concern it
        while True:
            try:
                await self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
                return
            except zmq.Again:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TalkerError("not_running", f"the talker daemon does not answer at {self.endpoint} "
                                                     "(is it running?)"
                                      + unreachable_hint(self.endpoint, self.link.security)) from None
                # IMMEDIATE: writable once the connection is up; wake then, not on a fixed sleep (a 10 ms
                # sleep here was most of the gateway's addition to time to first audio)
                await self.sock.poll(max(1, int(min(left, 0.1) * 1000)), zmq.POLLOUT)

    async def synthesize(self, header: dict, arrays: dict | None = None) -> None:
        """Send `synthesize` for this request's id (`header` without the id)."""
        await self.send(protocol.encode("synthesize", arrays, id=self.id, **header))
        self.sent = True

    async def poll(self, timeout_ms: int) -> bool:
        """True when a message can be read now or arrived within timeout_ms, or when the talker went away
        while it had the request (the next recv/next raises not_running then)."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            if await self.sock.poll(min(left_ms, WATCH_SLICE_MS), zmq.POLLIN):
                return True
            if self.sent and not self.finished and self.watch.lost():
                return True
            if left_ms <= WATCH_SLICE_MS:
                return False

    async def recv(self, timeout_s: float) -> protocol.Message:
        """The next message on this socket, whatever it is."""
        if not await self.poll(int(timeout_s * 1000)):
            raise TalkerError("timeout", f"no answer from the talker daemon within {timeout_s:g} s")
        try:
            frames = await self.sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:  # poll woke for the lost connection, not for a message
            self.finished = True  # nobody has it any more: no cancel to send
            raise TalkerError("not_running", LOST) from None
        try:
            return protocol.decode(frames, MAX_MESSAGE_BYTES)
        except protocol.ProtocolError as e:
            raise TalkerError("protocol", str(e)) from None

    def _take(self, m: protocol.Message) -> protocol.Message | None:
        if m.id != self.id:
            return None
        if m.type == "error":
            self.finished = True  # the talker has forgotten it already
            raise TalkerError(str(m.header.get("code", "internal")), str(m.header.get("message", "")))
        if m.type == "done":
            self.finished = True
        return m

    async def next(self, timeout_s: float) -> protocol.Message:
        """The request's next message (accepted, progress, audio, done); its `error` raises TalkerError."""
        while True:
            m = self._take(await self.recv(timeout_s))
            if m is not None:
                return m

    async def pending(self) -> list[protocol.Message]:
        """The request's messages already received, without waiting (an `error` raises TalkerError)."""
        out = []
        while True:
            try:  # NOBLOCK: a future done at once (zmq.Again when nothing is there)
                frames = await self.sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return out
            try:
                m = self._take(protocol.decode(frames, MAX_MESSAGE_BYTES))
            except protocol.ProtocolError as e:
                raise TalkerError("protocol", str(e)) from None
            if m is not None:
                out.append(m)

    async def cancel(self) -> bool:
        """Send `cancel` when the talker has the request and has not finished it; True if it was sent."""
        if not self.sent or self.finished:
            return False
        self.finished = True
        try:  # zmq.asyncio with NOBLOCK: a future done at once; awaiting it consumes its Again (if any)
            await self.sock.send_multipart(protocol.encode("cancel", id=self.id), flags=zmq.NOBLOCK)
            return True
        except zmq.ZMQError:
            return False

    def close(self) -> None:
        self.watch.close()
        self.sock.close(0)


class TalkerLink:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, request_timeout_s: float = 600.0,
                 security: SecurityConfig | None = None):
        """`security`: [security] of the configuration (CURVE keys, used when `endpoint` is tcp://)."""
        self.ctx, self.endpoint, self.request_timeout_s = ctx, endpoint, request_timeout_s
        self.security = security
        self.curve = Curve(security) if security is not None else None

    def request(self) -> TalkerRequest:
        return TalkerRequest(self)

    async def ping(self, timeout_s: float = CONNECT_TIMEOUT_S) -> dict:
        r = self.request()
        try:
            await r.send(protocol.encode("ping"), timeout_s)
            return (await r.recv(timeout_s)).header
        finally:
            r.close()

    async def synthesize(self, header: dict, arrays: dict | None = None) -> AsyncIterator[protocol.Message]:
        """Send `synthesize` (header without the id: one is made here) and yield the request's `audio`
        messages and finally its `done`; `accepted` and `progress` are consumed here. Raises TalkerError."""
        r = self.request()
        try:
            await r.synthesize(header, arrays)
            timeout = CONNECT_TIMEOUT_S  # the first answer (accepted or an error) comes at once
            while True:
                m = await r.next(timeout)
                timeout = self.request_timeout_s
                if m.type in ("audio", "done"):
                    yield m
                    if m.type == "done":
                        return
        finally:
            await r.cancel()
            r.close()


def voice_names(cfg: Config) -> list[str]:
    """The voices of voices_dir (by file name), sorted."""
    d = cfg.voices_dir
    if d is None or not Path(d).is_dir():
        return []
    return sorted(p.stem for p in Path(d).glob("*.json"))


def resolve_voice(cfg: Config, name: str | None) -> str | None:
    """A request's voice name -> the name the talker looks up, or None for the default voice; a
    [gateway] voice_aliases entry maps to its target ("" = default). Raises TalkerError(unknown_voice)."""
    if name is None or name == "":
        return None
    if name in cfg.gateway.voice_aliases:
        return cfg.gateway.voice_aliases[name] or None
    names = voice_names(cfg)
    if name not in names:
        raise TalkerError("unknown_voice", f"unknown voice {name!r}; voices: "
                                           f"{', '.join(names + list(cfg.gateway.voice_aliases)) or '(none)'}")
    return name


def manifest(cfg: Config) -> dict:
    """The model's manifest when the model directory is on this machine, else {}."""
    try:
        m = json.loads((Path(cfg.model_dir) / "manifest.json").read_text())
        return m if isinstance(m, dict) else {}
    except (OSError, ValueError):
        return {}
