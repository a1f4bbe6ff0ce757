"""What every daemon shares: configuration, CPU pinning, logging, sd_notify, signals, the poll loop."""
from __future__ import annotations

import logging
import os
import signal
import time
import traceback
from pathlib import Path

import zmq

from . import protocol
from .config import Config, ConfigError, private_dir_problem
from .cpu import CpuPlan, format_cpu_list
from .curve import Curve
from .notify import Notifier

POLL_MS = 200  # upper bound on the loop period when idle (watchdog pings come from this loop)
WORKER_RCVHWM = 64  # messages waiting per connection at the predictor/vocoder (the talker has a few in flight)


def describe(e: BaseException) -> str:
    """One log line for an unexpected exception: its type, message (repr: no forged lines) and where."""
    tb = traceback.extract_tb(e.__traceback__)
    where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno} in {tb[-1].name}" if tb else ""
    return f"{type(e).__name__}: {str(e)[:300]!r}{where}"


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
        self.burst_cpus, self.burst_threads = plan.burst_cpus, plan.burst_threads
        self.ctx = zmq.Context.instance()
        self.curve = Curve(cfg.security, self.ctx, self.log)  # CURVE on tcp:// sockets ([security])
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

    def bind_router(self, endpoint: str, private: bool = False, rcvhwm: int | None = None) -> zmq.Socket:
        """`private`: an ipc:// socket only this user can connect to (mode 0600; the predictor and the
        vocoder, which only the talker, running as the same user, talks to): the clients' group reaches the
        talker, never another request's predictor or vocoder stream. Any other ipc:// socket is never
        reachable by others (umask 0007: owner and group, the clients' group of the systemd units), and
        its directory must be this user's and not writable by group or others (created 0700).
        tcp:// endpoints use CURVE when [security] has the server keys (daemons/curve.py), else they are
        open to whoever reaches the port (a warning says so). `rcvhwm`: messages queued per connection."""
        # a file-system ipc:// socket (ipc://@name is Linux's abstract namespace: no file, no mode)
        path = Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") and endpoint[6:7] != "@" else None
        if path is not None:
            self._check_socket_dir(path.parent)
        s = self._socket(zmq.ROUTER)
        self.curve.server(s, endpoint)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # sending to a vanished peer raises instead of dropping
        if rcvhwm is not None:
            s.setsockopt(zmq.RCVHWM, rcvhwm)
        # libzmq creates the socket file inside bind(), in this thread: born 0600 (private) or <= 0770
        old = os.umask(0o177)
        if not private:
            os.umask(old | 0o007)
        try:
            s.bind(endpoint)
        finally:
            os.umask(old)
        if path is not None and private:
            os.chmod(path, 0o600)
        return s

    @staticmethod
    def _check_socket_dir(d: Path) -> None:
        """Create the ipc:// socket directory 0700 (systemd's RuntimeDirectory= exists already, 0750);
        refuse one that another user could plant sockets or symlinks in."""
        if not d.exists():
            d.parent.mkdir(parents=True, exist_ok=True)
            try:
                d.mkdir(mode=0o700)
            except FileExistsError:
                pass
        problem = private_dir_problem(d)
        if problem is not None:
            raise ConfigError(f"ipc:// socket directory: {problem}")

    def connect_dealer(self, endpoint: str) -> zmq.Socket:
        s = self._socket(zmq.DEALER)
        s.setsockopt(zmq.IMMEDIATE, 1)  # never queue for a peer that is not connected: fail fast instead
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.curve.client(s, endpoint)  # a predictor/vocoder on another board: CURVE client keys
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
            self.log.warning("bad message (id %r): %r", e.rid, str(e)[:300])
            self.reply(sock, ident, protocol.error(e.rid, e.code, str(e)))
            return ident, None

    def internal_error(self, sock: zmq.Socket | None, ident: bytes | None, msg: protocol.Message | None,
                       e: Exception) -> None:
        """An exception that escaped a handler: one log line (traceback at DEBUG), a typed `internal` error
        to the sender when there is one to answer, and the loop goes on."""
        rid = msg.id if msg is not None and isinstance(msg.id, str) else None
        if msg is None:
            self.log.error("serving loop: internal error: %s", describe(e))
        else:
            self.log.error("%r message %r: internal error: %s", msg.type, rid, describe(e))
        self.log.debug("traceback", exc_info=e)
        if sock is None or ident is None:
            return
        try:
            self.reply(sock, ident, protocol.error(rid, "internal", f"internal error: {type(e).__name__}"))
        except Exception as e2:  # the answer itself failed: the peer is gone or the socket is broken
            self.log.error("error reply to %r not sent: %s", rid, describe(e2))

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
            try:
                self.serve_once(POLL_MS)
            except Exception as e:  # never reachable from input by design; if it is, the daemon lives on
                self.internal_error(None, None, None, e)
                time.sleep(0.01)  # a fault that repeats at once must not spin the core or flood the log
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
        try:
            self.dispatch(ident, msg)
        except Exception as e:
            self.internal_error(self.sock, ident, msg, e)

    def dispatch(self, ident: bytes, msg: protocol.Message) -> None:
        if msg.type == "ping":
            self.reply(self.sock, ident, protocol.encode("pong", role=self.role, ready=True, **self.pong()))
            return
        handler = getattr(self, f"handle_{msg.type}", None) if msg.type.isidentifier() else None
        if handler is None:
            self.reply(self.sock, ident, protocol.error(msg.id, "bad_request", f"unknown message type {msg.type!r}"))
            return
        handler(ident, msg)
