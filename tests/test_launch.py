"""`bash launch.sh --demo "hello"` on a fresh checkout (the tracked files only) writes a WAV; --daemon/--stop."""
from __future__ import annotations

import os
import shutil
import subprocess

import soundfile as sf

from conftest import ROOT


def fresh_checkout(dst):
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
    assert st.returncode == 1 and st.stdout.count("stopped") == 3, st.stdout

    r = subprocess.run(["bash", "launch.sh", "--demo", "--daemon"], cwd=co, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    try:
        st = subprocess.run([str(co / ".venv/bin/python"), "-m", "daemons.launcher", "status"], cwd=co, env=env,
                            capture_output=True, text=True, timeout=60)
        assert st.returncode == 0 and st.stdout.count("running") == 3, st.stdout
        r = subprocess.run(["bash", "launch.sh", "--demo", "again", "-o", "b.wav", "--max-frames", "5"], cwd=co,
                           env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert sf.info(str(co / "b.wav")).frames <= 5 * 1920
    finally:
        subprocess.run(["bash", "launch.sh", "--stop"], cwd=co, env=env, timeout=120)
    st = subprocess.run([str(co / ".venv/bin/python"), "-m", "daemons.launcher", "status"], cwd=co, env=env,
                        capture_output=True, text=True, timeout=60)
    assert st.stdout.count("stopped") == 3, st.stdout
