"""Python client of the talker daemon (protocol in daemons/protocol.py)."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import zmq

from daemons import protocol
from daemons.peer_watch import LOST, PeerWatch

SAMPLE_RATE = 24000


class ClientError(Exception):
    """`code`: a daemon error code (busy, invalid_text, predictor_unavailable, ...) or a client-side one
    (not_running, timeout, protocol, config)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass
class Result:
    audio: np.ndarray
    frames: int
    stop: str
    seed: int
    ttfa_s: float | None
    wall_s: float
    codes: np.ndarray | None = None
    random_weights: bool = False
    chunks: list = field(default_factory=list)
    segments: list = field(default_factory=list)  # per segment: {index, frames, stop, seed, chars}
    timing: dict = field(default_factory=dict)    # the talker's ms/frame breakdown (talker_request.timing)

    @property
    def truncated(self) -> list:
        """Segments that did not end on the end-of-speech token (cap or runaway detection)."""
        return [s for s in self.segments if s.get("stop") != "eos"]

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def default_endpoint() -> str:
    """The talker endpoint from the configuration, as a client sees it: without an explicit runtime
    directory, the one where a talker answers (`daemons.config.discover_runtime_dir`: one's own
    `launch.sh --daemon` with or without XDG_RUNTIME_DIR, else the systemd services)."""
    from daemons.config import load_config

    return load_config(discover=True).endpoints["talker"]


def _security(endpoint: str):
    """The configuration's [security] for a network endpoint (CURVE client keys), None for ipc://."""
    from daemons.config import ConfigError, load_config
    from daemons.curve import is_network

    if not is_network(endpoint):
        return None
    try:
        return load_config(discover=True).security
    except ConfigError as e:
        raise ClientError("config", str(e)) from None


class TTSClient:
    def __init__(self, endpoint: str | None = None, *, connect_timeout_s: float = 3.0, idle_timeout_s: float = 60.0,
                 security=None):
        """`security`: a daemons.config.SecurityConfig (CURVE keys for a tcp:// talker); None: the
        configuration's [security] when the endpoint is a network one."""
        from daemons.config import ConfigError
        from daemons.curve import Curve

        self.endpoint = endpoint or default_endpoint()
        self.connect_timeout_s, self.idle_timeout_s = connect_timeout_s, idle_timeout_s
        self.security = security if security is not None else _security(self.endpoint)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        try:
            if self.security is not None:
                Curve(self.security).client(self.sock, self.endpoint)
        except ConfigError as e:
            self.sock.close(0)
            raise ClientError("config", str(e)) from None
        self.sock.connect(self.endpoint)
        # a talker killed mid-request is noticed at once (daemons/peer_watch.py), not after idle_timeout_s
        self.watch = PeerWatch(self.sock)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.watch.mon, zmq.POLLIN)

    def close(self) -> None:
        self.watch.close()
        self.sock.close(0)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, frames: list) -> None:
        deadline = time.monotonic() + self.connect_timeout_s
        self.watch.reset()  # a connection that dropped before this request does not concern it
        while True:
            try:
                self.sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                return
            except zmq.Again:
                if time.monotonic() > deadline:
                    from daemons.curve import unreachable_hint

                    raise ClientError("not_running", f"no talker daemon answers at {self.endpoint} (start it with "
                                                     "`systemctl start qwen3-tts.target` or `bash launch.sh --daemon`)"
                                      + unreachable_hint(self.endpoint, self.security))
                time.sleep(0.01)

    def _recv(self, timeout_s: float) -> protocol.Message:
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            ready = dict(self.poller.poll(max(0, int(left * 1000)))) if left > 0 else {}
            if self.sock in ready:
                break
            if self.watch.lost():  # messages already here were read first
                raise ClientError("not_running", LOST)
            if not ready:
                raise ClientError("timeout", f"no answer from the talker daemon within {timeout_s:g} s")
        try:
            return protocol.decode(self.sock.recv_multipart(), 64 * 1024 * 1024)
        except protocol.ProtocolError as e:
            raise ClientError("protocol", str(e)) from None

    def ping(self) -> dict:
        self._send(protocol.encode("ping"))
        return self._recv(self.connect_timeout_s).header

    def synthesize(self, text: str, language: str = "auto", *, params: dict | None = None,
                   max_frames: int | None = None, non_streaming: bool = False, xvector=None,
                   voice=None, voice_mode: str | None = None, segment: bool = True, pause_ms: int | None = None,
                   return_codes: bool = False, on_audio: Callable[[np.ndarray], None] | None = None,
                   on_progress: Callable[[int], None] | None = None) -> Result:
        rid = uuid.uuid4().hex
        header = {"id": rid, "text": text, "language": language, "non_streaming": non_streaming,
                  "return_codes": return_codes, "params": params or {}}
        if max_frames is not None:
            header["max_frames"] = max_frames
        header["segment"] = segment
        if voice is not None:  # a name (looked up by the talker), a daemons.engine.voice.Voice or its JSON object
            header["voice"] = voice.to_json() if hasattr(voice, "to_json") else voice
            if voice_mode:
                header["voice_mode"] = voice_mode
        if pause_ms is not None:
            header["pause_ms"] = pause_ms
        arrays = {"xvector": np.asarray(xvector, np.float32)} if xvector is not None else None
        t0 = time.monotonic()
        self._send(protocol.encode("synthesize", arrays, **header))
        chunks, ttfa = [], None
        try:
            while True:
                m = self._recv(self.idle_timeout_s)
                if m.id != rid:
                    continue
                if m.type == "error":
                    raise ClientError(m.header.get("code", "internal"), m.header.get("message", ""))
                if m.type == "audio":
                    pcm = m.arrays["pcm"]
                    if ttfa is None:
                        ttfa = time.monotonic() - t0
                    chunks.append(pcm)
                    if on_audio:
                        on_audio(pcm)
                elif m.type == "progress" and on_progress:
                    on_progress(m.header.get("frame", 0))
                elif m.type == "done":
                    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
                    return Result(audio=audio, frames=m.header["frames"], stop=m.header["stop"],
                                  seed=m.header["seed"], ttfa_s=ttfa, wall_s=time.monotonic() - t0,
                                  codes=m.arrays.get("codes"), random_weights=bool(m.header.get("random_weights")),
                                  chunks=chunks, segments=m.header.get("segments") or [],
                                  timing=m.header.get("timing") or {})
        except BaseException:
            try:  # interrupted or failed locally: tell the talker to stop working on it
                self.sock.send_multipart(protocol.encode("cancel", id=rid), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            raise
