"""sd_notify(3) for the daemons, through the `sdnotify` package.

    n = Notifier()
    ... load the model, warm up ...
    n.ready()                                   # READY=1: only now does `systemctl start` return
    n.status("role=talker model=... threads=4 cpus=4-7")
    while serving:
        ...one bounded iteration...
        n.watchdog()                            # WATCHDOG=1, at most once per WATCHDOG_USEC/2
    n.stopping()                                # STOPPING=1 on SIGTERM, then drain and exit

Outside systemd (NOTIFY_SOCKET unset) every call is a no-op and `enabled` is False. The watchdog is sent
only when systemd asked for one (WATCHDOG_USEC set, WATCHDOG_PID unset or ours). Send errors are logged
once and never raised: a daemon must not die because the notification socket went away.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Mapping

import sdnotify

log = logging.getLogger("qwen3_tts.notify")


def watchdog_interval_s(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout systemd expects (WATCHDOG_USEC) in seconds, or None when there is none for
    this process (unset, unparsable, zero, or WATCHDOG_PID naming another process)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    wpid = env.get("WATCHDOG_PID")
    if wpid:
        try:
            if int(wpid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        v = int(usec)
    except ValueError:
        return None
    return v / 1e6 if v > 0 else None


class Notifier:
    def __init__(self, env: Mapping[str, str] | None = None, clock: Callable[[], float] = time.monotonic):
        env = os.environ if env is None else env
        self._clock = clock
        self._lock = threading.Lock()
        self._last_watchdog: float | None = None
        self._warned = False
        self._interval = watchdog_interval_s(env)
        self._addr = env.get("NOTIFY_SOCKET") or None
        self._n: sdnotify.SystemdNotifier | None = None
        if self._addr:
            if self._addr[0] not in "/@":
                log.warning("NOTIFY_SOCKET=%r is not a path or an abstract socket: notifications disabled",
                            self._addr)
                self._addr = None
            else:
                # sdnotify reads NOTIFY_SOCKET from os.environ; hand it ours in case `env` was given.
                saved = os.environ.get("NOTIFY_SOCKET")
                os.environ["NOTIFY_SOCKET"] = self._addr
                try:
                    self._n = sdnotify.SystemdNotifier(debug=True)
                    # Never let a slow or vanished listener block the serving loop: a datagram socket's
                    # queue holds ~10 messages (net.unix.max_dgram_qlen) and a blocking send then waits
                    # forever. A full queue now drops the message (logged once) instead.
                    self._n.socket.setblocking(False)
                except OSError as e:
                    log.warning("cannot connect to NOTIFY_SOCKET %s: %s; notifications disabled", self._addr, e)
                    self._addr = None
                finally:
                    if saved is None:
                        os.environ.pop("NOTIFY_SOCKET", None)
                    else:
                        os.environ["NOTIFY_SOCKET"] = saved

    @property
    def enabled(self) -> bool:
        return self._n is not None

    def watchdog_interval_s(self) -> float | None:
        return self._interval if self.enabled else None

    def _send(self, state: str) -> bool:
        if self._n is None:
            return False
        try:
            self._n.notify(state)
            return True
        except OSError as e:
            if not self._warned:
                log.warning("sd_notify %r failed: %s", state.split("=")[0], e)
                self._warned = True
            return False

    def ready(self) -> bool:
        return self._send("READY=1")

    def status(self, text: str) -> bool:
        # one line: a newline would start a new KEY=VALUE assignment in the datagram
        return self._send("STATUS=" + " ".join(str(text).split()))

    def stopping(self) -> bool:
        return self._send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for `seconds` more to finish starting or stopping (EXTEND_TIMEOUT_USEC)."""
        return self._send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1e6)}")

    def watchdog_due(self) -> bool:
        """True when a WATCHDOG=1 should be sent now: a watchdog is expected and half its interval has
        passed since the last one (or none was sent yet)."""
        iv = self.watchdog_interval_s()
        if iv is None:
            return False
        last = self._last_watchdog
        return last is None or self._clock() - last >= iv / 2

    def watchdog(self) -> bool:
        """Send WATCHDOG=1 if due; returns whether it was sent. Call it from the serving loop itself, so
        that a hung loop misses it and systemd restarts the daemon."""
        with self._lock:
            if not self.watchdog_due():
                return False
            self._last_watchdog = self._clock()
        return self._send("WATCHDOG=1")
