"""What every daemon shares: configuration, CPU pinning, logging, sd_notify, signals, the poll loop."""
from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import zmq

from . import protocol
from .config import Config
from .cpu import CpuPlan, format_cpu_list
from .notify import Notifier

POLL_MS = 200  # upper bound on the loop period when idle (watchdog pings come from this loop)


class Service:
    role = "?"

    def __init__(self, cfg: Config, plan: CpuPlan):
        """`plan`: the CPU pinning already applied by `daemons.main` (before numpy & co. started threads)."""
        self.cfg = cfg
        self.log = logging.getLogger(f"qwen3_tts.{self.role}")
        self.notifier = Notifier()
        self.stop_requested = False
        self.limits = cfg.limits
        self.cpus, self.threads = plan.cpus, plan.threads
        self.ctx = zmq.Context.instance()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum, _frame) -> None:
        if not self.stop_requested:
            self.log.info("signal %d: draining and stopping", signum)
        self.stop_requested = True

    # --- sockets ---------------------------------------------------------------------------------
    def _socket(self, kind: int) -> zmq.Socket:
        s = self.ctx.socket(kind)
        s.setsockopt(zmq.LINGER, 0)
        # hard cap: oversized peers are disconnected by libzmq; smaller violations get an error reply
        s.setsockopt(zmq.MAXMSGSIZE, 4 * self.limits.max_message_bytes)
        return s

    def bind_router(self, endpoint: str) -> zmq.Socket:
        if endpoint.startswith("ipc://"):
            Path(endpoint[len("ipc://"):]).parent.mkdir(parents=True, exist_ok=True)
        s = self._socket(zmq.ROUTER)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished peer raises instead of dropping
        s.bind(endpoint)
        return s

    def connect_dealer(self, endpoint: str) -> zmq.Socket:
        s = self._socket(zmq.DEALER)
        s.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a peer that is not connected: fail fast instead
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        s.connect(endpoint)
        return s

    def reply(self, sock: zmq.Socket, ident: bytes, frames: list) -> bool:
        """Send to a ROUTER peer; False when the peer is gone."""
        try:
            sock.send_multipart([ident, *frames], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as e:
            if e.errno in (zmq.EHOSTUNREACH, zmq.EAGAIN):
                return False
            raise

    def recv_request(self, sock: zmq.Socket) -> tuple[bytes, protocol.Message | None]:
        """Receive one ROUTER message; malformed input is answered here and yields (ident, None)."""
        frames = sock.recv_multipart(copy=True)
        ident, body = frames[0], frames[1:]
        try:
            return ident, protocol.decode(body, self.limits.max_message_bytes)
        except protocol.ProtocolError as e:
            self.log.warning("bad message: %s", e)
            self.reply(sock, ident, protocol.error(None, e.code, str(e)))
            return ident, None

    # --- life cycle ------------------------------------------------------------------------------
    def load(self) -> None: ...

    def warmup(self) -> None: ...

    def status_line(self) -> str:
        return (f"role={self.role} model={self.cfg.model_dir} threads={self.threads} "
                f"cpus={format_cpu_list(self.cpus)}")

    def serve_once(self, timeout_ms: int) -> None: ...

    def drained(self) -> bool:
        return True

    def run(self) -> int:
        t0 = time.perf_counter()
        self.load()
        self.warmup()
        self.log.info("ready in %.2f s: %s", time.perf_counter() - t0, self.status_line())
        self.notifier.ready()
        self.notifier.status(self.status_line())
        announced = False
        while not (self.stop_requested and self.drained()):
            if self.stop_requested and not announced:
                self.notifier.stopping()
                announced = True
            self.serve_once(POLL_MS)
            self.notifier.watchdog()  # from the loop itself: a hung loop misses it
        if not announced:
            self.notifier.stopping()
        self.log.info("stopped")
        return 0


class WorkerService(Service):
    """A daemon that answers requests on one ROUTER socket (`self.sock`): ping is answered here, other
    types go to `handle_<type>(ident, msg)`; unknown types get a `bad_request` error."""

    sock: zmq.Socket

    def pong(self) -> dict:
        return {}

    def serve_once(self, timeout_ms: int) -> None:
        if not self.sock.poll(timeout_ms, zmq.POLLIN):
            return
        ident, msg = self.recv_request(self.sock)
        if msg is None:
            return
        if msg.type == "ping":
            self.reply(self.sock, ident, protocol.encode("pong", role=self.role, ready=True, **self.pong()))
            return
        handler = getattr(self, f"handle_{msg.type}", None) if msg.type.isidentifier() else None
        if handler is None:
            self.reply(self.sock, ident, protocol.error(msg.id, "bad_request", f"unknown message type {msg.type!r}"))
            return
        handler(ident, msg)
