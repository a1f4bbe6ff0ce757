"""The gateway's voice-encoder child: `python -m daemons.gateway.encoder_child --model-dir DIR --threads N`.

Started by daemons/gateway/voices.py (EncoderProcess) for `POST /v1/audio/voices`, so the two ONNX voice
encoders (speech tokenizer + speaker encoder; hundreds of MB at full size) never live in the gateway
process: the gateway stays at its idle RSS, and the child exits after `[gateway] encoder_idle_s` without
an upload (the gateway closes its stdin).

Protocol, over the child's stdin/stdout (its stdout is moved off fd 1 first, so a library printing to
stdout cannot corrupt it; logs go to stderr, i.e. the gateway's log): frames of an 8-byte big-endian length
and a pickle. Request: {"audio": bytes, "transcript": str | None, "language": str}. Reply, one per request:
("ok", Voice, seconds) | ("model_error", message) | ("tts_error", message, code) | ("error", message).
The encoders load on the first request (a ModelError is reported and retried on the next one).

The child does not outlive the gateway: EOF on stdin (the gateway closed it, or died) ends it between
requests, and a thread checks every 0.5 s that its parent is still the one that started it (mid-encode).
It inherits the gateway's CPU affinity; its OpenMP/BLAS pools and onnxruntime's intra-op pool are sized to
`--threads` before numpy or onnxruntime are imported.
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import struct
import sys
import threading
import time

HEADER = struct.Struct("!Q")
MAX_FRAME = 64 * 1024 * 1024      # a request is <= 10 MiB of audio plus three short strings

log = logging.getLogger("qwen3_tts.gateway.encoder")


def _read_exactly(f, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        b = f.read(n - len(buf))
        if not b:
            return None
        buf += b
    return bytes(buf)


def read_frame(f):
    h = _read_exactly(f, HEADER.size)
    if h is None:
        return None
    (n,) = HEADER.unpack(h)
    if n > MAX_FRAME:
        raise ValueError(f"frame of {n} bytes")
    body = _read_exactly(f, n)
    if body is None:
        return None
    return pickle.loads(body)


def write_frame(f, obj) -> None:
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(HEADER.pack(len(body)) + body)
    f.flush()


def _watch_parent(ppid: int) -> None:
    while True:
        if os.getppid() != ppid:     # reparented: the gateway is gone
            os._exit(0)
        time.sleep(0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m daemons.gateway.encoder_child")
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parent", type=int, default=None, help="the gateway's pid (default: our parent's)")
    a = ap.parse_args(argv)
    ppid = a.parent or os.getppid()
    if os.getppid() != ppid:         # the gateway died before we got here
        return 0
    threading.Thread(target=_watch_parent, args=(ppid,), name="watch-parent", daemon=True).start()

    # the protocol's own file descriptors; fd 0 -> /dev/null, fd 1 -> stderr
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    from daemons.cpu import format_cpu_list, limit_thread_env

    threads = max(1, a.threads)
    limit_thread_env(threads)        # before numpy / onnxruntime start their pools
    logging.basicConfig(level=os.environ.get("QWEN3_TTS_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s gateway-encoder[%(process)d] %(levelname)s %(message)s")
    log.info("voice encoder process started for gateway %d: cpus %s (inherited), %d threads", ppid,
             format_cpu_list(os.sched_getaffinity(0)), threads)

    from daemons.engine.errors import ModelError, TTSError
    from daemons.engine.voice import encode_voice
    from daemons.engine.voice_encoder import VoiceEncoder

    encoder = None
    served = 0
    while True:
        try:
            req = read_frame(proto_in)
        except Exception as e:  # noqa: BLE001 - a broken frame: nothing sensible to answer
            log.error("bad request frame (%s): exiting", e)
            return 1
        if req is None:
            log.info("voice encoder process exiting (%d uploads served)", served)
            return 0
        t0 = time.monotonic()
        try:
            if encoder is None:
                encoder = VoiceEncoder(a.model_dir, threads=threads).load()
            voice = encode_voice(encoder.model, req["audio"], req.get("transcript"), req.get("language", "auto"),
                                 encoder=encoder)
            reply = ("ok", voice, time.monotonic() - t0)
        except ModelError as e:
            reply = ("model_error", e.message)
        except TTSError as e:
            reply = ("tts_error", e.message, e.code)
        except Exception as e:  # noqa: BLE001 - reported to the gateway (500), the process carries on
            log.exception("voice encoding failed")
            reply = ("error", f"{type(e).__name__}: {e}")
        served += 1
        try:
            write_frame(proto_out, reply)
        except (BrokenPipeError, OSError):
            return 0


if __name__ == "__main__":
    sys.exit(main())
