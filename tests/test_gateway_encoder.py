"""The gateway's voice-encoder child process (daemons/gateway/encoder_child.py, EncoderProcess in
daemons/gateway/voices.py), with a real gateway process (no talker needed for uploads) on the tiny model:
uploads are encoded in a child, so the gateway's RSS stays where it was; the child inherits the gateway's
CPUs and has a small thread pool; it exits after [gateway] encoder_idle_s; a child killed mid-upload fails
that upload with 503 in OpenAI's envelope, nothing written, and the next upload works in a new child; the
child does not outlive the gateway (SIGTERM or kill -9). Every wait is for a state, with a generous
deadline."""
from __future__ import annotations

import fcntl
import hashlib
import io
import os
import signal
import termios
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from conftest import free_port, start_cluster, stop_cluster

sf = pytest.importorskip("soundfile")

KEY = "test-key"
TRANSCRIPT = "This is the transcript of the reference recording."
# RSS growth of the gateway process over two uploads (encoded in the child). Measured on the tiny model
# (2026-12-03, 2 shared cores): 66.7 -> 67.4 MB, +0.7 MB (multipart parsing, the reply's Voice unpickled,
# Python's allocator keeping an arena or two); with the encoders in the gateway an upload added ~50 MB
# (docs/PERFORMANCE.md). The bound sits just above the measurement.
RSS_MARGIN_MB = 2.0


def wav_bytes(seconds: float = 3.0, sr: int = 24000, seed: int = 0) -> bytes:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    b = io.BytesIO()
    sf.write(b, x, sr, format="WAV")
    return b.getvalue()


def start_gateway(tiny_model, tmp: Path, idle_s: float, limits: str = ""):
    voices = tmp / "voices"
    voices.mkdir()
    port = free_port()
    la = start_cluster(tiny_model, tmp, top=f'voices_dir = "{voices}"\n', roles=("gateway",),
                       sections=f'[gateway]\nport = {port}\napi_keys = ["{KEY}"]\nwyoming_uri = ""\n'
                                f'encoder_idle_s = {idle_s}\n', limits=limits)
    la.base = f"http://127.0.0.1:{port}"
    la.voices = voices
    la.proc = psutil.Process(la.procs["gateway"].pid)
    return la


@pytest.fixture(scope="module")
def gw(tiny_model, tmp_path_factory):
    la = start_gateway(tiny_model, tmp_path_factory.mktemp("gateway_encoder"), 600)
    yield la
    stop_cluster(la)


def upload(gw, name: str, **fields) -> httpx.Response:
    return httpx.post(gw.base + "/v1/audio/voices", headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                      data={"name": name, "transcript": TRANSCRIPT, "language": "english", **fields},
                      files={"audio_sample": ("ref.wav", wav_bytes(), "audio/wav")})


def encoder_children(gw) -> list[psutil.Process]:
    out = []
    for c in gw.proc.children(recursive=True):
        try:
            if "daemons.gateway.encoder_child" in c.cmdline() and c.status() != psutil.STATUS_ZOMBIE:
                out.append(c)
        except psutil.NoSuchProcess:
            pass
    return out


def the_child(gw) -> psutil.Process:
    kids = encoder_children(gw)
    assert len(kids) == 1, kids
    return kids[0]


def gone(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(cond, what: str, timeout_s: float = 60.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout_s, what
        time.sleep(0.05)


def snapshot(d) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def rss_mb(p: psutil.Process) -> float:
    return p.memory_info().rss / 2 ** 20


def test_upload_in_child_keeps_gateway_small(gw):
    assert encoder_children(gw) == []                     # nothing started before the first upload
    before = rss_mb(gw.proc)
    r = upload(gw, "first")
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "icl" and r.json()["reference_frames"] == 38
    assert (gw.voices / "first.json").is_file()
    child = the_child(gw)                                 # still there (encoder_idle_s = 600)
    assert child.ppid() == gw.proc.pid
    assert child.cpu_affinity() == gw.proc.cpu_affinity()  # inherited: pinned like the gateway
    # main + parent watcher + onnxruntime's intra-op pools (2 threads: 1 worker per session) + OpenBLAS's
    # (2: 1 worker); with onnxruntime's and BLAS's defaults it would be one thread per CPU per pool
    assert child.num_threads() <= 8, child.threads()
    r = upload(gw, "second")                              # same child, encoders already loaded
    assert r.status_code == 200, r.text
    assert the_child(gw).pid == child.pid
    after = rss_mb(gw.proc)
    print(f"gateway RSS {before:.1f} MB before, {after:.1f} MB after two uploads; "
          f"child {rss_mb(child):.1f} MB, {child.num_threads()} threads")
    assert after - before <= RSS_MARGIN_MB, (before, after)
    # the child's answers map as in-process encoding did: a bad recording is a 400 with nothing written
    snap = snapshot(gw.voices)
    r = httpx.post(gw.base + "/v1/audio/voices", headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                   data={"name": "silent"}, files={"audio_sample": ("a.wav", wav_bytes(0.5))})
    assert r.status_code == 400 and r.json()["error"]["param"] == "audio_sample", r.text
    assert snapshot(gw.voices) == snap
    assert the_child(gw).pid == child.pid


def _input_pipe(pid: int) -> int:
    """A descriptor of our own on the child's request pipe (the read end of the pipe from the gateway):
    opening /proc/PID/fd/N of a pipe opens that pipe, so FIONREAD tells how many bytes wait in it."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        flags = int(next(ln.split()[1] for ln in open(f"/proc/{pid}/fdinfo/{fd}") if ln.startswith("flags:")), 8)
        if link.startswith("pipe:") and flags & os.O_ACCMODE == os.O_RDONLY:
            found.append(fd)
    assert len(found) == 1, found
    return os.open(f"/proc/{pid}/fd/{found[0]}", os.O_RDONLY | os.O_NONBLOCK)


def _queued(fd: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return int.from_bytes(buf, "little")


def test_child_killed_mid_upload(gw):
    """kill -9 of the child while it holds an upload: the child is stopped (SIGSTOP) first, the upload's
    request is seen waiting in its pipe, then the child is killed: that upload gets 503
    voice_encoder_crashed in the envelope, nothing is written, and the next upload works in a new child."""
    if not encoder_children(gw):
        assert upload(gw, "warm").status_code == 200
    child = the_child(gw)
    snap = snapshot(gw.voices)
    os.kill(child.pid, signal.SIGSTOP)
    fd = _input_pipe(child.pid)
    result = {}
    t = threading.Thread(target=lambda: result.update(r=upload(gw, "doomed")))
    try:
        t.start()
        wait_for(lambda: _queued(fd) > 0, "the upload never reached the encoder child")
    finally:
        os.close(fd)          # ours must not keep the pipe open once the child is gone
        os.kill(child.pid, signal.SIGKILL)
    t.join(120)
    assert not t.is_alive()
    r = result["r"]
    assert r.status_code == 503, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "voice_encoder_crashed" and err["type"] == "server_error", err
    assert "SIGKILL" in err["message"] and "Traceback" not in err["message"], err
    assert snapshot(gw.voices) == snap                   # nothing written, nothing left behind
    wait_for(lambda: gone(child), "the killed child was not reaped")
    r = upload(gw, "after-crash")
    assert r.status_code == 200, r.text
    assert (gw.voices / "after-crash.json").is_file()
    assert the_child(gw).pid != child.pid
    log = (gw.run / "gateway.log").read_text()
    assert "died during an upload (killed by SIGKILL)" in log
    assert "Traceback" not in log, log[-3000:]


def test_gateway_sigterm_leaves_no_child(gw):
    if not encoder_children(gw):
        assert upload(gw, "warm2").status_code == 200
    child = the_child(gw)
    # a clean stop: uvicorn re-raises the SIGTERM it handled, into the gateway's own no-op handler
    assert gw.stop("gateway") == 0
    assert not (gw.run / "gateway.log").read_text().count("Traceback")
    wait_for(lambda: gone(child), "the encoder child outlived the gateway (SIGTERM)")


def test_hung_child_times_out(tiny_model, tmp_path):
    """A child that never answers (SIGSTOPped while it holds an upload) costs that upload request_timeout_s
    and a 504 "timeout", not a request held forever; the child is killed, and the next upload works in a new one."""
    la = start_gateway(tiny_model, tmp_path, 600, limits="request_timeout_s = 20\n")
    try:
        assert upload(la, "one").status_code == 200
        child = the_child(la)
        snap = snapshot(la.voices)
        os.kill(child.pid, signal.SIGSTOP)
        r = upload(la, "two")
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        assert err["code"] == "timeout" and "no reply within 20 s" in err["message"], err
        assert snapshot(la.voices) == snap
        wait_for(lambda: gone(child), "the hung child was not killed")
        assert upload(la, "three").status_code == 200
        assert the_child(la).pid != child.pid
        log = (la.run / "gateway.log").read_text()
        assert f"voice encoder process {child.pid}: no reply within 20 s; killed" in log
        assert "Traceback" not in log, log[-3000:]
    finally:
        stop_cluster(la)


def test_idle_child_exits(tiny_model, tmp_path):
    la = start_gateway(tiny_model, tmp_path, 1.0)
    try:
        r = upload(la, "one")
        assert r.status_code == 200, r.text
        wait_for(lambda: encoder_children(la) == [], "the encoder child did not exit after encoder_idle_s")
        # (the gateway logs it once it has reaped the child, a moment after the child is gone)
        wait_for(lambda: "stopped after 1 s idle (exit status 0)" in (la.run / "gateway.log").read_text(),
                 "the gateway did not log the idle child's exit")
        log = (la.run / "gateway.log").read_text()
        r = upload(la, "two")                            # a new child, and it works
        assert r.status_code == 200, r.text
        assert (la.voices / "two.json").is_file()
        wait_for(lambda: encoder_children(la) == [], "the second encoder child did not exit either")
        assert log.count("voice encoder process started for gateway") + 1 == \
            (la.run / "gateway.log").read_text().count("voice encoder process started for gateway")
    finally:
        stop_cluster(la)


def test_child_does_not_outlive_a_killed_gateway(tiny_model, tmp_path):
    """kill -9 of the gateway while the child holds an upload (stopped, the request in its pipe): once
    continued, the child finds its parent gone and exits."""
    la = start_gateway(tiny_model, tmp_path, 600)
    try:
        assert upload(la, "one").status_code == 200
        child = the_child(la)
        os.kill(child.pid, signal.SIGSTOP)
        fd = _input_pipe(child.pid)
        result = {}

        def doomed():
            try:
                result["r"] = upload(la, "two")
            except httpx.HTTPError as e:   # the gateway died under it: connection reset / closed
                result["r"] = e

        t = threading.Thread(target=doomed, daemon=True)
        try:
            t.start()
            wait_for(lambda: _queued(fd) > 0, "the upload never reached the encoder child")
        finally:
            os.close(fd)
        os.kill(la.proc.pid, signal.SIGKILL)
        la.procs["gateway"].wait(30)
        t.join(60)
        assert isinstance(result.get("r"), httpx.HTTPError), result
        os.kill(child.pid, signal.SIGCONT)
        wait_for(lambda: gone(child), "the encoder child outlived a killed gateway")
        assert not (la.voices / "two.json").exists()
    finally:
        try:
            os.kill(child.pid, signal.SIGKILL)
        except (ProcessLookupError, UnboundLocalError):
            pass
        stop_cluster(la)
