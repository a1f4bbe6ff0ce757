"""daemons.notify against a real NOTIFY_SOCKET: an AF_UNIX datagram socket bound by the test, like systemd's."""
from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemons.notify import Notifier, watchdog_interval_s

ROOT = Path(__file__).resolve().parents[1]


class NotifySocket:
    """The receiving end systemd would own; records (time, sender pid, text) per datagram."""

    def __init__(self, addr: str):
        self.addr = addr
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)   # systemd checks the sender pid
        self.sock.bind("\0" + addr[1:] if addr.startswith("@") else addr)
        self.got: list[tuple[float, int, str]] = []

    def recv(self, timeout: float) -> tuple[float, int, str] | None:
        self.sock.settimeout(timeout)
        try:
            data, anc, _flags, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("iII")))
        except socket.timeout:
            return None
        pid = -1
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("iII", payload[:12])[0]
        item = (time.monotonic(), pid, data.decode())
        self.got.append(item)
        return item

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.recv(left)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    s = NotifySocket(str(tmp_path / "notify.sock"))
    yield s
    s.close()


CHILD = r"""
import signal, sys, time
sys.path.insert(0, sys.argv[1])
from daemons.notify import Notifier

stop = False
def on_term(signum, frame):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
n = Notifier()
assert n.enabled and n.watchdog_interval_s() == 0.2, (n.enabled, n.watchdog_interval_s())
time.sleep(0.05)                          # "load and warm up"
n.ready()
n.status("role=talker model=/models/x threads=4\ncpus=4-7")
print("serving", flush=True)
loops = 0
while not stop:                           # the serving loop: many iterations, rate-limited pings
    n.watchdog()
    loops += 1
    time.sleep(0.002)
n.stopping()
print(loops, flush=True)
"""


def test_datagrams_in_order_from_the_main_process(notify_socket):
    """READY=1, STATUS=..., WATCHDOG=1 (rate-limited to half of WATCHDOG_USEC), STOPPING=1 on SIGTERM, all
    sent by the main pid (NotifyAccess=main) that systemd named in WATCHDOG_PID."""
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.addr, "WATCHDOG_USEC": "200000"}
    # like systemd: WATCHDOG_PID is the service's main pid ($$ survives the exec)
    p = subprocess.Popen(["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$0" -c "$1" "$2"', sys.executable, CHILD,
                          str(ROOT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = notify_socket.recv(15)
        assert first is not None, p.stderr.read() if p.poll() is not None else "no READY"
        assert p.stdout.readline().strip() == "serving"
        notify_socket.drain(0.55)
        p.send_signal(signal.SIGTERM)
        while not notify_socket.got or notify_socket.got[-1][2] != "STOPPING=1":
            assert notify_socket.recv(10) is not None, "no STOPPING=1"
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    loops = int(out.split()[-1])

    texts = [t for _, _, t in notify_socket.got]
    assert {pid for _, pid, _ in notify_socket.got} == {p.pid}
    assert texts[0] == "READY=1"
    assert texts[1] == "STATUS=role=talker model=/models/x threads=4 cpus=4-7"   # one line
    assert texts[-1] == "STOPPING=1"
    middle = texts[2:-1]
    assert middle and set(middle) == {"WATCHDOG=1"}
    # ~0.6 s of serving at one ping per 0.1 s, out of far more loop iterations
    assert 3 <= len(middle) <= 9 and loops > 5 * len(middle), (len(middle), loops)
    times = [t for t, _, text in notify_socket.got if text == "WATCHDOG=1"]
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.06


def test_abstract_notify_socket(tmp_path):
    addr = f"@qwen3-tts-test-{os.getpid()}-{time.monotonic_ns()}"
    s = NotifySocket(addr)
    try:
        n = Notifier(env={"NOTIFY_SOCKET": addr})
        assert n.enabled and n.watchdog_interval_s() is None
        assert n.ready() and n.stopping()
        assert [s.recv(5)[2], s.recv(5)[2]] == ["READY=1", "STOPPING=1"]
    finally:
        s.close()


def test_disabled_without_notify_socket():
    n = Notifier(env={"WATCHDOG_USEC": "30000000"})
    assert not n.enabled
    assert n.watchdog_interval_s() is None and not n.watchdog_due()
    assert (n.ready(), n.status("x"), n.watchdog(), n.stopping(), n.extend_timeout(10)) == (False,) * 5


def test_unreachable_socket_disables_quietly(tmp_path, caplog):
    n = Notifier(env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock")})
    assert not n.enabled and n.ready() is False
    assert "notifications disabled" in caplog.text
    assert not Notifier(env={"NOTIFY_SOCKET": "relative.sock"}).enabled


def test_receiver_gone_does_not_raise(notify_socket, caplog):
    n = Notifier(env={"NOTIFY_SOCKET": notify_socket.addr})
    assert n.ready()
    notify_socket.close()
    assert n.status("still alive") is False and n.stopping() is False   # logged once, never raised
    assert caplog.text.count("sd_notify") == 1


def test_watchdog_interval_from_environment():
    me = os.getpid()
    assert watchdog_interval_s({}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me)}) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(me + 1)}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}) is None


def test_watchdog_rate_limit_with_a_clock(notify_socket):
    now = [100.0]
    n = Notifier(env={"NOTIFY_SOCKET": notify_socket.addr, "WATCHDOG_USEC": "10000000"}, clock=lambda: now[0])
    assert n.watchdog_interval_s() == 10.0
    assert n.watchdog_due() and n.watchdog()            # the first one goes out at once
    assert not n.watchdog_due() and not n.watchdog()
    now[0] += 4.9
    assert not n.watchdog()
    now[0] += 0.1                                       # half the interval since the last one
    assert n.watchdog_due() and n.watchdog()
    now[0] += 5.0
    assert n.watchdog()
    assert n.extend_timeout(1.5)
    got = [notify_socket.recv(5)[2] for _ in range(4)]
    assert got == ["WATCHDOG=1"] * 3 + ["EXTEND_TIMEOUT_USEC=1500000"]
    assert notify_socket.recv(0.05) is None


def test_watchdog_not_ours(notify_socket):
    n = Notifier(env={"NOTIFY_SOCKET": notify_socket.addr, "WATCHDOG_USEC": "1000000",
                      "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n.enabled and n.watchdog_interval_s() is None and not n.watchdog()
    assert notify_socket.recv(0.05) is None


def test_a_listener_that_never_reads_cannot_block_the_loop(tmp_path):
    """A datagram socket queues only ~10 messages; a daemon must keep serving when nobody reads them."""
    import socket as so

    path = tmp_path / "deaf.sock"
    deaf = so.socket(so.AF_UNIX, so.SOCK_DGRAM)
    deaf.bind(str(path))
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from daemons.notify import Notifier\n"
            "n = Notifier(); n.ready()\n"
            "t = time.monotonic()\n"
            "for i in range(500): n.status(f'loop {i}')\n"
            "print(round(time.monotonic() - t, 3))\n")
    try:
        r = subprocess.run([sys.executable, "-c", code, str(ROOT)], env={**os.environ, "NOTIFY_SOCKET": str(path)},
                           capture_output=True, text=True, timeout=20)
        assert r.returncode == 0 and float(r.stdout) < 5, (r.stdout, r.stderr)
        assert "sd_notify 'STATUS' failed" in r.stderr  # dropped, and said so once
    finally:
        deaf.close()
