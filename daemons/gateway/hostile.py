"""Defences against hostile or broken clients shared by the gateway's fronts (scripts/fuzz_fronts.py finds what
they are for):

- `HeadTimeoutH11`: uvicorn's h11 protocol has no timeout for a request head at all (its keep-alive timer is
  reset by every byte), so a client sending a byte a second holds a connection forever. This one closes a
  connection whose request head is not complete HEAD_TIMEOUT_S after it started waiting for one (408).
- `body_deadline_s`: how long a body of n bytes may take to arrive (a grace plus a minimum average rate).
- `loads_strict`: json.loads that raises ValueError, never RecursionError (deep nesting), and refuses text
  that cannot be encoded as UTF-8 (escaped lone surrogates such as "\\ud800": they would fail later, when the
  request is encoded for the talker, as an internal error)."""
from __future__ import annotations

import json

from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0          # request line + headers, from the first byte (or the connection) to the blank line
BODY_GRACE_S = 10.0
BODY_MIN_RATE = 64 * 1024      # bytes/s a body must average beyond the grace (a 10 MiB upload may take 170 s)
_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def body_deadline_s(n_bytes: int) -> float:
    return BODY_GRACE_S + n_bytes / BODY_MIN_RATE


def loads_strict(raw):
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the JSON holds text that is not valid Unicode (a lone surrogate escape)") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return obj


class HeadTimeoutH11(H11Protocol):
    """H11Protocol with a deadline for each request head (the app bounds the body: body_deadline_s)."""

    _head_timer = None

    def _arm(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _waiting_for_head(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self._waiting_for_head():
            self._arm()
        super().data_received(data)
        if not self._waiting_for_head() or self.transport.get_protocol() is not self:  # a head came (or a
            self._disarm()                                                              # WebSocket upgrade)

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.transport.get_protocol() is not self or not self._waiting_for_head():
            return
        self.transport.write(_408)
        self.transport.close()
