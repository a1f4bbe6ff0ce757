"""The README's "Using it" commands, run exactly as written from the repository root, in a clean login
environment (no --endpoint, no QWEN3_TTS_*), as root and as an unprivileged user (nobody), with and without
XDG_RUNTIME_DIR:

    bash launch.sh --daemon --demo             (the README's first line + --demo: the random-weight model)
    .venv/bin/tts-client "Привет, мир" --language russian --streaming -o out.wav
    the same without --streaming
    echo "text from stdin" | .venv/bin/tts-client --output-raw     (the README pipes this into aplay; here
                                                                     the test reads the bytes instead)
    bash launch.sh --stop

Each scenario runs in a private mount and network namespace (unshare), so it shares nothing with other
users of the machine and leaves nothing in the checkout:
- /tmp is a fresh directory (the daemons' /tmp/qwen3-tts-UID cannot meet anyone else's), and the gateway
  that `launch.sh --daemon` also starts gets its own loopback (its default port 8880 cannot collide);
- the repository is an overlay whose lower layer is this checkout, so the README's `-o out.wav` writes into
  the repository root (also for nobody, who owns only the overlay's upper layer) and nothing reaches the
  real tree; the demo model launch.sh builds on first use (models/demo-tiny) lands in the upper layer and
  is reused by the later scenarios (an existing models/demo-tiny in the checkout is used as is);
- for nobody, a directory on the path to the venv's base interpreter that others cannot traverse (e.g.
  /root of a pyenv install) is replaced by one exposing only that interpreter.
The demo model's frame count depends on chance (no --seed in the README), so only what holds by
construction is asserted: exit codes, the files written, audio length == frames * 1920 as the client
reports it, the random-weights note; and after --stop no daemon is left (any process left in the namespace
is killed by the finalizer, whatever failed).
"""
from __future__ import annotations

import hashlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import textwrap
from pathlib import Path

import psutil
import pytest
import soundfile as sf

from conftest import ROOT

README = ROOT / "README.md"
UNPRIVILEGED = "nobody"
HOP = 1920  # samples per frame at 24 kHz


def readme_commands() -> list[str]:
    """The command lines of the first code block in README's "## Using it" (comments stripped)."""
    text = README.read_text()
    section = text.split("\n## Using it\n", 1)[1]
    lines = section.split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("    "))
    block = []
    for ln in lines[start:]:
        if not ln.startswith("    "):
            break
        block.append(re.sub(r"\s{2,}#.*$", "", ln[4:]).rstrip())
    return block


def commands() -> dict[str, str]:
    block = readme_commands()
    start, say, raw, stop = block
    assert start == "bash launch.sh --daemon" and stop == "bash launch.sh --stop", block
    assert say.startswith(".venv/bin/tts-client ") and " --streaming" in say and "-o out.wav" in say, block
    player = " | aplay -f S16_LE -r 24000 -c 1"
    assert raw.startswith('echo "text from stdin" | .venv/bin/tts-client --output-raw') and raw.endswith(player)
    return {"start": start + " --demo", "say_streaming": say, "say": say.replace(" --streaming", ""),
            "raw": raw[:-len(player)], "stop": stop}


def _venv_ready() -> bool:
    h = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    stamp = ROOT / ".venv" / ".qwen3-tts-setup"
    return stamp.is_file() and any(ln.split()[:1] == [h] for ln in stamp.read_text().splitlines())


def _can_namespace() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a private mount namespace, an overlay, an unprivileged user)"
    for tool in ("unshare", "setpriv", "mount", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    return None


pytestmark = pytest.mark.skipif(_can_namespace() is not None, reason=str(_can_namespace()))


def _untraversable_ancestor(path: Path) -> Path | None:
    """The topmost directory on `path` (not / itself) that a user who is neither owner nor in the group
    cannot traverse."""
    p = Path("/")
    for part in path.parts[1:]:
        p = p / part
        if p.is_dir() and not os.stat(p).st_mode & 0o001:
            return p
    return None


def _interpreter_prefix() -> Path:
    cfg = (ROOT / ".venv" / "pyvenv.cfg").read_text()
    home = re.search(r"^home\s*=\s*(.+)$", cfg, re.M).group(1).strip()
    return Path(os.path.realpath(home)).parent


def _ns_processes(ns: str, marker: Path) -> list[psutil.Process]:
    """Live processes in mount namespace `ns` whose mounts include `marker` (this session's overlay upper
    layer: a namespace id can be reused once the namespace is gone, the marker cannot)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.readlink(f"/proc/{p.pid}/ns/mnt") != ns or p.status() == psutil.STATUS_ZOMBIE:
                continue
            with open(f"/proc/{p.pid}/mountinfo") as f:
                if str(marker) in f.read():
                    out.append(p)
        except (OSError, psutil.Error):
            pass
    return out


@pytest.fixture(scope="module")
def layers(tmp_path_factory):
    """The overlay's upper layer, shared by the scenarios (they run one after the other)."""
    if not _venv_ready():
        pytest.fail(".venv is not set up for this pyproject.toml: run bash scripts/setup_env.sh dev first")
    base = tmp_path_factory.mktemp("readme")
    up, work = base / "upper", base / "work"
    up.mkdir()
    work.mkdir()
    os.chown(up, pwd.getpwnam(UNPRIVILEGED).pw_uid, pwd.getpwnam(UNPRIVILEGED).pw_gid)
    return base


@pytest.fixture
def scenario(layers, tmp_path):
    """Runs one scenario's driver in a fresh namespace; kills whatever is left in it at the end."""
    seen = []

    def run(user: str, xdg: bool, cmds: dict[str, str], timeout: float):
        pw = pwd.getpwnam(user)
        slash = tmp_path / "slash-tmp"             # becomes /tmp inside
        slash.mkdir()
        slash.chmod(0o1777)
        results = slash / "results"                # /tmp/results inside
        home = slash / f"home-{user}"              # a clean HOME the user owns
        for d in (results, home):
            d.mkdir()
            os.chown(d, pw.pw_uid, pw.pw_gid)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": f"/tmp/{home.name}", "LANG": "C.UTF-8",
               "USER": user, "LOGNAME": user, "SHELL": "/bin/bash"}
        if xdg:
            x = slash / f"xdg-{user}"
            x.mkdir(mode=0o700)
            os.chown(x, pw.pw_uid, pw.pw_gid)
            env["XDG_RUNTIME_DIR"] = f"/tmp/{x.name}"

        # where the repository appears inside (its own path; under the new /tmp when it lives in /tmp)
        repo_in_tmp = ROOT.is_relative_to("/tmp")
        target = slash / ROOT.relative_to("/tmp") if repo_in_tmp else ROOT
        if repo_in_tmp:
            target.mkdir(parents=True)
            for p in [target, *target.parents]:
                if p == slash:
                    break
                p.chmod(0o755)
        mounts = [f"mount -t overlay overlay -o lowerdir={ROOT},upperdir={layers / 'upper'},"
                  f"workdir={layers / 'work'} {target}"]
        if user != "root":
            prefix = _interpreter_prefix()
            hidden = _untraversable_ancestor(prefix)
            if hidden is not None and not hidden.is_relative_to("/tmp"):
                shadow = tmp_path / "shadow"
                inner = shadow / prefix.relative_to(hidden)
                inner.mkdir(parents=True)
                for p in [inner, *inner.parents]:
                    p.chmod(0o755)
                    if p == shadow:
                        break
                mounts += [f"mount --bind {prefix} {inner}", f"mount --rbind {shadow} {hidden}"]
        mounts.append(f"mount --rbind {slash} /tmp")

        steps = []
        for name, cmd in cmds.items():
            steps.append(f"bash -c {shlex.quote(cmd)} >/tmp/results/{name}.stdout 2>/tmp/results/{name}.stderr; "
                         f"echo $? >/tmp/results/{name}.rc")
            # housekeeping between commands (not a README command): keep each command's out.wav
            steps.append(f"if [ -f out.wav ]; then mv out.wav /tmp/results/{name}.wav; fi")
        runner = slash / "runner.sh"
        runner.write_text(f"cd {shlex.quote(str(ROOT))}\n" + "\n".join(steps) + "\n")
        runner.chmod(0o755)
        priv = [] if user == "root" else ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                                          "--clear-groups"]
        driver = textwrap.dedent("""\
            set -e
            readlink /proc/self/ns/mnt > {ns}
            ip link set lo up
            {mounts}
            cd {root}
            exec {priv} env -i {env} bash /tmp/runner.sh
            """).format(ns=tmp_path / "ns", mounts="\n".join(mounts), root=shlex.quote(str(ROOT)),
                        priv=" ".join(priv), env=" ".join(shlex.quote(f"{k}={v}") for k, v in env.items()))
        seen.append(tmp_path / "ns")
        r = subprocess.run(["unshare", "--mount", "--net", "--propagation", "private", "bash", "-c", driver],
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"namespace driver failed: {r.stderr}"
        out = {}
        for name in cmds:
            out[name] = {"rc": int((results / f"{name}.rc").read_text()),
                         "stdout": (results / f"{name}.stdout").read_bytes(),
                         "stderr": (results / f"{name}.stderr").read_text(errors="replace"),
                         "wav": results / f"{name}.wav"}
        return out, slash, (tmp_path / "ns").read_text().strip()

    run.marker = layers / "upper"
    yield run
    for nsfile in seen:
        if nsfile.exists():
            left = _ns_processes(nsfile.read_text().strip(), run.marker)
            for p in left:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(left, timeout=30)   # the overlay is free again for the next scenario


SCENARIOS = [("root", False), ("root", True), (UNPRIVILEGED, False), (UNPRIVILEGED, True)]


@pytest.mark.parametrize("user, xdg", SCENARIOS, ids=[f"{u}-{'xdg' if x else 'noxdg'}" for u, x in SCENARIOS])
def test_using_it_as_written(scenario, user, xdg):
    cmds = commands()
    pw = pwd.getpwnam(user)
    # the runtime directory the README flow must end up using (daemons.config's rule), as seen inside
    rdir = f"/tmp/xdg-{user}/qwen3-tts" if xdg else f"/tmp/qwen3-tts-{pw.pw_uid}"

    # start, then look at the daemons before anything else runs: a separate namespace run would lose
    # them, so the whole flow runs in one go and the pid files are read from the recorded copies below
    flow = {"start": cmds["start"],
            "pids": f"cat {rdir}/talker.pid {rdir}/predictor.pid {rdir}/vocoder.pid {rdir}/gateway.pid",
                                                                                   # not a README line
            "say_streaming": cmds["say_streaming"], "say": cmds["say"], "raw": cmds["raw"],
            "stop": cmds["stop"],
            "after": f"ls -A {rdir}"}                                                     # not a README line
    out, slash, ns = scenario(user, xdg, flow, timeout=600)

    start = out["start"]
    assert start["rc"] == 0, start["stderr"][-3000:]
    assert f"daemons running (sockets in {rdir})" in start["stdout"].decode(), start["stdout"]
    pids = [int(x) for x in out["pids"]["stdout"].split()]
    assert out["pids"]["rc"] == 0 and len(pids) == 4, out["pids"]                # + the HTTP gateway

    for name in ("say_streaming", "say"):
        r = out[name]
        assert r["rc"] == 0, (name, r["stderr"])
        m = re.search(r"\((\d+) frames, (\d+) segment", r["stderr"])
        assert m, r["stderr"]
        frames = int(m.group(1))
        info = sf.info(str(r["wav"]))
        assert info.samplerate == 24000 and info.channels == 1 and info.frames == frames * HOP > 0, \
            (name, info.frames, frames)
        assert "-> out.wav" in r["stderr"] and "noise, not speech" in r["stderr"]
        assert ("time to first audio" in r["stderr"]) == (name == "say_streaming")

    r = out["raw"]
    assert r["rc"] == 0, r["stderr"]
    m = re.search(r"\((\d+) frames, ", r["stderr"])
    assert m, r["stderr"]
    assert len(r["stdout"]) == int(m.group(1)) * HOP * 2 > 0                    # 16-bit mono PCM
    assert "NOTE: the model has random weights: this audio is noise, not speech." in r["stderr"]
    assert not r["wav"].exists()

    assert out["stop"]["rc"] == 0, out["stop"]["stderr"]
    left = _ns_processes(ns, scenario.marker)       # the flow is over: nothing of it may still run
    assert left == [], [p.cmdline() for p in left]
    for pid in pids:                                  # the daemons that were started are gone
        assert not any(p.pid == pid for p in left)
        try:
            assert os.readlink(f"/proc/{pid}/ns/mnt") != ns or psutil.Process(pid).status() == "zombie", pid
        except (OSError, psutil.NoSuchProcess):
            pass
    # the pid files are gone; the directory stays (logs, sockets), private to the user
    assert not any(n.endswith(".pid") for n in out["after"]["stdout"].decode().split())
    st = os.stat(slash / Path(rdir).relative_to("/tmp"))
    assert (st.st_uid, st.st_mode & 0o777) == (pw.pw_uid, 0o700)
