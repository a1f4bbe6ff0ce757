"""Wire protocol between the client and the daemons (version 1). No pickle.

A message is a ZeroMQ multipart message: frame 0 is a small UTF-8 JSON object (the header), frames 1..n
are raw little-endian arrays described, in order, by `header["arrays"]` = [{"name", "dtype", "shape"}].
Every header carries `"v": 1`, `"type"` and, for request-scoped messages, `"id"` (chosen by the sender
of the request, echoed in every reply). Receivers enforce size limits (ZMQ_MAXMSGSIZE on the socket plus
the header/array checks here) and answer malformed input with an `error` message; they never crash on it.

Client <-> talker (client DEALER -> talker ROUTER):
  synthesize {id, text, language, stream, params{...}, max_frames, non_streaming, return_codes}
             [+ xvector f32 [hidden]]                       -> accepted {id, position}
                                                            -> progress {id, frame}        (per frame)
                                                            -> audio {id, seq, frames} + pcm f32 [n]
                                                            -> done {id, frames, stop, seed} [+ codes i64]
                                                            or error {id, code, message}
  cancel {id}                                               -> (the request ends with error{cancelled})
  ping {}                                                   -> pong {role, ready, queue}
Talker <-> predictor (DEALER -> ROUTER):
  predict {id, frame, c0, seed, params{...}} + hidden f32 [hidden] -> codes {id, frame} + codes i64 [16]
                                                                      + feedback f32 [hidden]
Talker <-> vocoder (DEALER -> ROUTER):
  frames {id, seq} + codes i64 [n, 16]   -> audio {id, seq} + pcm f32 [n * 1920]
  close {id}                             (drops the stream state)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

VERSION = 1
DTYPES = {"<f4": np.dtype("<f4"), "<i8": np.dtype("<i8"), "<i2": np.dtype("<i2")}


class ProtocolError(ValueError):
    """A malformed message; `code` is the error code to answer with."""
    code = "bad_request"


@dataclass
class Message:
    type: str
    header: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def id(self) -> str | None:
        return self.header.get("id")


def encode(type_: str, arrays: dict[str, np.ndarray] | None = None, **header) -> list:
    """-> frames for `socket.send_multipart` (arrays go out without a copy when contiguous)."""
    header = {"v": VERSION, "type": type_, **header}
    frames = [None]
    specs = []
    for name, a in (arrays or {}).items():
        a = np.asarray(a)
        dt = a.dtype.newbyteorder("<") if a.dtype.byteorder not in ("<", "|") else a.dtype
        key = dt.str
        if key not in DTYPES:
            raise ValueError(f"unsupported array dtype {a.dtype}")
        a = np.ascontiguousarray(a, dtype=dt)
        specs.append({"name": name, "dtype": key, "shape": list(a.shape)})
        frames.append(memoryview(a).cast("B"))
    if specs:
        header["arrays"] = specs
    frames[0] = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return frames


def decode(frames: list, max_bytes: int = 4 * 1024 * 1024) -> Message:
    """Parse and validate; raises ProtocolError with a message suitable for the peer."""
    if not frames:
        raise ProtocolError("empty message")
    total = sum(len(f) for f in frames)
    if total > max_bytes:
        raise ProtocolError(f"message of {total} bytes exceeds the limit of {max_bytes}")
    raw = bytes(frames[0])  # bounded by max_bytes like the rest (a long text travels in the header)
    try:
        header = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("header is not valid UTF-8") from None
    except ValueError:
        raise ProtocolError("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    if header.get("v") != VERSION:
        raise ProtocolError(f"unsupported protocol version {header.get('v')!r} (this daemon speaks {VERSION})")
    t = header.get("type")
    if not isinstance(t, str) or not t:
        raise ProtocolError("header has no message type")
    rid = header.get("id")
    if rid is not None and (not isinstance(rid, str) or not 0 < len(rid) <= 128):
        raise ProtocolError("id must be a non-empty string of at most 128 characters")
    specs = header.pop("arrays", [])
    if not isinstance(specs, list) or len(specs) != len(frames) - 1:
        raise ProtocolError(f"header describes {len(specs) if isinstance(specs, list) else '?'} arrays, "
                            f"message has {len(frames) - 1}")
    arrays = {}
    for spec, buf in zip(specs, frames[1:]):
        if not isinstance(spec, dict):
            raise ProtocolError("array spec must be an object")
        name, dt, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if not isinstance(name, str) or dt not in DTYPES or not isinstance(shape, list) \
                or not all(isinstance(d, int) and 0 <= d < 1 << 31 for d in shape) or len(shape) > 4:
            raise ProtocolError(f"bad array spec {spec!r}")
        dtype = DTYPES[dt]
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if n * dtype.itemsize != len(buf):
            raise ProtocolError(f"array {name!r}: {len(buf)} bytes do not match {dt} {shape}")
        arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return Message(t, header, arrays)


def error(rid: str | None, code: str, message: str) -> list:
    return encode("error", id=rid, code=code, message=message)
