"""Wire protocol between the client and the daemons (version 1). No pickle.

A message is a ZeroMQ multipart message: frame 0 is a small UTF-8 JSON object (the header), frames 1..n
are raw little-endian arrays described, in order, by `header["arrays"]` = [{"name", "dtype", "shape"}].
Every header carries `"v": 1`, `"type"` and, for request-scoped messages, `"id"` (chosen by the sender
of the request, echoed in every reply). Receivers enforce size limits (ZMQ_MAXMSGSIZE on the socket plus
the header/array checks here) and answer malformed input with an `error` message; they never crash on it.
`decode` turns anything malformed into ProtocolError: JSON nested deeper than MAX_DEPTH, non-finite numbers
(NaN, Infinity, 1e400), integers beyond +-2**64, array specs with anything but plain
non-negative ints as dimensions (no bools), sizes computed with Python ints (no int64 wrap-around).

Client <-> talker (client DEALER -> talker ROUTER):
  synthesize {id, text, language, stream, params{...}, max_frames, non_streaming, return_codes}
             [+ xvector f32 [hidden]]                       -> accepted {id, position}
                                                            -> progress {id, frame}        (per frame)
                                                            -> audio {id, seq, frames} + pcm f32 [n]
                                                            -> done {id, frames, stop, seed} [+ codes i64]
                                                            or error {id, code, message}
  cancel {id}                                               -> (the request ends with error{cancelled})
  ping {}                                                   -> pong {role, ready, queue, active, languages}
Talker <-> predictor (DEALER -> ROUTER):
  predict {id, frame, c0, seed, params{...}[, burst]} + hidden f32 [hidden]
                                  -> codes {id, frame, ms, threads, burst} + codes i64 [16] + feedback f32 [hidden]
                                     (burst: the vocoder is idle, so a predictor with a burst plan may use its CPUs)
Talker <-> vocoder (DEALER -> ROUTER), streams keyed by (connection, id), 1 <= n <= 64 (MAX_FRAMES_PER_MESSAGE):
  frames {id, seq} + codes i64 [n, 16] [+ context i64 [m, 16] at seq 0]  -> audio {id, seq} + pcm f32 [n * 1920]
                       (before it, while a seq-0 context is primed: priming {id, seq: 0, frames, of} per step;
                        between the 16-frame steps of a longer message: decoding {id, seq, frames, of})
  pause {id, seq, samples} [+ context at seq 0]                         -> audio {id, seq, pause} + zeros
  prime {id} + context i64 [m, 16]       (no answer: primes the reference while the talker prefills)
  close {id}                             (drops the stream state)
The predictor's and the vocoder's ipc:// sockets are 0600: only the talker's user reaches them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

VERSION = 1
DTYPES = {"<f4": np.dtype("<f4"), "<i8": np.dtype("<i8"), "<i2": np.dtype("<i2")}


MAX_DEPTH = 32        # nesting of JSON containers in a header (a voice's ref_codes is 3 deep)
MAX_INT = 1 << 64     # JSON integers in a header are within (-MAX_INT, MAX_INT) (seeds are < 2**63)
MAX_ARRAYS = 8
MAX_DIMS = 4


class ProtocolError(ValueError):
    """A malformed message; `code` is the error code to answer with, `rid` the message's id when the header
    was readable enough to tell it (so the error reply reaches the request it is about)."""
    code = "bad_request"

    def __init__(self, message: str, rid: str | None = None):
        super().__init__(message)
        self.rid = rid


def _valid_id(rid) -> bool:
    return isinstance(rid, str) and 0 < len(rid) <= 128


def _check_tree(header: dict) -> None:
    """Iteratively (no recursion): nesting depth, finite floats and bounded ints everywhere in the header
    (homogeneous lists, e.g. a voice's codes or x-vector, are checked with C-level map/min/max)."""
    stack = [(header, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ProtocolError(f"header nests deeper than {MAX_DEPTH} levels")
        vals = list(node.values()) if isinstance(node, dict) else node
        if not vals:
            continue
        kinds = set(map(type, vals))
        if dict in kinds or list in kinds:
            stack.extend((v, depth + 1) for v in vals if type(v) in (dict, list))
        if float in kinds:
            floats = vals if len(kinds) == 1 else [v for v in vals if type(v) is float]
            if not all(map(math.isfinite, floats)):
                raise ProtocolError("non-finite number in the header (NaN, Infinity or beyond the float64 range)")
        if int in kinds:
            ints = vals if len(kinds) == 1 else [v for v in vals if type(v) is int]
            if max(ints) >= MAX_INT or min(ints) <= -MAX_INT:
                raise ProtocolError("integer beyond +-2**64 in the header")


def _dims(shape) -> list[int] | None:
    """The dimensions of an array spec's shape when they are plain ints (bool is not), else None."""
    if not isinstance(shape, list) or len(shape) > MAX_DIMS:
        return None
    if not all(type(d) is int and 0 <= d < 1 << 31 for d in shape):
        return None
    return shape


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
        frames.append(memoryview(a).cast("B") if a.size else b"")  # a view with a 0 in its shape cannot cast
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
        header = json.loads(raw.decode("utf-8"))  # NaN, Infinity, 1e400 are read as floats, rejected below
    except UnicodeDecodeError:
        raise ProtocolError("header is not valid UTF-8") from None
    except RecursionError:
        raise ProtocolError(f"header nests deeper than {MAX_DEPTH} levels") from None
    except ValueError:
        raise ProtocolError("header is not valid JSON") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    rid = header.get("id")
    known = rid if _valid_id(rid) else None  # echoed in the error replies below
    try:
        _check_tree(header)
    except ProtocolError as e:
        raise ProtocolError(str(e), known) from None
    v = header.get("v")
    if type(v) is not int or v != VERSION:
        raise ProtocolError(f"unsupported protocol version {v!r} (this daemon speaks {VERSION})", known)
    t = header.get("type")
    if not isinstance(t, str) or not 0 < len(t) <= 64:
        raise ProtocolError("header has no message type (a string of at most 64 characters)", known)
    if rid is not None and known is None:
        raise ProtocolError("id must be a non-empty string of at most 128 characters")
    specs = header.pop("arrays", [])
    if not isinstance(specs, list) or len(specs) != len(frames) - 1 or len(specs) > MAX_ARRAYS:
        raise ProtocolError(f"header describes {len(specs) if isinstance(specs, list) else '?'} arrays, "
                            f"message has {len(frames) - 1} (at most {MAX_ARRAYS})", known)
    arrays = {}
    for spec, buf in zip(specs, frames[1:]):
        if not isinstance(spec, dict):
            raise ProtocolError("array spec must be an object", known)
        name, dt, shape = spec.get("name"), spec.get("dtype"), _dims(spec.get("shape"))
        if not isinstance(name, str) or not 0 < len(name) <= 64 or not isinstance(dt, str) or dt not in DTYPES \
                or shape is None:
            raise ProtocolError(f"bad array spec {str(spec)[:200]}: name, dtype among {', '.join(DTYPES)}, "
                                f"shape of at most {MAX_DIMS} dimensions in 0..2**31-1", known)
        if name in arrays:
            raise ProtocolError(f"array {name!r} appears twice", known)
        dtype = DTYPES[dt]
        n = math.prod(shape)  # Python ints: exact, no int64 wrap-around
        if n * dtype.itemsize != len(buf):
            raise ProtocolError(f"array {name!r}: {len(buf)} bytes do not match {dt} {shape}", known)
        arrays[name] = np.frombuffer(buf, dtype=dtype).reshape(shape)
    return Message(t, header, arrays)


def error(rid: str | None, code: str, message: str) -> list:
    return encode("error", id=rid, code=code, message=message)
