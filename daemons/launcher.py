"""Start and stop the three daemons without systemd (launch.sh, tests), with systemd's readiness protocol:
each daemon gets its own NOTIFY_SOCKET and counts as started when it sends READY=1.

    python -m daemons.launcher start [--roles talker,predictor,vocoder] [--timeout 300]
    python -m daemons.launcher stop [--roles ...]
    python -m daemons.launcher status
pid files and logs live in the runtime directory of the configuration (daemons.config: QWEN3_TTS_RUNTIME_DIR,
`runtime_dir`, else $XDG_RUNTIME_DIR/qwen3-tts or /tmp/qwen3-tts-UID), which the daemons are told explicitly.

File safety (another local user must not be able to redirect or abuse anything here):
- the directory is created 0700; an existing one must be a real directory owned by this user and not
  writable by group/others (`daemons.config.private_dir_problem`), else a one-line error (`UnsafeRuntimeDir`);
- a pid is signalled only while its command line is our daemon of that role (`-m daemons.main ROLE` or
  `qwen3-tts-daemon ROLE`); a pid file naming anything else (stale after a crash, reused pid) is removed;
- pid files and logs are opened with O_NOFOLLOW, the notify socket path is unlinked (never followed)
  before bind."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import click
import psutil

from .config import private_dir_problem

ROLES = ("predictor", "vocoder", "talker")
ALL_ROLES = (*ROLES, "gateway")   # the HTTP gateway last, after the talker (`launch.sh --daemon` starts it too)
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeRuntimeDir(RuntimeError):
    """The runtime directory is not private to this user (the message says why, in one line)."""


def ensure_private_dir(path: Path, create: bool = True) -> None:
    """Create `path` 0700 (parents with the default mode) unless it exists, then check it is ours and
    private; raises UnsafeRuntimeDir."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    problem = private_dir_problem(path)
    if problem and (create or os.path.lexists(path)):
        raise UnsafeRuntimeDir(f"unsafe runtime directory: {problem}; remove it or set QWEN3_TTS_RUNTIME_DIR "
                               "to a private directory")


def is_daemon_cmdline(cmdline: list[str], role: str) -> bool:
    """`python -m daemons.main ROLE ...` or `.../qwen3-tts-daemon ROLE ...`."""
    for i, a in enumerate(cmdline):
        if a == "-m" and cmdline[i + 1:i + 3] == ["daemons.main", role]:
            return True
        if os.path.basename(a) == "qwen3-tts-daemon" and cmdline[i + 1:i + 2] == [role]:
            return True
    return False


def _wait_gone(proc: psutil.Process, timeout_s: float) -> bool:
    """Wait until `proc` has exited (a zombie counts: its parent, not us, reaps it); False on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def daemon_process(pid: int, role: str) -> psutil.Process | None:
    """The live process `pid` when it is our daemon of `role`, else None."""
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE or not is_daemon_cmdline(p.cmdline(), role):
            return None
        return p
    except (psutil.Error, OSError):
        return None


class Launcher:
    def __init__(self, runtime_dir: Path, env: dict | None = None, python: str = sys.executable,
                 watchdog_usec: int | None = None, create: bool = True):
        """`watchdog_usec`: ask the daemons for WATCHDOG=1 pings (only useful while this object listens).
        `create`: make the runtime directory when missing (stop/status only look)."""
        self.watchdog_usec = watchdog_usec
        self.dir = Path(runtime_dir)
        ensure_private_dir(self.dir, create)
        self.env = dict(os.environ if env is None else env)
        self.python = python
        self.procs: dict[str, subprocess.Popen] = {}
        self.notify: dict[str, socket.socket] = {}
        self.messages: dict[str, list[str]] = {}

    def pidfile(self, role: str) -> Path:
        return self.dir / f"{role}.pid"

    def _read_pidfile(self, role: str) -> int | None:
        """The pid in ROLE.pid; a pid file that is unreadable, a symlink or garbage is removed."""
        path = self.pidfile(role)
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        except FileNotFoundError:
            return None
        except OSError:  # ELOOP: a symlink planted in place of the pid file
            path.unlink(missing_ok=True)
            return None
        try:
            with os.fdopen(fd, "rb") as f:
                pid = int(f.read(32).decode("ascii").strip())
            if pid > 0:
                return pid
        except (OSError, ValueError, UnicodeDecodeError):
            pass
        path.unlink(missing_ok=True)
        return None

    def _write_pidfile(self, role: str, pid: int) -> None:
        path = self.pidfile(role)
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"{pid}\n")

    def running_process(self, role: str) -> psutil.Process | None:
        """Our running daemon of `role` from its pid file; a stale pid file (no such process, or a process
        that is not our daemon of that role) is removed and None returned."""
        pid = self._read_pidfile(role)
        if pid is None:
            return None
        proc = daemon_process(pid, role)
        if proc is None:
            self.pidfile(role).unlink(missing_ok=True)
        return proc

    def running_pid(self, role: str) -> int | None:
        proc = self.running_process(role)
        return None if proc is None else proc.pid

    def start(self, role: str) -> None:
        path = self.dir / f"notify-{role}.sock"
        path.unlink(missing_ok=True)  # unlink removes a symlink itself; bind() never follows one either
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(str(path))
        self.notify[role], self.messages[role] = s, []
        env = {**self.env, "NOTIFY_SOCKET": str(path)}
        env.pop("WATCHDOG_USEC", None)
        if self.watchdog_usec:
            env["WATCHDOG_USEC"] = str(self.watchdog_usec)
        log = os.open(self.dir / f"{role}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NOFOLLOW, 0o600)
        try:
            p = subprocess.Popen([self.python, "-m", "daemons.main", role], env=env, stdout=log, stderr=log,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(log)
        self.procs[role] = p
        self._write_pidfile(role, p.pid)

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
        if p is None:
            # Only through its pid file: signal the process only while it is our daemon of this role.
            # psutil's send_signal/kill re-check the process identity (pid + start time) first.
            proc = self.running_process(role)
            if proc is None:
                return None
            try:
                proc.send_signal(sig)
                if not _wait_gone(proc, timeout_s):
                    proc.kill()
                    _wait_gone(proc, 10.0)
            except psutil.NoSuchProcess:
                pass
            self.pidfile(role).unlink(missing_ok=True)
            return None
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            rc = p.wait(timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            rc = p.wait()
        self.pidfile(role).unlink(missing_ok=True)
        return rc

    def close(self) -> None:
        for s in self.notify.values():
            s.close()


def _runtime_dir() -> Path:
    from .config import ConfigError, load_config

    try:
        return load_config().runtime_dir
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


def _launcher(runtime_dir: Path | None = None, **kw) -> Launcher:
    try:
        return Launcher(runtime_dir or _runtime_dir(), **kw)
    except UnsafeRuntimeDir as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


@click.group()
def main():
    pass


@main.command()
@click.option("--roles", default=",".join(ROLES), show_default=True)
@click.option("--timeout", type=float, default=300.0, show_default=True)
def start(roles, timeout):
    """Start the roles that are not running; print the ones started (for `stop --roles`)."""
    # The daemons are told the directory explicitly (the same rule would give the same one anyway).
    rd = _runtime_dir()
    la = _launcher(rd, env={**os.environ, "QWEN3_TTS_RUNTIME_DIR": str(rd)})
    started = [r for r in roles.split(",") if r and la.running_pid(r) is None]
    try:
        for r in started:
            la.start(r)
        for r in started:
            la.wait_ready(r, timeout)
    except (RuntimeError, OSError) as e:  # OSError: e.g. ELOOP, a symlink planted in place of a log
        for r in started:
            la.stop(r)
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    click.echo(",".join(started))


@main.command()
@click.option("--roles", default=",".join(ALL_ROLES), show_default=True)
def stop(roles):
    la = _launcher(create=False)
    for r in reversed([r for r in roles.split(",") if r]):
        la.stop(r)


@main.command()
def status():
    la = _launcher(create=False)
    down = 0
    for r in ALL_ROLES:
        pid = la.running_pid(r)
        click.echo(f"{r}: {'running, pid ' + str(pid) if pid else 'stopped'}")
        down += pid is None and r in ROLES  # the gateway is optional
    sys.exit(1 if down else 0)


if __name__ == "__main__":
    main()
