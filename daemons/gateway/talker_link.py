"""One request from an asyncio serving front to the talker daemon (zmq.asyncio, daemons/protocol.py).

    link = TalkerLink(ctx, cfg.endpoints["talker"], cfg.limits.request_timeout_s)
    async with contextlib.aclosing(link.synthesize(header)) as msgs:
        async for m in msgs:          # "audio" messages (pcm f32) as they arrive, then the one "done"
            ...
    # a typed failure raises TalkerError(code, message): the talker's own codes (busy, invalid_text,
    # unknown_language, unknown_voice, predictor_unavailable, shutting_down, ...) or not_running /
    # timeout / protocol from this side

One DEALER per request, as daemons/gateway/http.py does (so the talker's per-connection fairness applies
per request). Leaving the generator early (aclose, cancellation, an exception in the consumer) sends
`cancel` for the request, so the talker stops working on it. Also the voice names a front may ask for
(`voice_names`, `resolve_voice`: voices_dir + [gateway] voice_aliases) and the model's languages.

http.py still has its own copy of the send/receive part (its `Talk` class), written before this module.
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
from daemons.config import Config

CONNECT_TIMEOUT_S = 3.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class TalkerError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


class TalkerLink:
    def __init__(self, ctx: zmq.asyncio.Context, endpoint: str, request_timeout_s: float = 600.0):
        self.ctx, self.endpoint, self.request_timeout_s = ctx, endpoint, request_timeout_s

    def _socket(self) -> zmq.asyncio.Socket:
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)  # no peer: sends fail at once instead of queueing
        s.connect(self.endpoint)
        return s

    async def _send(self, sock, frames, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                await sock.send_multipart(frames, flags=zmq.NOBLOCK)
                return
            except zmq.Again:
                if time.monotonic() > deadline:
                    raise TalkerError("not_running", f"the talker daemon does not answer at {self.endpoint} "
                                                     "(is it running?)") from None
                await asyncio.sleep(0.01)

    async def _recv(self, sock, timeout_s: float) -> protocol.Message:
        if not await sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise TalkerError("timeout", f"no answer from the talker daemon within {timeout_s:g} s")
        try:
            return protocol.decode(await sock.recv_multipart(), MAX_MESSAGE_BYTES)
        except protocol.ProtocolError as e:
            raise TalkerError("protocol", str(e)) from None

    async def ping(self, timeout_s: float = CONNECT_TIMEOUT_S) -> dict:
        sock = self._socket()
        try:
            await self._send(sock, protocol.encode("ping"), timeout_s)
            return (await self._recv(sock, timeout_s)).header
        finally:
            sock.close(0)

    async def synthesize(self, header: dict, arrays: dict | None = None) -> AsyncIterator[protocol.Message]:
        """Send `synthesize` (header without the id: one is made here) and yield the request's `audio`
        messages and finally its `done`; `accepted` and `progress` are consumed here. Raises TalkerError."""
        rid = uuid.uuid4().hex
        sock = self._socket()
        finished = True  # until it is sent there is nothing to cancel
        try:
            await self._send(sock, protocol.encode("synthesize", arrays, id=rid, **header), CONNECT_TIMEOUT_S)
            finished = False
            timeout = CONNECT_TIMEOUT_S  # the first answer (accepted or an error) comes at once
            while True:
                m = await self._recv(sock, timeout)
                timeout = self.request_timeout_s
                if m.id != rid:
                    continue
                if m.type == "error":
                    finished = True  # the talker has forgotten it already
                    raise TalkerError(str(m.header.get("code", "internal")), str(m.header.get("message", "")))
                if m.type in ("audio", "done"):
                    if m.type == "done":
                        finished = True
                    yield m
                    if finished:
                        return
        finally:
            if not finished:
                try:  # zmq.asyncio: a future, done at once with NOBLOCK; its Again (if any) is consumed here
                    f = sock.send_multipart(protocol.encode("cancel", id=rid), flags=zmq.NOBLOCK)
                    f.add_done_callback(lambda f: f.cancelled() or f.exception())
                except zmq.ZMQError:
                    pass
            sock.close(0)


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
