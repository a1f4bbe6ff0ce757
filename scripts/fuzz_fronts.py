"""Hostile input on every network front of the gateway, in bounded loops, while normal traffic is measured.

    python scripts/fuzz_fronts.py --json fuzz.json [--rounds 3] [--seed 1] [--case-timeout 45]

Starts the four processes on the tiny demo model (scripts/soak.py's Cluster), then alternates windows of
normal traffic alone (short HTTP streaming + WebSocket + Wyoming + ZeroMQ requests, one after the other)
with windows where the same traffic runs while the hostile cases run from other threads:

  http     malformed JSON (seeded random bytes, truncated, wrong types, deep nesting, huge numbers), huge
           bodies (Content-Length and chunked), slow clients (a byte a second in the headers, in the body),
           header floods (many headers, one huge header), path tricks (.., %2e%2e, %2f, //, NUL, a 64 KB
           path, DELETE /v1/audio/voices/..%2f..), bad request lines, multipart bombs on POST /v1/audio/voices
           (thousands of parts, an oversized field, an oversized file, no boundary, an unterminated body)
  wyoming  bad headers (not JSON, not an object, no type, undecodable), a 1 MB header line, lying
           data_length / payload_length (more announced than sent, wrong types, negative), giant payloads,
           a header line at a byte a second
  ws       oversized frames, binary where text is expected, bad JSON / types, a frame header announcing
           more than is sent, a bad upgrade request

Every case must end in a clear error (an HTTP 4xx status / an error event or message) or a closed
connection within --case-timeout: `hang` otherwise, and a 5xx on hostile input counts as `server_error`.
Both are failures. The JSON has the counts per front and outcome, the failing cases, and normal traffic's
median latency with and without the fuzz (`latency_ratio`, target <= 1.2)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.soak import Cluster, Driver, demo_model  # noqa: E402

MB = 1 << 20


# --- raw socket helpers -----------------------------------------------------------------------------------
class Conn:
    """A plain TCP connection with a deadline for the whole case."""

    def __init__(self, port: int, deadline: float):
        self.deadline = deadline
        self.s = socket.create_connection(("127.0.0.1", port), timeout=5)

    def left(self) -> float:
        return max(0.01, self.deadline - time.monotonic())

    def send(self, data: bytes) -> bool:
        """False when the server has closed the connection (or reset it) meanwhile."""
        self.s.settimeout(self.left())
        try:
            self.s.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False
        except socket.timeout:  # the server stopped reading (its buffers are full): fine, it is not ours
            return True

    def trickle(self, data: bytes, every_s: float = 1.0) -> bool:
        """A byte every `every_s` until the server answers or closes (True), or the bytes run out or the
        deadline passes (False)."""
        for b in data:
            if time.monotonic() >= self.deadline:
                return False
            if self.peer_closed() or not self.send(bytes([b])):
                return True
            time.sleep(every_s)
        return False

    def peer_closed(self) -> bool:
        """Has the server closed or answered (something to read)?"""
        self.s.settimeout(0.0)
        try:
            return bool(self.s.recv(1, socket.MSG_PEEK)) or True
        except BlockingIOError:
            return False
        except OSError:
            return True

    def read_all(self, limit: int = 4 * MB) -> tuple[bytes, bool]:
        """Read until the server closes or the deadline; -> (bytes, closed)."""
        buf = b""
        while len(buf) < limit:
            self.s.settimeout(self.left())
            try:
                d = self.s.recv(65536)
            except socket.timeout:
                return buf, False
            except OSError:
                return buf, True
            if not d:
                return buf, True
            buf += d
            if time.monotonic() >= self.deadline:
                return buf, False
        return buf, False

    def close(self):
        self.s.close()


def http_verdict(buf: bytes, closed: bool, *, safe=None) -> tuple[str, str]:
    """A response -> (outcome, detail): error:<status> for 4xx (and 503/504, which are the server's own
    typed answers), server_error for 500, answered for a 2xx/3xx (`safe` decides: a path trick must not reach a
    file outside the page), closed for a close without a response, hang otherwise."""
    if buf.startswith(b"HTTP/1."):
        try:
            status = int(buf.split(b" ", 2)[1])
        except (IndexError, ValueError):
            return "bad_response", buf[:80].decode("latin-1")
        if status >= 500 and status not in (503, 504):
            return "server_error", buf[:300].decode("latin-1", "replace")
        if status < 400:
            ok = safe(buf) if safe else False
            return ("answered" if ok else "unexpected_success"), buf[:120].decode("latin-1", "replace")
        return f"error:{status}", ""
    if closed:
        return "closed", ""
    return "hang", buf[:80].decode("latin-1", "replace")


def http_case(port: int, budget_s: float, head: bytes, body: bytes | None = None, *, trickle=None,
              safe=None, stream=None) -> tuple[str, str]:
    c = Conn(port, time.monotonic() + budget_s)
    try:
        if not c.send(head):
            return "closed", "at the request head"
        if trickle is not None:
            c.trickle(trickle)
            buf, closed = c.read_all()
            return http_verdict(buf, closed)
        if body is not None:
            for i in range(0, len(body), MB):
                if not c.send(body[i:i + MB]) or c.peer_closed():
                    break
        if stream is not None:  # a generator of chunks, sent until the server answers or closes
            for chunk in stream:
                if time.monotonic() >= c.deadline or c.peer_closed() or not c.send(chunk):
                    break
        buf, closed = c.read_all()
        return http_verdict(buf, closed, safe=safe)
    finally:
        c.close()


def post(path: str, body: bytes, ctype: str = "application/json", extra: str = "", length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\nContent-Length: {n}\r\n"
            f"Connection: close\r\n{extra}\r\n").encode()


def not_a_leak(buf: bytes) -> bool:
    """A 2xx to a path trick is fine only when it is not a file from outside the web page."""
    return b"root:" not in buf and b"import " not in buf and b"[limits]" not in buf


# --- the cases ----------------------------------------------------------------------------------------------
def http_cases(rng: random.Random) -> list[tuple[str, callable]]:
    S = "/v1/audio/speech"
    ok_body = json.dumps({"model": "tts-1", "input": "hi", "voice": "alloy", "response_format": "pcm",
                          "max_frames": 4}).encode()
    cases = []
    for i in range(6):
        junk = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 4000)))
        cases.append((f"json_random_bytes_{i}", lambda p, b, j=junk: http_case(p, b, post(S, j) + j)))
    for name, body in [("json_truncated", b'{"input": "hel'), ("json_array", b"[1, 2, 3]"), ("json_string", b'"x"'),
                       ("json_input_number", b'{"input": 5}'), ("json_speed_str", b'{"input": "x", "speed": "fast"}'),
                       ("json_max_frames_neg", b'{"input": "x", "max_frames": -1}'),
                       ("json_seed_huge", b'{"input": "x", "seed": 1e400}'),
                       ("json_int_5000_digits", b'{"input": "x", "seed": ' + b"9" * 5000 + b"}"),
                       ("json_deep_nesting", b"[" * 100000 + b"]" * 100000),
                       ("json_deep_objects", b'{"a":' * 50000 + b"1" + b"}" * 50000),
                       ("json_nul_in_text", b'{"input": "a\\u0000b", "max_frames": 2, "response_format": "pcm"}'),
                       ("json_lone_surrogate", b'{"input": "\\ud800", "response_format": "pcm"}'),
                       ("json_wrong_ctype", ok_body)]:
        extra = "" if name != "json_wrong_ctype" else ""
        ctype = "text/plain" if name == "json_wrong_ctype" else "application/json"
        if name in ("json_nul_in_text", "json_wrong_ctype"):  # legitimate enough: audio or a 4xx, never a 500
            cases.append((name, lambda p, b, body=body, ctype=ctype: http_case(
                p, b, post(S, body, ctype) + body, safe=lambda buf: True)))
        else:
            cases.append((name, lambda p, b, body=body, ctype=ctype, extra=extra: http_case(
                p, b, post(S, body, ctype, extra) + body)))
    cases += [
        ("huge_body_64MB", lambda p, b: http_case(p, b, post(S, b"", length=64 * MB), b"a" * (64 * MB))),
        ("huge_body_announced_1GB", lambda p, b: http_case(p, b, post(S, b"", length=1 << 30),
                                                           stream=(b"a" * MB for _ in range(1024)))),
        ("huge_body_chunked", lambda p, b: http_case(
            p, b, b"POST " + S.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n", stream=(b"100000\r\n" + b"a" * 0x100000 + b"\r\n"
                                                                 for _ in range(1024)))),
        ("slow_headers", lambda p, b: http_case(p, b, b"P", trickle=b"OST /v1/audio/speech HTTP/1.1\r\nHost: x\r\n" * 50)),
        ("slow_body", lambda p, b: http_case(p, b, post(S, ok_body), trickle=ok_body * 10)),
        ("slow_voice_upload", lambda p, b: http_case(
            p, b, post("/v1/audio/voices", b"", "multipart/form-data; boundary=B", length=4000),
            trickle=b"--B\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nx" * 100)),
        ("header_flood_5000", lambda p, b: http_case(
            p, b, b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 90)
                                                                   for i in range(5000)) + b"\r\n")),
        ("header_one_1MB", lambda p, b: http_case(p, b, b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * MB
                                                 + b"\r\n\r\n")),
        ("header_bad_bytes", lambda p, b: http_case(p, b, b"GET /health HTTP/1.1\r\nHost: x\r\nX\x00Y: \xff\r\n\r\n")),
        ("request_line_garbage", lambda p, b: http_case(p, b, b"GARBAGE\r\n\r\n")),
        ("request_line_http_9", lambda p, b: http_case(p, b, b"GET / HTTP/9.9\r\n\r\n", safe=not_a_leak)),
        ("request_line_binary", lambda p, b: http_case(p, b, bytes(rng.getrandbits(8) for _ in range(512)))),
        ("content_length_negative", lambda p, b: http_case(p, b, post(S, b"", length=-5))),
        ("content_length_twice", lambda p, b: http_case(
            p, b, b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}")),
    ]
    for name, path, method in [("path_dotdot", "/../../../etc/passwd", "GET"),
                               ("path_dotdot_encoded", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd", "GET"),
                               ("path_static_escape", "/static/..%2f..%2f..%2fconfig.py", "GET"),
                               ("path_static_dotdot", "/static/../../daemons/config.py", "GET"),
                               ("path_double_slash", "//etc/passwd", "GET"),
                               ("path_nul", "/health%00.json", "GET"),
                               ("path_64KB", "/" + "a" * 65536, "GET"),
                               ("path_voice_traversal", "/v1/audio/voices/..%2f..%2f..%2fetc%2fpasswd", "DELETE"),
                               ("path_voice_dotdot", "/v1/audio/voices/../../x", "DELETE"),
                               ("path_voice_dots", "/v1/audio/voices/..", "DELETE"),
                               ("path_absolute_uri", "http://evil.example/../../etc/passwd", "GET"),
                               ("path_unicode", "/v1/audio/voices/%C0%AE%C0%AE%2F", "DELETE")]:
        cases.append((name, lambda p, b, path=path, method=method: http_case(
            p, b, f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode("latin-1"),
            safe=not_a_leak)))
    V = "/v1/audio/voices"

    def form(parts: list[tuple[str, bytes, str | None]], boundary=b"B0undary") -> tuple[bytes, str]:
        out = b""
        for name, data, filename in parts:
            fn = f'; filename="{filename}"' if filename else ""
            out += (b"--" + boundary + f'\r\nContent-Disposition: form-data; name="{name}"{fn}\r\n\r\n'.encode()
                    + data + b"\r\n")
        return out + b"--" + boundary + b"--\r\n", f"multipart/form-data; boundary={boundary.decode()}"

    def mp(parts, boundary=b"B0undary", ctype=None, cut=0):
        body, ct = form(parts, boundary)
        body = body[:len(body) - cut] if cut else body
        return lambda p, b: http_case(p, b, post(V, body, ctype or ct) + body)

    cases += [
        ("multipart_10000_parts", mp([(f"f{i}", b"x", None) for i in range(10000)])),
        ("multipart_5000_files", mp([("audio_sample", b"RIFF", f"a{i}.wav") for i in range(5000)])),
        ("multipart_field_4MB", mp([("name", b"n" * (4 * MB), None), ("audio_sample", b"RIFF", "a.wav")])),
        ("multipart_file_30MB", mp([("name", b"bomb", None), ("audio_sample", b"\0" * (30 * MB), "a.wav")])),
        ("multipart_no_boundary", lambda p, b: http_case(p, b, post(V, b"--x\r\n\r\n", "multipart/form-data")
                                                         + b"--x\r\n\r\n")),
        ("multipart_unterminated", mp([("name", b"x", None)], cut=12)),
        ("multipart_huge_boundary", mp([("name", b"x", None)], boundary=b"b" * 70000)),
        ("multipart_nested", mp([("audio_sample", form([("x", b"y" * 1000, "z")], b"inner")[0], "a.wav"),
                                 ("name", b"nested", None)])),
        ("multipart_garbage_audio", mp([("name", b"garbage1", None),
                                        ("audio_sample", bytes(rng.getrandbits(8) for _ in range(50000)), "a.wav")])),
        ("multipart_bad_name", mp([("name", b"../../etc/passwd", None), ("audio_sample", b"RIFF", "a.wav")])),
    ]
    return cases


def wyoming_case(port: int, budget_s: float, data: bytes = b"", *, trickle: bytes | None = None,
                 stream=None) -> tuple[str, str]:
    """Wyoming: an `error` event or a closed connection is the answer; a describe/pong is an answer too
    (the server read past the garbage and is serving), nothing within the budget is a hang."""
    c = Conn(port, time.monotonic() + budget_s)
    try:
        if data and not c.send(data):
            return "closed", "while sending"
        if trickle is not None:
            c.trickle(trickle)
        if stream is not None:
            for chunk in stream:
                if time.monotonic() >= c.deadline or c.peer_closed() or not c.send(chunk):
                    break
        return _wy(c)
    finally:
        c.close()


def _wy(c: Conn) -> tuple[str, str]:
    """The server's first event (its data read too) or the close; `hang` when neither comes in time."""
    buf = b""
    while True:
        if b"\n" in buf:
            line, rest = buf.split(b"\n", 1)
            try:
                ev = json.loads(line)
                n = ev.get("data_length") or 0
            except (ValueError, AttributeError):
                return "bad_response", line[:80].decode("latin-1", "replace")
            if len(rest) >= n:
                data = {**(ev.get("data") or {}), **(json.loads(rest[:n]) if n else {})}
                t = ev.get("type")
                return (f"error:{data.get('code')}", str(data.get("text", ""))[:80]) if t == "error" \
                    else (f"answered:{t}", "")
        c.s.settimeout(c.left())
        try:
            d = c.s.recv(65536)
        except socket.timeout:
            return "hang", buf[:80].decode("latin-1", "replace")
        except OSError:
            return "closed", "reset"
        if not d:
            return "closed", ""
        buf += d


def wyoming_cases(rng: random.Random) -> list[tuple[str, callable]]:
    def h(d: dict) -> bytes:
        return json.dumps(d).encode() + b"\n"

    syn = {"type": "synthesize", "data": {"text": "hi"}}
    cases = [
        ("header_not_json", b"this is not json\n"),
        ("header_array", b"[1, 2, 3]\n"),
        ("header_no_type", b'{"data": {}}\n'),
        ("header_type_number", b'{"type": 5}\n'),
        ("header_undecodable", b"\xff\xfe\xfd\n"),
        ("header_random", bytes(rng.getrandbits(8) for _ in range(3000)) + b"\n"),
        ("header_line_1MB", b'{"type": "' + b"a" * MB + b'"}\n'),
        ("data_length_string", h({"type": "synthesize", "data_length": "x"}) + b"{}"),
        ("data_length_negative", h({"type": "synthesize", "data_length": -10}) + b"{}"),
        ("data_length_float", h({"type": "synthesize", "data_length": 2.5}) + b"{}"),
        ("data_length_lies_more", h({"type": "synthesize", "data_length": 1000}) + b'{"text": "hi"}'),
        ("data_length_lies_less", h({"type": "synthesize", "data_length": 3}) + b'{"text": "hi"}'),
        ("data_not_json", h({"type": "synthesize", "data_length": 8}) + b"notjson!"),
        ("data_not_object", h({"type": "synthesize", "data_length": 2}) + b"[]"),
        ("payload_length_lies", h({**syn, "payload_length": 100000}) + b"x" * 10),
        ("payload_length_string", h({**syn, "payload_length": "many"})),
        ("data_length_1GB", None),
        ("payload_length_1GB", None),
        ("synthesize_text_number", h({"type": "synthesize", "data": {"text": 5}})),
        ("synthesize_voice_garbage", h({"type": "synthesize", "data": {"text": "hi", "voice": [1, 2]}})),
        ("synthesize_chunk_outside", h({"type": "synthesize-chunk", "data": {"text": "hi"}})),
        ("synthesize_text_60k", h({"type": "synthesize", "data": {"text": "a" * 60000}})),
        ("synthesize_lone_surrogate", b'{"type": "synthesize", "data": {"text": "\\ud800"}}\n'),
        ("unknown_type_then_garbage", h({"type": "x" * 1000}) + b"garbage\n"),
    ]
    out = []
    for name, data in cases:
        if name == "data_length_1GB":
            out.append((name, lambda p, b: wyoming_case(p, b, h({"type": "synthesize", "data_length": 1 << 30}),
                                                        stream=(b"a" * MB for _ in range(1024)))))
        elif name == "payload_length_1GB":
            out.append((name, lambda p, b: wyoming_case(p, b, h({**syn, "payload_length": 1 << 30}),
                                                        stream=(b"a" * MB for _ in range(1024)))))
        else:
            out.append((name, lambda p, b, d=data: wyoming_case(p, b, d)))
    out.append(("header_slow", lambda p, b: wyoming_case(p, b, b"{", trickle=b'"type": "describe"}' * 20)))
    out.append(("data_slow", lambda p, b: wyoming_case(p, b, h({"type": "synthesize", "data_length": 200}),
                                                       trickle=b"x" * 200)))
    return out


def ws_cases(rng: random.Random) -> list[tuple[str, callable]]:
    def run(coro_fn):
        return lambda url, b: asyncio.run(_ws_guard(coro_fn, url, b))

    async def big_text(ws):
        await ws.send("x" * (20 * MB))

    async def big_binary(ws):
        await ws.send(b"\0" * (20 * MB))

    async def binary_start(ws):
        await ws.send(b'{"type": "start"}')

    async def binary_small(ws):
        await ws.send(bytes(rng.getrandbits(8) for _ in range(100)))

    async def bad_json(ws):
        await ws.send("{not json")

    async def json_array(ws):
        await ws.send("[1, 2]")

    async def deep_json(ws):
        await ws.send("[" * 100000 + "]" * 100000)

    async def start_types(ws):
        await ws.send(json.dumps({"type": "start", "sampleRate": "fast", "encoding": 5, "voice": [1]}))

    async def speak_huge(ws):
        await ws.send(json.dumps({"type": "start", "language": "english"}))
        await ws.send(json.dumps({"type": "speak", "text": "a" * (2 * MB)}))

    async def speak_before_start(ws):
        await ws.send(json.dumps({"type": "speak", "text": "hi"}))

    async def lone_surrogate(ws):
        await ws.send(json.dumps({"type": "start", "language": "english"}))
        await ws.send('{"type": "speak", "text": "\\ud800"}')

    async def unknown_type(ws):
        await ws.send(json.dumps({"type": "\u0000" * 1000}))

    async def flood_speak(ws):
        await ws.send(json.dumps({"type": "start", "language": "english", "maxFrames": 2}))
        for _ in range(200):
            await ws.send(json.dumps({"type": "speak", "text": "hi"}))

    cases = [("oversized_text_20MB", run(big_text)), ("oversized_binary_20MB", run(big_binary)),
             ("binary_instead_of_text", run(binary_start)), ("binary_random", run(binary_small)),
             ("bad_json", run(bad_json)), ("json_array", run(json_array)), ("json_deep_nesting", run(deep_json)),
             ("start_wrong_types", run(start_types)), ("speak_2MB_text", run(speak_huge)),
             ("speak_before_start", run(speak_before_start)), ("unknown_type_nul", run(unknown_type)),
             ("speak_flood_200", run(flood_speak)), ("speak_lone_surrogate", run(lone_surrogate))]

    def raw(head: bytes, after: bytes = b"", trickle: bytes | None = None):
        def go(url, b):
            port = int(url.split(":")[2].split("/")[0])
            c = Conn(port, time.monotonic() + b)
            try:
                if not c.send(head):
                    return "closed", ""
                buf = b""
                while b"\r\n\r\n" not in buf:  # the 101 first: frames sent with the upgrade are not read
                    c.s.settimeout(c.left())
                    d = c.s.recv(65536)
                    if not d:
                        return "closed", "before the upgrade"
                    buf += d
                if not buf.startswith(b"HTTP/1.1 101"):
                    return http_verdict(buf, True)
                if after and not c.send(after):
                    return "closed", ""
                if trickle is not None:
                    c.trickle(trickle)
                return ws_raw_verdict(c, buf.split(b"\r\n\r\n", 1)[1])
            finally:
                c.close()
        return go

    up = (b"GET /api/v1/speak HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    cases += [
        ("upgrade_no_key", raw(b"GET /api/v1/speak HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                               b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n")),
        ("upgrade_bad_version", raw(up.replace(b"Version: 13", b"Version: 99"))),
        # a masked text frame whose header announces 1 MiB (64-bit length) followed by 10 bytes and silence
        ("frame_length_lies", raw(up, b"\x81\xff" + (MB).to_bytes(8, "big") + b"\0\0\0\0" + b"x" * 10)),
        ("frame_unmasked", raw(up, b"\x81\x05hello")),
        ("frame_reserved_bits", raw(up, b"\xf1\x85\0\0\0\0hello")),
        ("frame_slow", raw(up, b"\x81", trickle=b"\x85\0\0\0\0hello" * 5)),
    ]
    return cases


def ws_raw_verdict(c: Conn, buf: bytes) -> tuple[str, str]:
    """After a raw upgrade: the server's frames until a close frame, an error message or the TCP close (the
    `ready` message that opens every session does not count)."""
    while True:
        while len(buf) >= 2:
            op, n = buf[0] & 0x0F, buf[1] & 0x7F
            off = 2 + (2 if n == 126 else 8 if n == 127 else 0)
            if len(buf) < off:
                break
            n = int.from_bytes(buf[2:off], "big") if n >= 126 else n
            if len(buf) < off + n:
                break
            payload, buf = buf[off:off + n], buf[off + n:]
            if op == 0x8:
                return "closed", f"close frame {int.from_bytes(payload[:2], 'big') if len(payload) >= 2 else ''}"
            if op == 0x1:
                m = json.loads(payload)
                if m.get("type") == "error":
                    return f"error:{m.get('code')}", str(m.get("detail", ""))[:80]
        c.s.settimeout(c.left())
        try:
            d = c.s.recv(65536)
        except socket.timeout:
            return "hang", ""
        except OSError:
            return "closed", "reset"
        if not d:
            return "closed", ""
        buf += d


async def _ws_guard(coro_fn, url: str, budget_s: float) -> tuple[str, str]:
    """Connect, read `ready`, run the hostile sends, then read until an error message or the close."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    try:
        async with asyncio.timeout(budget_s):
            try:
                ws = await connect(url, max_size=None, open_timeout=5)
            except InvalidStatus as e:
                return f"error:{e.response.status_code}", ""
            try:
                await ws.recv()  # ready
                try:
                    await coro_fn(ws)
                except ConnectionClosed as e:
                    return "closed", f"code {e.rcvd.code if e.rcvd else None}"
                while True:
                    m = await ws.recv()
                    if isinstance(m, str):
                        j = json.loads(m)
                        if j.get("type") == "error":
                            return f"error:{j.get('code')}", str(j.get("detail", ""))[:80]
            except ConnectionClosed as e:
                return "closed", f"code {e.rcvd.code if e.rcvd else None}"
            finally:
                ws.transport.abort()
    except TimeoutError:
        return "hang", ""


# --- the run ------------------------------------------------------------------------------------------------
FAIL = ("hang", "server_error", "unexpected_success", "bad_response", "crash")


class Traffic:
    """Normal requests one after the other (HTTP stream, WebSocket, Wyoming, ZeroMQ, short texts, seeded),
    each latency tagged with the current window ('base' or 'fuzz')."""

    def __init__(self, cl: Cluster):
        self.driver = Driver(cl, None)
        self.window = "base"
        self.lat: dict[str, list[float]] = {"base": [], "fuzz": []}
        self.bad: list[str] = []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        rng = random.Random(5)
        kinds = [("http", "stream"), ("ws", "short"), ("wyoming", "short"), ("zmq", "short")]
        i = 0
        while not self.stop_ev.is_set():
            w = self.window
            f, s = kinds[i % len(kinds)]
            i += 1
            o = self.driver.run(f, s, random.Random(rng.getrandbits(32)))
            if o.outcome == "audio":
                if w == self.window:  # a request that straddles a window change counts in neither
                    self.lat[w].append(o.wall_s)
            else:
                self.bad.append(f"{f}:{s}:{o.outcome}:{o.detail[:80]}")


def run_cases(cases, target, budget_s: float, results: list, front: str, parallel: int = 4) -> None:
    """Run the cases `parallel` at a time (bounded), each within budget_s (+ a grace for the verdict)."""
    sem = threading.Semaphore(parallel)
    lock = threading.Lock()

    def one(name, fn):
        t = time.monotonic()
        try:
            out, detail = fn(target, budget_s)
        except Exception as e:  # the client side of a case failed: a bug of this script, reported as such
            out, detail = "crash", f"{type(e).__name__}: {e}"[:200]
        finally:
            sem.release()
        with lock:
            results.append({"front": front, "case": name, "outcome": out, "detail": detail,
                            "s": round(time.monotonic() - t, 2)})

    ts = []
    for name, fn in cases:
        sem.acquire()
        t = threading.Thread(target=one, args=(name, fn), daemon=True)
        t.start()
        ts.append(t)
    for t in ts:
        t.join(budget_s + 30)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=3, help="base/fuzz window pairs (each fuzz window runs every case)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--case-timeout", type=float, default=45.0, help="seconds for a case to be answered or closed")
    ap.add_argument("--base-s", type=float, default=20.0, help="seconds of normal traffic alone per round")
    ap.add_argument("--fronts", default="http,wyoming,ws")
    ap.add_argument("--model", type=Path)
    args = ap.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    fronts = args.fronts.split(",")
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="qwen3-fuzz-") as tmpd:
        cl = Cluster(args.model or demo_model("tiny"), Path(tmpd), log=log)
        cl.start()
        traffic = Traffic(cl)
        try:
            for _ in range(2):  # warm-up: every front once
                for f, s in [("http", "stream"), ("ws", "short"), ("wyoming", "short"), ("zmq", "short")]:
                    traffic.driver.run(f, s, random.Random(0))
            traffic.thread.start()
            for rnd in range(args.rounds):
                traffic.window = "base"
                time.sleep(args.base_s)
                traffic.window = "fuzz"
                t = time.monotonic()
                rng = random.Random(args.seed * 100 + rnd)
                makers = {"http": (http_cases, cl.port), "wyoming": (wyoming_cases, cl.wport), "ws": (ws_cases, cl.ws)}
                threads = [threading.Thread(target=run_cases, args=(makers[f][0](rng), makers[f][1], args.case_timeout,
                                                                     results, f), daemon=True) for f in fronts]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                log(f"round {rnd + 1}/{args.rounds}: fuzz window {time.monotonic() - t:.0f} s, "
                    f"{len(results)} cases so far, failures "
                    f"{sum(r['outcome'] in FAIL for r in results)}")
            traffic.window = "base"
            time.sleep(args.base_s / 2)
        finally:
            traffic.stop_ev.set()
            traffic.thread.join(60)
            alive = cl.alive()
            exits = list(cl.exits)
            cl.stop()
    counts: dict[str, dict[str, int]] = {}
    for r in results:
        c = counts.setdefault(r["front"], {})
        c[r["outcome"]] = c.get(r["outcome"], 0) + 1
    med = {w: statistics.median(v) if v else None for w, v in traffic.lat.items()}
    ratio = med["fuzz"] / med["base"] if med["fuzz"] and med["base"] else None
    rep = {"args": {k: str(v) for k, v in vars(args).items()}, "cases": len(results),
           "counts": {k: dict(sorted(v.items())) for k, v in sorted(counts.items())},
           "failures": [r for r in results if r["outcome"] in FAIL],
           "normal_traffic": {"median_s": med, "n": {w: len(v) for w, v in traffic.lat.items()},
                              "not_audio": traffic.bad[:50], "latency_ratio": round(ratio, 3) if ratio else None},
           "processes_alive_at_end": alive, "exits": exits, "results": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rep, indent=1))
    log(json.dumps({k: rep[k] for k in ("cases", "counts", "failures")}, indent=1)[:6000])
    log(f"normal traffic median {med} -> ratio {rep['normal_traffic']['latency_ratio']}; "
        f"not audio: {len(traffic.bad)}; alive {alive}")
    ok = not rep["failures"] and all(alive.values()) and not exits and not traffic.bad
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
