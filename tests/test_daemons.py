"""The three daemons as real processes on the tiny model: parity with the in-process engine, failures of
one daemon, concurrency, hostile input, and the sd_notify life cycle."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zmq

from conftest import ROOT, snr_db
from client.api import ClientError, TTSClient
from daemons import protocol
from daemons.launcher import ROLES, Launcher

TEXT = "Hello, this is a test of the text to speech system."


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("daemons")
    run = tmp / "run"
    cfg = tmp / "qwen3-tts.toml"
    cfg.write_text(f'model_dir = "{tiny_model}"\nruntime_dir = "{run}"\n'
                   "[limits]\npredictor_timeout_s = 5.0\nvocoder_timeout_s = 5.0\nqueue_size = 4\n"
                   "max_text_chars = 5000\n")
    env = {**os.environ, "QWEN3_TTS_CONFIG": str(cfg), "PYTHONPATH": str(ROOT)}
    for k in list(env):
        if k.startswith("QWEN3_TTS_") and k != "QWEN3_TTS_CONFIG":
            del env[k]
    la = Launcher(run, env=env, watchdog_usec=4_000_000)
    for r in ROLES:
        la.start(r)
    for r in ROLES:
        la.wait_ready(r, 120)
    la.endpoint = f"ipc://{run}/talker.sock"
    la.run = run
    yield la
    for r in ROLES:
        la.stop(r)
    la.close()


def client(la, **kw) -> TTSClient:
    return TTSClient(la.endpoint, **kw)


def test_daemons_match_in_process_engine(cluster, synth):
    with client(cluster) as c:
        streamed = []
        r = c.synthesize(TEXT, "english", params={"seed": 5}, max_frames=30, return_codes=True,
                         on_audio=streamed.append)
    ref = np.stack(list(synth.frames(TEXT, "english", params=synth.sampling(seed=5), max_frames=30)))
    assert r.codes.shape == ref.shape and (r.codes == ref).all()
    assert len(r.audio) == r.frames * 1920
    # audio that arrived in chunks equals decoding all frames at once
    one_shot = synth.vocoder.decode_all(r.codes)
    assert snr_db(one_shot, np.concatenate(streamed)) >= 60
    with client(cluster) as c:  # greedy too
        g = c.synthesize(TEXT, "english", params={"do_sample": False, "sub_do_sample": False}, max_frames=20,
                         return_codes=True)
    gref = np.stack(list(synth.frames(TEXT, "english", params=synth.sampling(do_sample=False, sub_do_sample=False),
                                      max_frames=20)))
    assert (g.codes == gref).all()


@pytest.mark.parametrize("victim, code", [("predictor", "predictor_unavailable"), ("vocoder", "vocoder_unavailable")])
def test_kill_one_daemon_mid_request(cluster, victim, code):
    talker_pid = cluster.procs["talker"].pid
    with client(cluster, idle_timeout_s=20) as c:
        killed = []

        def on_progress(frame):
            if frame == 5 and not killed:
                os.kill(cluster.procs[victim].pid, signal.SIGKILL)
                killed.append(time.monotonic())

        with pytest.raises(ClientError) as ei:
            c.synthesize(TEXT, "english", max_frames=400, on_progress=on_progress)
        assert ei.value.code == code, ei.value
        waited = time.monotonic() - killed[0]
        assert waited < 15, f"error came {waited:.1f} s after the kill"
    cluster.procs[victim].wait()
    cluster.start(victim)
    cluster.wait_ready(victim, 120)
    with client(cluster) as c:
        r = c.synthesize(TEXT, "english", max_frames=10)
    assert len(r.audio) == r.frames * 1920 and (r.frames == 10 or r.stop == "eos")
    assert cluster.procs["talker"].pid == talker_pid and cluster.procs["talker"].poll() is None


def test_ten_concurrent_clients(cluster):
    results = {}

    def one(i):
        try:
            with client(cluster, idle_timeout_s=60) as c:
                results[i] = c.synthesize(f"Sentence number {i}.", "english", max_frames=12)
        except ClientError as e:
            results[i] = e

    ts = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(180)
    assert not any(t.is_alive() for t in ts), "a client hung"
    assert len(results) == 10
    ok = [r for r in results.values() if not isinstance(r, ClientError)]
    errs = [r for r in results.values() if isinstance(r, ClientError)]
    assert all(e.code == "busy" for e in errs), [str(e) for e in errs]
    assert all(len(r.audio) == r.frames * 1920 and (r.frames == 12 or r.stop == "eos") for r in ok)
    assert len(ok) >= 5  # one generating + queue_size waiting are always served


@pytest.mark.parametrize("text, language, code", [
    ("", "english", "invalid_text"),
    ("   ", "english", "invalid_text"),
    ("hello", "klingon", "unknown_language"),
    ("x" * 1_000_000, "english", "invalid_text"),
])
def test_bad_requests_get_typed_errors(cluster, text, language, code):
    with client(cluster) as c:
        with pytest.raises(ClientError) as ei:
            c.synthesize(text, language, max_frames=5)
        assert ei.value.code == code
        assert c.ping()["ready"] is True


def raw(endpoint: str, frames: list, timeout_ms: int = 3000):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    try:
        s.send_multipart(frames)
        if not s.poll(timeout_ms, zmq.POLLIN):
            return None
        return protocol.decode(s.recv_multipart(), 1 << 26)
    finally:
        s.close(0)


GARBAGE = [
    [b"\xff\xfe\x00garbage"],                                   # not UTF-8
    [b"not json at all"],
    [b"[1, 2, 3]"],                                             # JSON, not an object
    [b'{"v": 99, "type": "synthesize"}'],                       # unknown version
    [b'{"v": 1, "type": "synthesize", "id": "a", "arrays": [{"name": "xvector", "dtype": "<f4", "shape": [4]}]}',
     b"\x00" * 3],                                              # array size mismatch
    [b'{"v": 1, "type": "predict", "id": "p", "frame": 0, "c0": 1, "seed": 1, '
     b'"arrays": [{"name": "hidden", "dtype": "<f4", "shape": [5]}]}', b"\x00" * 20],
    [b'{"v": 1, "type": "frames", "id": "f", "seq": 0, "arrays": [{"name": "codes", "dtype": "<i8", '
     b'"shape": [1, 16]}]}', np.full((1, 16), 10 ** 6, np.int64).tobytes()],
    [b'{"v": 1, "type": "nonsense"}'],
    [b'{"v": 1, "type": "x"}', b"\x00" * (5 * 1024 * 1024)],   # over the message size limit
]


@pytest.mark.parametrize("role", ROLES)
def test_garbage_to_every_socket(cluster, role):
    ep = f"ipc://{cluster.run}/{role}.sock"
    for frames in GARBAGE:
        r = raw(ep, frames)
        assert r is not None and r.type == "error", (role, frames[0][:40], r)
    pong = raw(ep, protocol.encode("ping"))
    assert pong is not None and pong.type == "pong" and pong.header["role"] == role
    assert cluster.procs[role].poll() is None


def test_cli_streaming_and_errors(cluster, tmp_path):
    out = tmp_path / "s.wav"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "client.cli", TEXT, "--language", "english", "--streaming", "-o",
                        str(out), "--max-frames", "12", "--endpoint", cluster.endpoint], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "time to first audio" in r.stderr and "noise, not speech" in r.stderr
    import soundfile as sf

    wav, sr = sf.read(out)
    assert sr == 24000 and len(wav) == 12 * 1920
    r = subprocess.run([sys.executable, "-m", "client.cli", "--endpoint", cluster.endpoint], input=b"\xff\xfe",
                       capture_output=True, env=env, timeout=60)
    assert r.returncode == 2 and b"not valid UTF-8" in r.stderr
    r = subprocess.run([sys.executable, "-m", "client.cli", "hi", "--endpoint", f"ipc://{tmp_path}/none.sock"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 3 and "no talker daemon answers" in r.stderr
    r = subprocess.run([sys.executable, "-m", "client.cli", "hi", "-l", "klingon", "--endpoint", cluster.endpoint],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "unknown_language" in r.stderr


def test_cancel_and_disconnect_stop_generation(cluster):
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(cluster.endpoint)
    try:
        s.send_multipart(protocol.encode("synthesize", id="c1", text=TEXT, language="english", max_frames=400))
        seen = 0
        while seen < 3:
            assert s.poll(20000)
            m = protocol.decode(s.recv_multipart())
            seen += m.type == "progress"
        s.send_multipart(protocol.encode("cancel", id="c1"))
        after = 0
        while True:
            assert s.poll(20000)
            m = protocol.decode(s.recv_multipart())
            if m.type == "error":
                assert m.header["code"] == "cancelled"
                break
            after += m.type == "progress"
        assert after <= 1, f"{after} frames were generated after the cancel"
    finally:
        s.close(0)
    # a client that vanishes mid-request: the talker notices on its next frame and becomes free again
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(cluster.endpoint)
    s.send_multipart(protocol.encode("synthesize", id="c2", text=TEXT, language="english", max_frames=2000))
    assert s.poll(20000)
    s.close(0)
    with client(cluster) as c:
        deadline = time.monotonic() + 10
        while c.ping()["active"]:
            assert time.monotonic() < deadline, "the talker kept generating for a client that is gone"
            time.sleep(0.05)


def test_notify_lifecycle_and_graceful_stop(cluster):
    """READY, STATUS, WATCHDOG... then STOPPING on SIGTERM (runs last in this module: it stops the vocoder)."""
    role = "vocoder"
    msgs = cluster.read_notify(role, 0.5)
    assert msgs[0] == "READY=1"
    assert msgs[1].startswith("STATUS=role=vocoder") and "threads=" in msgs[1] and "cpus=" in msgs[1]
    assert any(m == "WATCHDOG=1" for m in msgs[2:]) or cluster.read_notify(role, 6)[-1] == "WATCHDOG=1"
    rc = cluster.stop(role)
    msgs = cluster.read_notify(role, 1.0)
    assert msgs[-1] == "STOPPING=1" and rc == 0
    assert [m for m in msgs if m != "WATCHDOG=1"][:2] == msgs[:2]
