"""The systemd units as rendered by scripts/install-systemd.sh, checked by systemd's own tools.

`systemd-analyze verify` (no running systemd needed) loads the units the way PID 1 would, including
the instances the target pulls in and their drop-ins from the same directory, and prints a warning for
anything it does not like (unknown keys, bad values, missing ExecStart binaries) — often with exit
status 0, so any output at all fails the test. It does not resolve User=/Group= (the user need not
exist), but it does require ExecStart's binary to exist and be executable on this machine: the units are
rendered with a prefix whose .venv/bin/qwen3-tts-daemon exists — the repository itself once the entry
point is installed there, else a temporary prefix holding a stand-in script.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install-systemd.sh"
ENTRY = Path(".venv") / "bin" / "qwen3-tts-daemon"
ROLES = ("talker", "predictor", "vocoder", "gateway")

needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


def install(*args: str) -> subprocess.CompletedProcess:
    return run(["bash", str(INSTALL), *args])


@pytest.fixture
def prefix(tmp_path) -> Path:
    if os.access(ROOT / ENTRY, os.X_OK):
        return ROOT
    p = tmp_path / "prefix"
    exe = p / ENTRY
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n# stand-in for the qwen3-tts-daemon entry point (tests only)\nexit 0\n")
    exe.chmod(0o755)
    return p


@pytest.fixture
def units(tmp_path, prefix) -> Path:
    d = tmp_path / "units"
    r = install("--dry-run", "--unit-dir", str(d), "--prefix", str(prefix), "--user", "qwen3-tts")
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    return d


def verify(unit_dir: Path, *names: str) -> subprocess.CompletedProcess:
    return run(["systemd-analyze", "verify", *[str(unit_dir / n) for n in names]], cwd=unit_dir)


def directives(path: Path) -> dict[str, list[str]]:
    """section.Key -> values, in order (systemd allows repeated keys)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        k, _, v = line.partition("=")
        out.setdefault(f"{section}.{k.strip()}", []).append(v.strip())
    return out


def test_rendered_files(units, prefix):
    files = sorted(str(p.relative_to(units)) for p in units.rglob("*") if p.is_file())
    assert files == ["qwen3-tts.target", "qwen3-tts@.service", "qwen3-tts@gateway.service.d/10-voices.conf",
                     "qwen3-tts@talker.service.d/10-order.conf", "qwen3-tts@vocoder.service.d/10-npu.conf"]
    for p in units.rglob("*"):
        if p.is_file():
            assert "/opt/qwen3-tts" not in p.read_text() or prefix == Path("/opt/qwen3-tts"), p


@needs_analyze
def test_systemd_analyze_verify_is_silent(units):
    names = ["qwen3-tts@.service", "qwen3-tts.target", *[f"qwen3-tts@{r}.service" for r in ROLES]]
    r = verify(units, *names)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == "", (r.returncode, r.stdout, r.stderr)


@needs_analyze
def test_verify_would_catch_a_mistake(units):
    """The harness is not vacuous: a typo, a bad value, or a missing binary all produce output."""
    svc = units / "qwen3-tts@.service"
    good = svc.read_text()
    svc.write_text(good.replace("Restart=on-failure", "Restart=sometimes\nWatchdogSecs=30"))
    r = verify(units, "qwen3-tts@talker.service")
    assert "sometimes" in r.stderr and "WatchdogSecs" in r.stderr
    svc.write_text(re.sub(r"^ExecStart=\S+", "ExecStart=/nonexistent/qwen3-tts-daemon", good, flags=re.M))
    # ExecStart is only checked for units named on the command line, not for those a target pulls in
    # (hence the instances are named explicitly in the tests above)
    assert verify(units, "qwen3-tts.target").stderr == ""
    r = verify(units, "qwen3-tts@vocoder.service")
    assert r.returncode != 0 and "is not executable" in r.stderr
    svc.write_text(good)
    (units / "qwen3-tts@vocoder.service.d" / "10-npu.conf").write_text("[Service]\nDevicePolcy=closed\n")
    r = verify(units, "qwen3-tts.target")                  # drop-ins of the instances are checked too
    assert "DevicePolcy" in r.stderr


def test_unit_contents(units, prefix):
    s = directives(units / "qwen3-tts@.service")
    one = {k: v[-1] for k, v in s.items()}
    expected = {
        "Unit.PartOf": "qwen3-tts.target",
        "Service.Type": "notify",
        "Service.NotifyAccess": "main",
        "Service.WatchdogSec": "30",
        "Service.TimeoutStartSec": "300",
        "Service.Restart": "on-failure",
        "Service.RestartSec": "2",
        "Service.RuntimeDirectory": "qwen3-tts",
        "Service.RuntimeDirectoryPreserve": "yes",
        "Service.User": "qwen3-tts",
        "Service.Group": "qwen3-tts",
        "Service.EnvironmentFile": "-/etc/qwen3-tts/env",
        "Service.WorkingDirectory": str(prefix),
        "Service.ExecStart": f"{prefix / ENTRY} %i",
        "Service.KillSignal": "SIGTERM",
        "Service.TimeoutStopSec": "30",
        "Service.MemoryMax": "2G",
        "Service.TasksMax": "64",
        "Service.NoNewPrivileges": "yes",
        "Service.ProtectSystem": "strict",
        "Service.ProtectHome": "yes",
        "Service.PrivateTmp": "yes",
        "Service.PrivateDevices": "yes",
        "Service.RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "Service.LockPersonality": "yes",
        "Service.CapabilityBoundingSet": "",
        "Service.SystemCallArchitectures": "native",
        "Install.WantedBy": "qwen3-tts.target",
    }
    assert {k: one.get(k) for k in expected} == expected
    assert "Service.MemoryDenyWriteExecute" not in s
    assert "QWEN3_TTS_CONFIG=/etc/qwen3-tts/config.toml" in s["Service.Environment"]

    t = directives(units / "qwen3-tts.target")
    assert t["Unit.Wants"] == ["qwen3-tts@predictor.service qwen3-tts@vocoder.service qwen3-tts@talker.service "
                               "qwen3-tts@gateway.service"]
    assert t["Install.WantedBy"] == ["multi-user.target"]
    order = directives(units / "qwen3-tts@talker.service.d" / "10-order.conf")
    assert order["Unit.After"] == ["qwen3-tts@predictor.service qwen3-tts@vocoder.service"]
    npu = directives(units / "qwen3-tts@vocoder.service.d" / "10-npu.conf")
    assert npu["Service.PrivateDevices"] == ["no"] and npu["Service.DevicePolicy"] == ["closed"]
    # uploads: the gateway's voices_dir is writable under ProtectSystem=strict, and only the gateway's
    gw = directives(units / "qwen3-tts@gateway.service.d" / "10-voices.conf")
    assert gw["Service.StateDirectory"] == ["qwen3-tts qwen3-tts/voices"] and gw["Unit.After"] == [
        "qwen3-tts@talker.service"]
    assert "Service.StateDirectory" not in s and "Service.ReadWritePaths" not in s


def test_render_user_and_prefix_substitution(tmp_path):
    d = tmp_path / "u"
    r = install("--dry-run", "--unit-dir", str(d), "--prefix", "/srv/tts&co/", "--user", "tts")
    assert r.returncode == 0, r.stderr
    s = directives(d / "qwen3-tts@.service")
    assert s["Service.ExecStart"] == ["/srv/tts&co/.venv/bin/qwen3-tts-daemon %i"]
    assert s["Service.WorkingDirectory"] == ["/srv/tts&co"]
    assert (s["Service.User"], s["Service.Group"]) == (["tts"], ["tts"])
    assert s["Service.RuntimeDirectory"] == ["qwen3-tts"]


@pytest.mark.parametrize("args, message", [
    (["--dry-run"], "--dry-run needs --unit-dir"),
    (["--dry-run", "--unit-dir", "/tmp/x", "--prefix", "opt/q"], "must be an absolute path"),
    (["--dry-run", "--unit-dir", "/tmp/x", "--prefix", "/opt/q q"], "must not contain whitespace"),
    (["--dry-run", "--unit-dir", "/tmp/x", "--user", "Root!"], "invalid user name"),
    (["--frobnicate"], "unknown argument"),
])
def test_install_argument_errors(args, message):
    r = install(*args)
    assert r.returncode != 0 and message in r.stderr


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("useradd") is None:
        return False
    return run(["unshare", "--mount", "--propagation", "private", "true"]).returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root and a private mount namespace")
@needs_analyze
def test_real_install_in_a_private_etc(tmp_path, prefix):
    """The full install (not --dry-run) in a mount namespace whose /etc is a throw-away copy: creates the
    system user, /etc/qwen3-tts/{config.toml,env}, the units in /etc/systemd/system; a second run changes
    nothing; systemd-analyze verify finds the units by name; the host's /etc is untouched."""
    user = "q3tts-test"
    assert run(["getent", "passwd", user]).returncode != 0, f"user {user} exists on the host"
    script = f"""
set -e
cp -a /etc {tmp_path}/etc
mount --bind {tmp_path}/etc /etc
bash {INSTALL} --prefix {prefix} --user {user} > {tmp_path}/first.log 2>&1
echo "custom" >> /etc/qwen3-tts/env
bash {INSTALL} --prefix {prefix} --user {user} > {tmp_path}/second.log 2>&1
getent passwd {user} > {tmp_path}/passwd
stat -c '%a %U %G' /etc/qwen3-tts /etc/qwen3-tts/config.toml /etc/qwen3-tts/env > {tmp_path}/modes
cp /etc/qwen3-tts/config.toml /etc/qwen3-tts/env {tmp_path}/
cd /
systemd-analyze verify qwen3-tts.target qwen3-tts@talker.service qwen3-tts@predictor.service \\
    qwen3-tts@vocoder.service > {tmp_path}/verify.out 2> {tmp_path}/verify.err
"""
    r = run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script])
    logs = "".join((tmp_path / f).read_text() for f in ("first.log", "second.log") if (tmp_path / f).exists())
    assert r.returncode == 0, r.stderr + logs
    assert run(["getent", "passwd", user]).returncode != 0, "the install leaked into the host's /etc"

    first, second = (tmp_path / "first.log").read_text(), (tmp_path / "second.log").read_text()
    assert f"created system user {user}" in first and "created /etc/qwen3-tts/config.toml" in first
    assert "systemctl enable --now qwen3-tts.target" in first
    assert f"user {user} exists" in second and "config.toml exists: left unchanged" in second
    assert (tmp_path / "env").read_text().endswith("custom\n")              # never overwritten
    fields = (tmp_path / "passwd").read_text().strip().split(":")
    assert fields[0] == user and fields[5] == "/nonexistent" and fields[6].endswith("nologin")
    assert int(fields[2]) < 1000                                            # a system user
    assert (tmp_path / "modes").read_text().split("\n")[:3] == [f"750 root {user}", f"640 root {user}",
                                                                 f"640 root {user}"]
    assert (tmp_path / "verify.err").read_text() == "" and (tmp_path / "verify.out").read_text() == ""

    from daemons.config import load_config
    cfg = load_config(tmp_path / "config.toml", env={"HOME": str(tmp_path)})
    assert str(cfg.runtime_dir) == "/run/qwen3-tts"
    assert str(cfg.voices_dir) == "/var/lib/qwen3-tts/voices"           # the gateway's StateDirectory=
    assert cfg.endpoints["talker"] == "ipc:///run/qwen3-tts/talker.sock"
