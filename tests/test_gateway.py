"""The OpenAI-compatible gateway (daemons/gateway/) as a real process in front of the three daemons on the
tiny model, driven by the official `openai` SDK: every response_format streamed and not, lossless ones
sample-exact against tts-client's API for the same seed, lossy ones the same duration, SSE, errors,
busy, talker down, and a disconnected stream cancelling its request in the talker."""
from __future__ import annotations

import base64
import io
import json
import os
import time

import httpx
import numpy as np
import pytest

from conftest import free_port, start_cluster, stop_cluster
from client.api import TTSClient
from daemons.engine.pcm import to_int16
from daemons.engine.voice import Voice
from daemons.launcher import ROLES

av = pytest.importorskip("av")
openai = pytest.importorskip("openai")

TEXT = "Hello from the gateway."
FRAME = 1920
LOSSLESS = ("pcm", "wav", "flac")
LOSSY = ("mp3", "opus", "aac")
EXTRA = {"seed": 3, "language": "english", "max_frames": 24}
# Every request in this cluster runs to its frame cap: EOS blocked ([sampling] min_new_tokens), runaway
# rules off; a LONG request is LONG frames per sentence (or the sentence's cap), by construction.
LONG = 300
LONG_TEXT = "This sentence is long enough for its frame cap to exceed the frames asked for, by a margin. " * 20


@pytest.fixture(scope="module")
def gw(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gateway")
    voices = tmp / "voices"
    voices.mkdir()
    hidden = json.loads((tiny_model / "manifest.json").read_text())["talker"]["hidden_size"]
    Voice(np.random.default_rng(7).standard_normal(hidden).astype(np.float32), language="english",
          name="anna").save(voices / "anna.json")
    port = free_port()
    la = start_cluster(tiny_model, tmp, top=f'voices_dir = "{voices}"\n', roles=(*ROLES, "gateway"),
                       watchdog_usec=4_000_000,
                       limits="predictor_timeout_s = 3.0\nvocoder_timeout_s = 5.0\nqueue_size = 1\n"
                              "loop_frames = 0\nsilence_frames = 0\n",
                       sections=f"[sampling]\nmin_new_tokens = 2048\n[gateway]\nport = {port}\n")
    la.base = f"http://127.0.0.1:{port}"
    yield la
    stop_cluster(la)


def sdk(gw) -> "openai.OpenAI":
    return openai.OpenAI(base_url=gw.base + "/v1", api_key="x", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def reference(gw):
    """What the ZeroMQ client gets for the same request, as int16. The cluster's very first request is a
    warm-up: in one run of several its audio differed from every later request's by 1-2 LSB on ~20 % of
    the samples (later requests all agreed with each other; in a rerun with codes returned, the first three
    requests had identical codes and identical audio), so the reference is the second request."""
    with TTSClient(gw.endpoint) as c:
        c.synthesize(TEXT, "english", params={"seed": 3}, max_frames=24)
        r = c.synthesize(TEXT, "english", params={"seed": 3}, max_frames=24)
    assert len(r.audio) > 0
    return to_int16(r.audio), r


def test_server_sampling_defaults_reach_the_talker(gw, synth):
    """[sampling] min_new_tokens = 2048 in this cluster's config blocks EOS: seed 7 ends on EOS after a few
    frames with the model's defaults (checked here), and runs to the frames asked for in the daemons."""
    eos = list(synth.frames(TEXT, "english", params=synth.sampling(seed=7), max_frames=40))
    assert len(eos) < 40
    ref = np.stack(list(synth.frames(TEXT, "english", params=synth.sampling(seed=7, min_new_tokens=2048),
                                     max_frames=40)))
    with TTSClient(gw.endpoint) as c:
        r = c.synthesize(TEXT, "english", params={"seed": 7}, max_frames=40, return_codes=True)
    assert r.codes.shape == ref.shape == (40, 16) and (r.codes == ref).all()
    assert [s["stop"] for s in r.segments] == ["max_frames"], r.segments


def decode(data: bytes, fmt: str) -> np.ndarray:
    """-> int16 mono samples at the stream's own rate (opus decodes at 48 kHz)."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2")
    c = av.open(io.BytesIO(data))
    out = []
    for f in c.decode(audio=0):
        a = f.to_ndarray()
        if a.dtype != np.int16:
            a = to_int16(a)
        out.append(a.reshape(-1))
    rate = c.streams.audio[0].rate
    c.close()
    return np.concatenate(out), rate


def same_pcm(y: np.ndarray, ref: np.ndarray, what: str) -> None:
    """The samples tts-client got for the same seed. Exact, except that the daemons' own float audio can
    differ between two runs of the same request by one float32 ULP here and there (onnxruntime under
    load), which moves a sample across an int16 rounding boundary: at most 1 LSB, on a handful of
    samples. (The encoders themselves are checked bit-exact in test_encoders_lossless.)"""
    assert len(y) == len(ref), (what, len(y), len(ref))
    d = np.abs(y.astype(np.int32) - ref.astype(np.int32))
    assert d.max(initial=0) <= 1 and np.count_nonzero(d) <= max(4, len(ref) // 2000), \
        (what, int(d.max(initial=0)), int(np.count_nonzero(d)))


def check(data: bytes, fmt: str, ref: np.ndarray) -> None:
    if fmt == "pcm":
        same_pcm(np.frombuffer(data, "<i2"), ref, fmt)
        return
    y, rate = decode(data, fmt)
    if fmt in LOSSLESS:
        assert rate == 24000
        same_pcm(y, ref, fmt)
    else:
        n = len(y) * 24000 // rate
        # same duration within one frame, plus the codec's priming/padding (< 2 codec frames)
        assert abs(n - len(ref)) <= FRAME + 2 * 1152, (fmt, n, len(ref))


def test_encoders_lossless_and_streaming():
    """pcm, wav, flac give back exactly the samples fed in, chunk by chunk; every format hands out bytes
    before the end (first bytes after at most ~0.5 s of audio)."""
    from daemons.gateway.audio import FORMATS, open_encoder

    x = to_int16(np.random.default_rng(0).uniform(-1.1, 1.1, FRAME * 25).astype(np.float32) * 0.5)
    for fmt in FORMATS:
        enc = open_encoder(fmt)
        parts = [enc.feed(x[i:i + 4 * FRAME]) for i in range(0, len(x), 4 * FRAME)]
        assert sum(map(len, parts[:2])) > 0, fmt          # streams: bytes within the first 8 frames
        data = b"".join(parts) + enc.finish()
        if fmt in LOSSLESS:
            y = np.frombuffer(data, "<i2") if fmt == "pcm" else decode(data, fmt)[0]
            assert np.array_equal(y, x), fmt
        else:
            y, rate = decode(data, fmt)
            assert abs(len(y) * 24000 // rate - len(x)) <= 2 * 1152, fmt


@pytest.mark.parametrize("fmt", LOSSLESS + LOSSY)
def test_formats_whole_and_streamed(gw, reference, fmt):
    ref, _ = reference
    c = sdk(gw)
    r = c.audio.speech.create(model="tts-1", input=TEXT, voice="alloy", response_format=fmt, extra_body=EXTRA)
    check(r.content, fmt, ref)
    ctype = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
             "wav": "audio/wav", "pcm": "audio/pcm"}[fmt]
    assert r.response.headers["content-type"].startswith(ctype)
    assert r.response.headers.get("x-qwen3-tts-random-weights") == "true"   # the tiny model is noise
    parts = []
    with c.audio.speech.with_streaming_response.create(model="tts-1", input=TEXT, voice={"id": "alloy"},
                                                       response_format=fmt, extra_body=EXTRA) as s:
        for b in s.iter_bytes():
            parts.append(b)
    check(b"".join(parts), fmt, ref)


def test_default_format_is_mp3_and_sse(gw, reference):
    ref, res = reference
    c = sdk(gw)
    r = c.audio.speech.create(model="gpt-4o-mini-tts", input=TEXT, voice="nova", extra_body=EXTRA,
                              instructions="cheerful")
    assert r.response.headers["content-type"].startswith("audio/mpeg")
    check(r.content, "mp3", ref)
    for fmt in ("pcm", "opus"):
        body = httpx.post(gw.base + "/v1/audio/speech", timeout=120,
                          json={"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": fmt,
                                "stream_format": "sse", **EXTRA})
        assert body.status_code == 200 and body.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in body.text.splitlines() if line.startswith("data: ")]
        assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
        assert events[-1]["type"] == "speech.audio.done"
        assert events[-1]["usage"]["output_tokens"] == res.frames
        check(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]), fmt, ref)


def test_speed(gw, reference):
    ref, _ = reference
    c = sdk(gw)
    one = c.audio.speech.create(model="tts-1", input=TEXT, voice="alloy", response_format="pcm", speed=1.0,
                                extra_body=EXTRA).content
    same_pcm(np.frombuffer(one, "<i2"), ref, "speed 1.0")   # 1.0: the samples untouched
    two = c.audio.speech.create(model="tts-1", input=TEXT, voice="alloy", response_format="pcm", speed=2.0,
                                extra_body=EXTRA).content
    assert abs(len(two) / 2 - len(ref) / 2) <= 0.02 * len(ref) / 2 + 64


def test_named_voice(gw):
    """A voice of voices_dir by name and as {"id"}: the samples tts-client gets with --voice anna."""
    with TTSClient(gw.endpoint) as c:
        ref = to_int16(c.synthesize(TEXT, "english", params={"seed": 3}, max_frames=24, voice="anna").audio)
    c = sdk(gw)
    for voice in ("anna", {"id": "anna"}):
        r = c.audio.speech.create(model="tts-1", input=TEXT, voice=voice, response_format="pcm", extra_body=EXTRA)
        same_pcm(np.frombuffer(r.content, "<i2"), ref, f"voice {voice}")
    assert {"id": "anna", "name": "anna"} in httpx.get(gw.base + "/v1/audio/voices").json()["voices"]


def test_listings_health_metrics(gw):
    c = sdk(gw)
    assert "tts-1" in [m.id for m in c.models.list().data]
    v = httpx.get(gw.base + "/v1/audio/voices").json()
    assert {"id": "alloy", "name": "alloy"} in v["voices"]
    assert {"id": "tts-1"} in httpx.get(gw.base + "/v1/audio/models").json()["models"]
    h = httpx.get(gw.base + "/health")
    assert h.status_code == 200 and h.json()["talker"]["role"] == "talker"
    m = httpx.get(gw.base + "/metrics").text
    assert "qwen3_tts_gateway_requests_total" in m and "qwen3_tts_gateway_time_to_first_audio_seconds" in m
    notes = gw.read_notify("gateway", 0.1)   # sd_notify: status, ready, then the watchdog from its loop
    assert any("READY=1" in n for n in notes) and any("STATUS=role=gateway" in n for n in notes)
    t0 = time.monotonic()
    while not any("WATCHDOG=1" in n for n in gw.read_notify("gateway", 0.5)):
        assert time.monotonic() - t0 < 30   # hang guard (WatchdogSec's ping comes every second)


@pytest.mark.parametrize("body,status,param", [
    ({"input": ""}, 400, "input"),
    ({"input": "   "}, 400, "input"),
    ({"voice": "no_such_voice"}, 400, "voice"),
    ({"response_format": "ogg"}, 400, "response_format"),
    ({"speed": 9}, 400, "speed"),
    ({"speed": 0.1}, 400, "speed"),
    ({"stream_format": "websocket"}, 400, "stream_format"),
    ({"input": "x" * 20001}, 413, "input"),
])
def test_errors(gw, body, status, param):
    req = {"model": "tts-1", "input": TEXT, "voice": "alloy", **body}
    r = httpx.post(gw.base + "/v1/audio/speech", json=req, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"] and set(err) == {"message", "type", "param", "code"}


def test_error_from_the_talker_and_sdk_exception(gw):
    c = sdk(gw)
    with pytest.raises(openai.BadRequestError) as e:
        c.audio.speech.create(model="tts-1", input=TEXT, voice="alloy", extra_body={"language": "klingon"})
    assert e.value.status_code == 400 and "language" in str(e.value)


def long_stream(gw, **kw):
    return httpx.stream("POST", gw.base + "/v1/audio/speech", timeout=120,
                        json={"model": "tts-1", "input": LONG_TEXT, "voice": "alloy", "response_format": "pcm",
                              "seed": 5, "max_frames": LONG, **kw})


def ping(gw) -> dict:
    with TTSClient(gw.endpoint) as c:
        return c.ping()


def wait_idle(gw, timeout_s: float) -> float:
    t0 = time.monotonic()
    while True:
        p = ping(gw)
        if not p["active"] and p["queue"] == 0:
            return time.monotonic() - t0
        assert time.monotonic() - t0 < timeout_s, p
        time.sleep(0.05)


def test_disconnect_cancels_and_busy(gw):
    """A long request (hundreds of frames by construction) streams; a second one waits in the queue
    (size 1); a third gets 429 + Retry-After. The second hangs up while queued: its place is freed while
    the first still runs; closing the first stream frees the talker within seconds."""
    import threading

    wait_idle(gw, 60)
    with long_stream(gw) as a:
        assert a.status_code == 200
        chunks = a.iter_bytes()   # kept: a dropped iterator closes the response
        assert len(next(chunks)) > 0 and ping(gw)["active"]
        b_status = []

        def second():  # its headers wait for its first audio, i.e. until a is gone: it gives up first
            try:
                with httpx.stream("POST", gw.base + "/v1/audio/speech", timeout=httpx.Timeout(60, read=3),
                                  json={"model": "tts-1", "input": TEXT, "voice": "alloy", "seed": 6}) as b:
                    b_status.append(b.status_code)
            except httpx.ReadTimeout:
                b_status.append("gave up")
        t = threading.Thread(target=second)
        t.start()
        t0 = time.monotonic()
        while ping(gw)["queue"] < 1:
            assert time.monotonic() - t0 < 60
            time.sleep(0.02)
        r = httpx.post(gw.base + "/v1/audio/speech", timeout=60,
                       json={"model": "tts-1", "input": TEXT, "voice": "alloy", "seed": 1})
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "busy"
        p = ping(gw)
        assert p["active"] and p["queue"] == 1   # a is still generating, b still waiting
        t.join(30)
        assert b_status == ["gave up"]           # b hung up while queued: its place is freed at once
        t0 = time.monotonic()
        while ping(gw)["queue"]:
            assert time.monotonic() - t0 < 30    # hang guard; "at once" is the next line: a still generates
            time.sleep(0.05)
        assert ping(gw)["active"]                # while a still generates
    assert wait_idle(gw, 10) < 10
    m = httpx.get(gw.base + "/metrics").text
    assert 'qwen3_tts_gateway_requests_total{code="429"}' in m
    assert "qwen3_tts_gateway_active_streams 0.0" in m
    r = sdk(gw).audio.speech.create(model="tts-1", input=TEXT, voice="alloy", response_format="pcm",
                                    extra_body=EXTRA)   # the talker works normally afterwards
    assert len(r.content) > 0


def _kill_mid_sse_stream(gw, role: str) -> list:
    """kill -9 of `role` while an SSE stream runs; the stream's events (the last one is how it ended), then
    `role` restarted and a next request that works."""
    import signal

    wait_idle(gw, 60)
    with long_stream(gw, stream_format="sse") as s:
        assert s.status_code == 200
        lines = s.iter_lines()
        first = next(ln for ln in lines if ln.startswith("data: "))
        assert json.loads(first[6:])["type"] == "speech.audio.delta"
        os.kill(gw.procs[role].pid, signal.SIGKILL)
        gw.procs[role].wait()
        events = [json.loads(ln[6:]) for ln in lines if ln.startswith("data: ")]
    gw.start(role)
    gw.wait_ready(role, 120)
    r = sdk(gw).audio.speech.create(model="tts-1", input=TEXT, voice="alloy", response_format="wav",
                                    extra_body=EXTRA)
    assert len(decode(r.content, "wav")[0]) > 0
    return events


def test_predictor_killed_mid_stream(gw):
    """kill -9 of the predictor while an SSE stream runs: the stream ends with an error event the client
    sees (a chunked audio body is cut short instead); after a restart the next request works."""
    events = _kill_mid_sse_stream(gw, "predictor")
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "predictor_unavailable", events[-1:]
    assert all(e["type"] == "speech.audio.delta" for e in events[:-1])


def test_talker_killed_mid_stream(gw):
    """kill -9 of the talker while an SSE stream runs: the gateway's TalkerLink notices the lost connection
    (daemons/peer_watch.py) and the stream ends with a not_running error event, not with `timeout` after
    request_timeout_s (the code tells which path ended it); after a restart the next request works."""
    events = _kill_mid_sse_stream(gw, "talker")
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "not_running", events[-1:]


def test_talker_down_is_503(tmp_path):
    from starlette.testclient import TestClient

    from daemons.config import load_config
    from daemons.gateway.http import Gateway

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'runtime_dir = "{tmp_path}"\n[gateway]\napi_keys = ["k1", "k2"]\n')
    g = Gateway(load_config(cfg, env={"HOME": str(tmp_path)}))
    with TestClient(g.app) as t:
        body = {"model": "tts-1", "input": TEXT, "voice": "alloy"}
        assert t.post("/v1/audio/speech", json=body).status_code == 401
        assert t.post("/v1/audio/speech", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
        r = t.post("/v1/audio/speech", json=body, headers={"Authorization": "Bearer k2"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_running"
        assert t.get("/health").status_code == 503
        assert t.get("/v1/audio/voices").status_code == 200   # Open WebUI lists voices without a key


def test_control_token_strings_are_read_as_text(gw, synth):
    """Issue 17 (3b): a text holding the model's control strings reaches the talker as that text through
    both ways in, and is spoken as plain characters: the codes equal the in-process engine's for the same
    text and seed (whose prompt holds no control id for them, tests/test_prompt_text.py), not those of the
    text with the strings read as control tokens (the prompt would end at the user's <|im_end|>)."""
    text = "Read this <|im_end|> as text, <tts_pad> too."
    ref = np.stack(list(synth.frames(text, "english", params=synth.sampling(seed=5, min_new_tokens=2048),
                                     max_frames=12)))
    with TTSClient(gw.endpoint) as c:
        r = c.synthesize(text, "english", params={"seed": 5}, max_frames=12, return_codes=True)
        pcm = to_int16(c.synthesize(text, "english", params={"seed": 5}, max_frames=12).audio)
    assert r.codes.shape == ref.shape == (12, 16) and (r.codes == ref).all()
    h = sdk(gw).audio.speech.create(model="tts-1", input=text, voice="alloy", response_format="pcm",
                                    extra_body={"seed": 5, "language": "english", "max_frames": 12})
    same_pcm(np.frombuffer(h.content, "<i2"), pcm, "control strings over HTTP")
