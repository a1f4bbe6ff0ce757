"""The gateway's voice upload (POST/DELETE /v1/audio/voices) and its behaviour under load and failure, as real
processes (three daemons + gateway on the tiny random-weight model) driven by the official `openai` SDK and
httpx: an uploaded voice is listed, used by name and by {"id"} with the samples tts-client's API gets for
the same voice and seed, deleted, then unknown; bad uploads are refused with nothing written; 504 on a
timeout; 10 concurrent clients against a queue of 4; kill -9 of the predictor in the middle of a chunked
audio body. Every request is seeded and every wait is for a state, not a duration."""
from __future__ import annotations

import hashlib
import io
import os
import signal
import threading
import time

import httpx
import numpy as np
import pytest

from conftest import free_port, start_cluster, stop_cluster
from client.api import ClientError, TTSClient
from daemons.engine.pcm import to_int16
from daemons.launcher import ROLES

openai = pytest.importorskip("openai")
sf = pytest.importorskip("soundfile")

KEY = "test-key"
TEXT = "Hello from an uploaded voice."
FRAME = 1920
FRAMES = 24
EXTRA = {"seed": 3, "language": "english", "max_frames": FRAMES}
LONG = 300
LONG_TEXT = "This sentence is long enough for its frame cap to exceed the frames asked for, by a margin. " * 20
TRANSCRIPT = "This is the transcript of the reference recording."
# Every request runs to its frame cap: EOS blocked ([sampling] min_new_tokens), runaway rules off, so a
# request of max_frames N gives exactly N frames = N * 1920 samples.
LIMITS = ("predictor_timeout_s = 3.0\nvocoder_timeout_s = 5.0\nqueue_size = 4\n"
          "loop_frames = 0\nsilence_frames = 0\n")


def wav_bytes(x: np.ndarray, sr: int = 24000, fmt: str = "WAV") -> bytes:
    b = io.BytesIO()
    sf.write(b, x, sr, format=fmt)
    return b.getvalue()


def reference_recording(seconds: float = 3.0, sr: int = 24000, seed: int = 0) -> np.ndarray:
    """A seeded 'recording' (a tone with noise; not speech, the encoders do not care)."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def gw(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway_voices")
    voices = tmp / "voices"
    voices.mkdir()
    port = free_port()
    la = start_cluster(tiny_model, tmp, top=f'voices_dir = "{voices}"\n', roles=(*ROLES, "gateway"),
                       watchdog_usec=4_000_000, limits=LIMITS,
                       sections=f'[sampling]\nmin_new_tokens = 2048\n[gateway]\nport = {port}\n'
                                f'api_keys = ["{KEY}"]\nwyoming_uri = ""\n')
    la.base = f"http://127.0.0.1:{port}"
    la.voices = voices
    with TTSClient(la.endpoint) as c:   # the cluster's first request is a warm-up (see test_gateway.reference)
        c.synthesize(TEXT, "english", params={"seed": 3}, max_frames=FRAMES)
    yield la
    stop_cluster(la)


def sdk(gw, key: str = KEY) -> "openai.OpenAI":
    return openai.OpenAI(base_url=gw.base + "/v1", api_key=key, max_retries=0, timeout=300)


def same_pcm(y: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Equal to what tts-client got, up to 1 LSB on a handful of samples (float32 ULPs of onnxruntime
    crossing an int16 rounding boundary; see tests/test_gateway.py)."""
    assert len(y) == len(ref), (what, len(y), len(ref))
    d = np.abs(y.astype(np.int32) - ref.astype(np.int32))
    assert d.max(initial=0) <= 1 and np.count_nonzero(d) <= max(4, len(ref) // 2000), \
        (what, int(d.max(initial=0)), int(np.count_nonzero(d)))


def snapshot(d) -> dict:
    """Every entry of voices_dir (hidden temporaries included) with the hash of its content."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def tts_client_pcm(gw, voice: str | None = None) -> np.ndarray:
    with TTSClient(gw.endpoint) as c:
        r = c.synthesize(TEXT, "english", params={"seed": 3}, max_frames=FRAMES, voice=voice)
    assert r.frames == FRAMES
    return to_int16(r.audio)


def speech_pcm(gw, voice) -> np.ndarray:
    r = sdk(gw).audio.speech.create(model="tts-1", input=TEXT, voice=voice, response_format="pcm",
                                    extra_body=EXTRA)
    return np.frombuffer(r.content, "<i2")


def listed(gw) -> list[str]:
    r = httpx.get(gw.base + "/v1/audio/voices", timeout=30)   # Open WebUI lists without a key
    assert r.status_code == 200
    return [v["id"] for v in r.json()["voices"]]


def test_upload_use_delete(gw):
    c = sdk(gw)
    before = snapshot(gw.voices)
    v = c.audio.voices.create(name="clone1", consent="cons_local",
                              audio_sample=("ref.wav", wav_bytes(reference_recording()), "audio/wav"),
                              extra_body={"transcript": TRANSCRIPT, "language": "english"})
    assert v.object == "audio.voice" and v.id == "clone1" and v.name == "clone1"
    assert abs(v.created_at - time.time()) < 600
    raw = v.model_extra or {}
    assert raw.get("mode") == "icl" and raw.get("language") == "english"
    assert raw.get("reference_frames") == 38             # ceil(3 s * 24000 / 1920)
    f = gw.voices / "clone1.json"
    assert set(snapshot(gw.voices)) == set(before) | {"clone1.json"}   # no temporary left behind
    assert (f.stat().st_mode & 0o777) == 0o640
    # a second one, x-vector only (no transcript), from a 44.1 kHz stereo FLAC, with plain httpx
    stereo = np.stack([reference_recording(2.0, 44100, 1), reference_recording(2.0, 44100, 2)], axis=1)
    r = httpx.post(gw.base + "/v1/audio/voices", headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                   data={"name": "clone2"}, files={"audio_sample": ("ref.flac", wav_bytes(stereo, 44100, "FLAC"))})
    assert r.status_code == 200, r.text
    assert r.json()["mode"] == "xvector" and r.json()["reference_frames"] == 0
    assert {"clone1", "clone2"} <= set(listed(gw))

    # used by name and by {"id"}: what tts-client's API gets from the talker with the same voice and seed
    # (the talker finds the new voices without a restart)
    for name in ("clone1", "clone2"):
        ref = tts_client_pcm(gw, name)
        assert len(ref) == FRAMES * FRAME
        for voice in (name, {"id": name}):
            same_pcm(speech_pcm(gw, voice), ref, f"voice {voice}")
    assert not np.array_equal(tts_client_pcm(gw, "clone1"), tts_client_pcm(gw, None))  # it is another voice

    d = c.audio.voices.delete("clone1")
    assert d.id == "clone1" and d.deleted and d.object == "audio.voice.deleted"
    assert not f.exists() and "clone1" not in listed(gw)
    with pytest.raises(openai.BadRequestError) as e:
        speech_pcm(gw, "clone1")
    assert e.value.status_code == 400 and e.value.body["code"] == "unknown_voice"
    with pytest.raises(ClientError) as ce:   # the talker no longer knows it either
        tts_client_pcm(gw, "clone1")
    assert "unknown voice" in ce.value.message
    with pytest.raises(openai.NotFoundError) as e:
        c.audio.voices.delete("clone1")
    assert e.value.body["code"] == "voice_not_found"
    assert httpx.delete(gw.base + "/v1/audio/voices/clone2", headers={"Authorization": f"Bearer {KEY}"},
                        timeout=30).status_code == 200
    assert snapshot(gw.voices) == before


GOOD = reference_recording()


@pytest.mark.parametrize("case,fields,audio,status,code,param", [
    ("silent", {}, wav_bytes(np.zeros(72000, np.float32)), 400, "invalid_request", "audio_sample"),
    ("too short", {}, wav_bytes(GOOD[:12000]), 400, "invalid_request", "audio_sample"),
    ("too long", {}, wav_bytes(np.tile(GOOD, 11)), 400, "invalid_request", "audio_sample"),
    ("not audio", {}, b"this is a text file, not a recording\n" * 100, 400, "invalid_request", "audio_sample"),
    ("empty file", {}, b"", 400, "invalid_value", "audio_sample"),
    ("20 MiB", {}, b"\0" * (20 * 1024 * 1024), 413, "file_too_large", "audio_sample"),
    ("10 MiB + 1", {}, b"\0" * (10 * 1024 * 1024 + 1), 413, "file_too_large", "audio_sample"),
    ("no name", {"name": None}, wav_bytes(GOOD), 400, "missing_field", "name"),
    ("path separator", {"name": "../evil"}, wav_bytes(GOOD), 400, "invalid_value", "name"),
    ("slash", {"name": "a/b"}, wav_bytes(GOOD), 400, "invalid_value", "name"),
    ("hidden", {"name": ".hidden"}, wav_bytes(GOOD), 400, "invalid_value", "name"),
    ("space", {"name": "my voice"}, wav_bytes(GOOD), 400, "invalid_value", "name"),
    ("newline", {"name": "anna\n"}, wav_bytes(GOOD), 400, "invalid_value", "name"),
    ("65 chars", {"name": "a" * 65}, wav_bytes(GOOD), 400, "invalid_value", "name"),
    ("stock alias", {"name": "alloy"}, wav_bytes(GOOD), 400, "reserved_name", "name"),
    ("unknown language", {"language": "klingon"}, wav_bytes(GOOD), 400, "invalid_request", "language"),
    ("prompt voice", {"type": "prompt"}, wav_bytes(GOOD), 400, "invalid_value", "type"),
    ("no audio", {}, None, 400, "missing_field", "audio_sample"),
    ("existing voice", {"name": "taken"}, wav_bytes(GOOD), 409, "voice_exists", "name"),
    ("no key", {"key": None}, wav_bytes(GOOD), 401, "invalid_api_key", None),
    ("wrong key", {"key": "nope"}, wav_bytes(GOOD), 401, "invalid_api_key", None),
])
def test_bad_uploads(gw, case, fields, audio, status, code, param):
    if case == "existing voice" and not (gw.voices / "taken.json").exists():
        r = httpx.post(gw.base + "/v1/audio/voices", headers={"Authorization": f"Bearer {KEY}"}, timeout=300,
                       data={"name": "taken"}, files={"audio_sample": ("ref.wav", wav_bytes(GOOD))})
        assert r.status_code == 200, r.text
    before = snapshot(gw.voices)
    fields = {"name": "newvoice", "transcript": TRANSCRIPT, "key": KEY, **fields}
    key = fields.pop("key")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = {k: v for k, v in fields.items() if v is not None}
    files = {"audio_sample": ("ref.wav", audio, "audio/wav")} if audio is not None else None
    if files is None:
        files = {"other": ("x.txt", b"x")}   # still multipart
    r = httpx.post(gw.base + "/v1/audio/voices", headers=headers, data=data, files=files, timeout=300)
    assert r.status_code == status, (case, r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], case
    assert err["code"] == code and err["param"] == param, (case, err)
    assert "Traceback" not in err["message"]
    assert snapshot(gw.voices) == before, case                  # nothing written, nothing left behind


def test_upload_not_multipart_and_delete_errors(gw):
    h = {"Authorization": f"Bearer {KEY}"}
    r = httpx.post(gw.base + "/v1/audio/voices", headers=h, json={"name": "x"}, timeout=30)
    assert r.status_code == 400 and "multipart" in r.json()["error"]["message"]
    r = httpx.post(gw.base + "/v1/audio/voices", timeout=30, headers={**h, "Content-Type": "multipart/form-data"},
                   content=b"garbage")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert httpx.delete(gw.base + "/v1/audio/voices/nobody", headers=h, timeout=30).status_code == 404
    assert httpx.delete(gw.base + "/v1/audio/voices/alloy", headers=h, timeout=30).status_code == 400
    assert httpx.delete(gw.base + "/v1/audio/voices/a%20b", headers=h, timeout=30).status_code == 400
    assert httpx.delete(gw.base + "/v1/audio/voices/x", timeout=30).status_code == 401


def ping(gw) -> dict:
    with TTSClient(gw.endpoint) as c:
        return c.ping()


def wait_for(cond, what: str, timeout_s: float = 120.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout_s, what
        time.sleep(0.05)


def wait_idle(gw) -> None:
    wait_for(lambda: (lambda p: not p["active"] and p["queue"] == 0)(ping(gw)), "the talker did not go idle")


def long_stream(gw, **kw):
    return httpx.stream("POST", gw.base + "/v1/audio/speech", headers={"Authorization": f"Bearer {KEY}"},
                        timeout=300, json={"model": "tts-1", "input": LONG_TEXT, "voice": "alloy",
                                           "response_format": "pcm", "seed": 5, "max_frames": LONG, **kw})


def test_ten_concurrent_clients_queue_of_four(gw):
    """A long request holds the talker; 10 SDK clients then arrive at once: the talker queues 4 (its
    queue_size) and refuses the other 6 with busy -> 429 + Retry-After. Once the long one is closed, the 4
    queued ones run, each to complete audio: exactly FRAMES * 1920 samples, the samples tts-client gets."""
    ref = tts_client_pcm(gw)
    wait_idle(gw)
    results: list = [None] * 10

    def one(i):
        try:
            results[i] = speech_pcm(gw, "alloy")
        except openai.APIStatusError as e:
            results[i] = e

    with long_stream(gw) as a:
        assert a.status_code == 200
        chunks = a.iter_bytes()
        assert len(next(chunks)) > 0
        wait_for(lambda: ping(gw)["active"], "the long request is not active")
        threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
        for t in threads:
            t.start()
        # 6 refused (the threads end), 4 waiting in the talker's queue while the long one still runs
        wait_for(lambda: sum(isinstance(r, openai.APIStatusError) for r in results) >= 6 and ping(gw)["queue"] == 4,
                 f"expected 6 refusals and 4 queued: {results}, {ping(gw)}")
        p = ping(gw)
        assert p["active"] and p["queue"] == 4
    for t in threads:   # closing the long stream cancelled it: the queued ones run now
        t.join(300)
        assert not t.is_alive()
    busy = [r for r in results if isinstance(r, openai.APIStatusError)]
    ok = [r for r in results if isinstance(r, np.ndarray)]
    assert len(busy) == 6 and len(ok) == 4, results
    for e in busy:
        assert e.status_code == 429 and e.response.headers["retry-after"] == "1" and e.body["code"] == "busy"
    for y in ok:
        assert len(y) == FRAMES * FRAME
        same_pcm(y, ref, "queued request")
    wait_idle(gw)


def test_predictor_killed_mid_chunked_body(gw):
    """kill -9 of the predictor while a chunked pcm body streams: the status (200) is already sent, so the
    body is cut short: no terminating chunk, httpx raises RemoteProtocolError (curl: "transfer closed with
    outstanding read data remaining", exit 18); fewer bytes than asked for arrived. After a restart of the
    predictor the next request is complete."""
    wait_idle(gw)
    got = 0
    with pytest.raises(httpx.RemoteProtocolError):
        with long_stream(gw) as s:
            assert s.status_code == 200
            chunks = s.iter_bytes()
            got += len(next(chunks))
            os.kill(gw.procs["predictor"].pid, signal.SIGKILL)
            gw.procs["predictor"].wait()
            for b in chunks:
                got += len(b)
    assert 0 < got < LONG * FRAME * 2
    gw.start("predictor")
    gw.wait_ready("predictor", 120)
    y = speech_pcm(gw, "alloy")
    assert len(y) == FRAMES * FRAME
    log = (gw.run / "gateway.log").read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "ended early: predictor_unavailable" in log


def test_timeout_is_504(tiny_model, tmp_path):
    """request_timeout_s = 2 and a SIGSTOPped vocoder (vocoder_timeout_s far away): no audio can come, the
    talker ends the request with `timeout` (or the gateway's own wait for the first audio, the same
    request_timeout_s, runs out first): 504 in OpenAI's envelope, deterministically."""
    port = free_port()
    la = start_cluster(tiny_model, tmp_path, roles=(*ROLES, "gateway"),
                       limits="request_timeout_s = 2.0\nvocoder_timeout_s = 600.0\npredictor_timeout_s = 600.0\n",
                       sections=f'[gateway]\nport = {port}\nwyoming_uri = ""\n')
    voc = la.procs["vocoder"]
    try:
        os.kill(voc.pid, signal.SIGSTOP)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=300)
        with pytest.raises(openai.APIStatusError) as e:
            c.audio.speech.create(model="tts-1", input=TEXT, voice="alloy", response_format="pcm",
                                  extra_body=EXTRA)
        assert e.value.status_code == 504 and e.value.body["code"] == "timeout", e.value.body
        assert e.value.body["type"] == "server_error" and e.value.body["message"]
    finally:
        os.kill(voc.pid, signal.SIGCONT)
        stop_cluster(la)
