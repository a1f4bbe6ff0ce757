"""Start and stop the three daemons without systemd (launch.sh, tests), with systemd's readiness protocol:
each daemon gets its own NOTIFY_SOCKET and counts as started when it sends READY=1.

    python -m daemons.launcher start [--roles talker,predictor,vocoder] [--timeout 300]
    python -m daemons.launcher stop [--roles ...]
    python -m daemons.launcher status
pid files and logs live in the runtime directory of the configuration."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click

ROLES = ("predictor", "vocoder", "talker")


class Launcher:
    def __init__(self, runtime_dir: Path, env: dict | None = None, python: str = sys.executable,
                 watchdog_usec: int | None = None):
        """`watchdog_usec`: ask the daemons for WATCHDOG=1 pings (only useful while this object listens)."""
        self.watchdog_usec = watchdog_usec
        self.dir = Path(runtime_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ if env is None else env)
        self.python = python
        self.procs: dict[str, subprocess.Popen] = {}
        self.notify: dict[str, socket.socket] = {}
        self.messages: dict[str, list[str]] = {}

    def pidfile(self, role: str) -> Path:
        return self.dir / f"{role}.pid"

    def running_pid(self, role: str) -> int | None:
        try:
            pid = int(self.pidfile(role).read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def start(self, role: str) -> None:
        path = self.dir / f"notify-{role}.sock"
        path.unlink(missing_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(str(path))
        self.notify[role], self.messages[role] = s, []
        env = {**self.env, "NOTIFY_SOCKET": str(path)}
        env.pop("WATCHDOG_USEC", None)
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        log = open(self.dir / f"{role}.log", "ab")
        p = subprocess.Popen([self.python, "-m", "daemons.main", role], env=env, stdout=log, stderr=log,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[role] = p
        self.pidfile(role).write_text(str(p.pid))

    def read_notify(self, role: str, timeout_s: float) -> list[str]:
        """Datagrams received so far (waiting up to timeout_s for at least one new one)."""
        s = self.notify[role]
        s.settimeout(timeout_s)
        try:
            while True:
                data = s.recv(4096).decode("utf-8", "replace")
                self.messages[role].append(data)
                s.settimeout(0.0)
        except (BlockingIOError, socket.timeout):
            pass
        return self.messages[role]

    def wait_ready(self, role: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not any("READY=1" in m for m in self.messages[role]):
            p = self.procs[role]
            if p.poll() is not None:
                raise RuntimeError(f"{role} exited with code {p.returncode} before it was ready; see "
                                   f"{self.dir / (role + '.log')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{role} not ready after {timeout_s:g} s; see {self.dir / (role + '.log')}")
            self.read_notify(role, 0.2)

    def stop(self, role: str, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        p = self.procs.get(role)
        pid = p.pid if p else self.running_pid(role)
        if pid is None:
            return None
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        rc = None
        if p is not None:
            try:
                rc = p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
        else:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
        self.pidfile(role).unlink(missing_ok=True)
        return rc

    def close(self) -> None:
        for s in self.notify.values():
            s.close()


def _runtime_dir() -> Path:
    from .config import load_config

    return load_config().runtime_dir


@click.group()
def main():
    pass


@main.command()
@click.option("--roles", default=",".join(ROLES), show_default=True)
@click.option("--timeout", type=float, default=300.0, show_default=True)
def start(roles, timeout):
    """Start the roles that are not running; print the ones started (for `stop --roles`)."""
    la = Launcher(_runtime_dir())
    started = [r for r in roles.split(",") if r and la.running_pid(r) is None]
    for r in started:
        la.start(r)
    try:
        for r in started:
            la.wait_ready(r, timeout)
    except RuntimeError as e:
        for r in started:
            la.stop(r)
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(",".join(started))


@main.command()
@click.option("--roles", default=",".join(ROLES), show_default=True)
def stop(roles):
    la = Launcher(_runtime_dir())
    for r in reversed([r for r in roles.split(",") if r]):
        la.stop(r)


@main.command()
def status():
    la = Launcher(_runtime_dir())
    down = 0
    for r in ROLES:
        pid = la.running_pid(r)
        click.echo(f"{r}: {'running, pid ' + str(pid) if pid else 'stopped'}")
        down += pid is None
    sys.exit(1 if down else 0)


if __name__ == "__main__":
    main()
