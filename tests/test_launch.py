"""`bash launch.sh --demo "hello"` on a fresh checkout (the tracked files only) writes a WAV; --daemon/--stop.
The launcher's file safety (issue 11): a private runtime directory, pid files checked against the process's
command line, no symlink followed."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time

import pytest
import soundfile as sf

from conftest import ROOT


def _venv_set_up_for(pyproject) -> bool:
    """scripts/setup_env.sh's stamp covers this pyproject.toml at level >= 1 (convert)."""
    h = hashlib.sha256(pyproject.read_bytes()).hexdigest()[:16]
    stamp = ROOT / ".venv" / ".qwen3-tts-setup"
    lines = stamp.read_text().split("\n") if stamp.is_file() else []
    return any(ln.split()[:1] == [h] and int(ln.split()[1]) >= 1 for ln in lines if len(ln.split()) == 2)


def fresh_checkout(dst):
    # launch.sh in the copy runs scripts/setup_env.sh on the shared .venv: were the stamp stale, it would
    # `pip install -e` the copy, and the shared environment would import the (soon deleted) copy.
    assert _venv_set_up_for(ROOT / "pyproject.toml"), \
        ".venv is not set up for this pyproject.toml: run bash scripts/setup_env.sh dev first"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dst / f)
    os.symlink(ROOT / ".venv", dst / ".venv")  # the environment the test command already set up
    return dst


def test_launch_demo_writes_wav(tmp_path):
    co = fresh_checkout(tmp_path / "co")
    env = {**os.environ, "QWEN3_TTS_RUNTIME_DIR": str(tmp_path / "run")}
    env.pop("QWEN3_TTS_CONFIG", None)
    r = subprocess.run(["bash", "launch.sh", "--demo", "hello"], cwd=co, env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    wav, sr = sf.read(co / "output.wav")
    assert sr == 24000 and len(wav) > 0 and len(wav) % 1920 == 0
    assert "noise, not speech" in r.stderr
    # single shot: the daemons it started are stopped again
    st = subprocess.run([str(co / ".venv/bin/python"), "-m", "daemons.launcher", "status"], cwd=co, env=env,
                        capture_output=True, text=True, timeout=60)
    assert st.returncode == 1 and st.stdout.count("stopped") == 4, st.stdout

    r = subprocess.run(["bash", "launch.sh", "--demo", "--daemon"], cwd=co, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    try:
        st = subprocess.run([str(co / ".venv/bin/python"), "-m", "daemons.launcher", "status"], cwd=co, env=env,
                            capture_output=True, text=True, timeout=60)
        assert st.returncode == 0 and st.stdout.count("running") == 4, st.stdout
        r = subprocess.run(["bash", "launch.sh", "--demo", "again", "-o", "b.wav", "--max-frames", "5"], cwd=co,
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert sf.info(str(co / "b.wav")).frames <= 5 * 1920
    finally:
        subprocess.run(["bash", "launch.sh", "--stop"], cwd=co, env=env, timeout=120)
    st = subprocess.run([str(co / ".venv/bin/python"), "-m", "daemons.launcher", "status"], cwd=co, env=env,
                        capture_output=True, text=True, timeout=60)
    assert st.stdout.count("stopped") == 4, st.stdout


# ---------------------------------------------------------------------------------------------- file safety

def launcher(run, *args, timeout=60):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TTS_")}
    env.update(QWEN3_TTS_RUNTIME_DIR=str(run), PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "daemons.launcher", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def procs():
    """Processes a test starts; killed at the end whatever happened."""
    made = []
    yield made
    for p in made:
        if p.poll() is None:
            p.kill()
        p.wait()


def test_stop_never_signals_a_process_that_is_not_our_daemon(tmp_path, procs):
    """A pid file naming an unrelated process (planted, or stale after a crash and the pid reused) is
    removed without a signal; a process whose command line is our daemon of that role is stopped."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    sleeper = subprocess.Popen(["sleep", "100"])
    procs.append(sleeper)
    (run / "talker.pid").write_text(f"{sleeper.pid}\n")
    (run / "vocoder.pid").write_text("not a pid\n")
    # a real daemon command line, but of another role than the pid file's
    fake = tmp_path / "bin" / "qwen3-tts-daemon"
    fake.parent.mkdir()
    fake.write_text("import signal, time\nsignal.signal(signal.SIGTERM, lambda *a: exit(0))\ntime.sleep(100)\n")
    predictor = subprocess.Popen([sys.executable, str(fake), "predictor"])
    procs.append(predictor)
    (run / "vocoder.pid").write_text(f"{predictor.pid}\n")
    st = launcher(run, "status")
    assert st.returncode == 1 and st.stdout.count("stopped") == 4, st.stdout + st.stderr
    assert not (run / "talker.pid").exists() and not (run / "vocoder.pid").exists()   # stale: removed
    (run / "talker.pid").write_text(f"{sleeper.pid}\n")
    (run / "vocoder.pid").write_text(f"{predictor.pid}\n")
    r = subprocess.run(["bash", "launch.sh", "--stop"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**{k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TTS_")},
                            "QWEN3_TTS_RUNTIME_DIR": str(run)})
    assert r.returncode == 0, r.stderr
    time.sleep(0.2)
    assert sleeper.poll() is None and predictor.poll() is None        # neither was signalled
    assert not (run / "talker.pid").exists() and not (run / "vocoder.pid").exists()
    # positive control: the same fake daemon under its own role's pid file is stopped (SIGTERM)
    (run / "predictor.pid").write_text(f"{predictor.pid}\n")
    assert "predictor: running, pid" in launcher(run, "status").stdout
    r = launcher(run, "stop", "--roles", "predictor")
    assert r.returncode == 0, r.stderr
    assert predictor.wait(10) == 0 and sleeper.poll() is None
    assert not (run / "predictor.pid").exists()


def test_runtime_dir_must_be_private(tmp_path):
    """A missing directory is created 0700; an existing one that is group/other-writable, owned by
    another user or a symlink is refused with a one-line error, before anything is started."""
    from daemons.launcher import Launcher, UnsafeRuntimeDir

    fresh = tmp_path / "a" / "fresh"
    Launcher(fresh).close()
    assert (fresh.stat().st_mode & 0o777, fresh.stat().st_uid) == (0o700, os.geteuid())

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o770)
    for cmd in (["start", "--timeout", "5"], ["stop"], ["status"]):
        r = launcher(shared, *cmd)
        assert r.returncode == 1 and r.stdout == "", (cmd, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and "unsafe runtime directory" in r.stderr, r.stderr
        assert "writable by its group or by others (mode 0770" in r.stderr
    assert sorted(os.listdir(shared)) == []                           # nothing written, nothing started
    shared.chmod(0o1777)                                              # like /tmp itself
    assert "writable by its group or by others" in launcher(shared, "start").stderr

    link = tmp_path / "link"
    link.symlink_to(fresh)
    with pytest.raises(UnsafeRuntimeDir, match="symbolic link"):
        Launcher(link)

    if os.geteuid() != 0:
        pytest.skip("a directory owned by another user needs root to make")
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, 65534, 65534)
    r = launcher(foreign, "start", "--timeout", "5")
    assert r.returncode == 1 and r.stderr.count("\n") == 1
    assert f"{foreign} is owned by uid 65534, not by uid 0" in r.stderr
    assert os.listdir(foreign) == []
    with pytest.raises(UnsafeRuntimeDir, match="owned by uid 65534"):
        Launcher(foreign)


def test_no_symlink_is_followed_in_the_runtime_dir(tmp_path):
    """Symlinks planted as the notify socket, the log or a pid file: never followed (the target keeps its
    content), the start fails with one line instead of writing through the log symlink."""
    from daemons.launcher import Launcher

    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    for name in ("notify-talker.sock", "talker.log", "predictor.pid"):
        (run / name).symlink_to(victim)
    la = Launcher(run, env={k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TTS_")})
    assert la.running_pid("predictor") is None                       # pid file symlink: removed, not read
    assert not os.path.lexists(run / "predictor.pid")
    with pytest.raises(OSError) as e:
        la.start("talker")
    la.close()
    assert e.value.errno == 40                                        # ELOOP: O_NOFOLLOW on the log
    assert la.procs == {} and not os.path.lexists(run / "talker.pid")
    assert (run / "notify-talker.sock").is_socket()                   # the symlink was replaced, not followed
    assert victim.read_text() == "precious\n"

    (run / "talker.log").unlink()
    (run / "vocoder.log").symlink_to(victim)
    r = launcher(run, "start", "--roles", "vocoder", "--timeout", "5")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Too many levels of symbolic links" in r.stderr
    assert victim.read_text() == "precious\n" and not (run / "vocoder.pid").exists()
    # the pid file written by a real start is a regular file, 0600
    la = Launcher(run)
    la._write_pidfile("talker", 12345)
    st = os.lstat(run / "talker.pid")
    assert st.st_mode & 0o777 == 0o600 and (run / "talker.pid").read_text() == "12345\n"
