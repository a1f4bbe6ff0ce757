"""The WebSocket front (daemons/gateway/websocket.py, the seed protocol on GET /api/v1/speak) in a real gateway
process in front of the three daemons on the tiny model, driven by the `websockets` client library: the
whole session state machine, audio sample-exact against tts-client's API for the same seed (pcm16, pcm32f,
audioChunk JSON), queue order and priority, cancel (in the talker, within a frame), stop, bad messages,
authentication, GET /api/v1/voices, and the talker down (in-process gateway)."""
from __future__ import annotations

import asyncio
import base64
import json

import httpx
import numpy as np
import pytest

from conftest import free_port, start_cluster, stop_cluster
from client.api import TTSClient
from daemons.engine.pcm import to_int16
from daemons.engine.voice import Voice
from daemons.launcher import ROLES

websockets = pytest.importorskip("websockets")
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

KEY = "k-ws"
TEXT = "Hello from the socket."
FRAME = 1920
# Every request in this cluster runs to its frame cap: EOS blocked ([sampling] min_new_tokens), runaway rules
# off. LONG_TEXT with maxFrames LONG is thousands of frames: it never ends by itself within a test.
LONG = 300
LONG_TEXT = "This sentence is long enough for its frame cap to exceed the frames asked for, by a margin. " * 20
RECV_S = 120  # only against a hang: nothing here asserts a duration


@pytest.fixture(scope="module")
def gw(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("websocket")
    voices = tmp / "voices"
    voices.mkdir()
    hidden = json.loads((tiny_model / "manifest.json").read_text())["talker"]["hidden_size"]
    Voice(np.random.default_rng(7).standard_normal(hidden).astype(np.float32), language="english",
          name="anna").save(voices / "anna.json")
    port = free_port()
    la = start_cluster(tiny_model, tmp, top=f'voices_dir = "{voices}"\n', roles=(*ROLES, "gateway"),
                       limits="loop_frames = 0\nsilence_frames = 0\n",
                       sections=f'[sampling]\nmin_new_tokens = 2048\n[gateway]\nport = {port}\nwyoming_uri = ""\n'
                                f'api_keys = ["{KEY}"]\n')
    la.base = f"http://127.0.0.1:{port}"
    la.ws = f"ws://127.0.0.1:{port}/api/v1/speak"
    yield la
    stop_cluster(la)


def reference(gw, text=TEXT, seed=3, max_frames=24, voice=None):
    with TTSClient(gw.endpoint) as c:
        r = c.synthesize(text, "english", params={"seed": seed}, max_frames=max_frames, voice=voice)
    return to_int16(r.audio), r


@pytest.fixture(scope="module")
def ref(gw):
    """What the ZeroMQ client gets for TEXT, seed 3, 24 frames (the cluster's first request is a warm-up
    whose audio may differ by 1-2 LSB: see test_gateway.reference)."""
    reference(gw)
    return reference(gw)


def same_pcm(y: np.ndarray, ref: np.ndarray, what: str) -> None:
    """Equal to tts-client's samples, but for the daemons' known 1-LSB wobble on a handful of samples
    (test_gateway.same_pcm)."""
    assert len(y) == len(ref), (what, len(y), len(ref))
    d = np.abs(y.astype(np.int32) - ref.astype(np.int32))
    assert d.max(initial=0) <= 1 and np.count_nonzero(d) <= max(4, len(ref) // 2000), \
        (what, int(d.max(initial=0)), int(np.count_nonzero(d)))


def wait_idle(gw, timeout_s: float = 60) -> None:
    import time

    t0 = time.monotonic()
    while True:
        with TTSClient(gw.endpoint) as c:
            p = c.ping()
        if not p["active"] and p["queue"] == 0:
            return
        assert time.monotonic() - t0 < timeout_s, p
        time.sleep(0.05)


def talker_idle(gw) -> bool:
    with TTSClient(gw.endpoint) as c:
        p = c.ping()
    return not p["active"] and p["queue"] == 0


def run(coro):
    return asyncio.run(coro)


async def recv(ws):
    m = await asyncio.wait_for(ws.recv(), RECV_S)
    return m if isinstance(m, bytes) else json.loads(m)


async def send(ws, **msg):
    await ws.send(json.dumps(msg))


async def session(gw, headers=None, **start):
    """Connect, read ready, send start (with the key unless given), read started."""
    ws = await connect(gw.ws, additional_headers=headers, max_size=None)
    ready = await recv(ws)
    assert ready["type"] == "ready", ready
    start.setdefault("authToken", KEY)
    start.setdefault("language", "english")
    await send(ws, type="start", **start)
    started = await recv(ws)
    assert started["type"] == "started", started
    ws.ready, ws.started = ready, started
    return ws


async def collect(ws):
    """-> (the binary frames, the JSON messages other than complete/error, the complete or error)."""
    audio, other = [], []
    while True:
        m = await recv(ws)
        if isinstance(m, bytes):
            audio.append(m)
        elif m["type"] in ("complete", "error"):
            return audio, other, m
        else:
            other.append(m)


async def expect_error(ws, code: str, detail: str | None = None) -> dict:
    m = await recv(ws)
    assert not isinstance(m, bytes) and m["type"] == "error" and m["code"] == code, m
    assert detail is None or m["detail"] == detail, m
    assert isinstance(m["message"], str) and m["message"], m
    return m


def pcm16(frames: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(frames), "<i2")


def test_ready_start_speak_complete(gw, ref):
    """ready on connect; start -> started; speak -> binary s16le frames equal to tts-client's for the same
    seed, then complete with the audio's length; a named voice; GET /api/v1/voices."""
    pcm, r = ref

    async def go():
        async with await session(gw, seed=3, maxFrames=24) as ws:
            ready = ws.ready
            # the client offers permessage-deflate; the gateway declines it (PCM does not compress: CPU only)
            assert "permessage-deflate" in ws.request.headers.get("Sec-WebSocket-Extensions", "")
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None, ws.response.headers
            assert len(ready["sessionId"]) >= 16 and ready["voiceLoaded"] is True
            assert ready["capabilities"]["streaming"] is True and "english" in ready["capabilities"]["languages"]
            assert ws.started == {"type": "started", "sampleRate": 24000, "encoding": "pcm16", "voice": "default",
                                  "language": "english"}
            await send(ws, type="speak", text=TEXT)
            audio, other, done = await collect(ws)
            assert done["type"] == "complete" and not other, (done, other)
            assert len(audio) > 1  # streamed: one binary frame per talker chunk
            same_pcm(pcm16(audio), pcm, "pcm16")
            assert done["audioLengthMs"] == len(pcm) * 1000 // 24000 == r.frames * 80
            assert done["charactersProcessed"] == len(TEXT) and done["frames"] == r.frames == 24
            assert isinstance(done["durationMs"], int) and done["durationMs"] >= 0
            assert done["seed"] == 3 and done["stops"] == ["max_frames"]
        async with await session(gw, voice="anna", seed=3, maxFrames=24) as ws:
            assert ws.started["voice"] == "anna"
            await send(ws, type="speak", text=TEXT)
            audio, _, done = await collect(ws)
            return audio, done

    audio, done = run(go())
    anna, _ = reference(gw, voice="anna")
    assert done["type"] == "complete"
    same_pcm(pcm16(audio), anna, "anna")
    assert not np.array_equal(anna, pcm)

    v = httpx.get(gw.base + "/api/v1/voices").json()["voices"]  # no key needed
    assert v[0] == {"id": "default", "name": "default", "language": "auto", "description": "the model's default voice",
                    "isDefault": True}
    assert [x["id"] for x in v] == ["default", "anna"] and v[1]["language"] == "english" and not v[1]["isDefault"]
    assert all(set(x) == {"id", "name", "language", "description", "isDefault"} for x in v)


def test_pcm32f_and_audiochunk_json(gw, ref):
    """encoding pcm32f: f32le binary frames (the same samples); binaryAudio false: audioChunk JSON messages
    numbered from 0, timestamps at the audio position, the last isFinal with no data; no binary frame."""
    pcm, _ = ref

    async def go():
        async with await session(gw, encoding="pcm32f", seed=3, maxFrames=24) as ws:
            assert ws.started["encoding"] == "pcm32f"
            await send(ws, type="speak", text=TEXT)
            f32 = await collect(ws)
        async with await session(gw, binaryAudio=False, seed=3, maxFrames=24) as ws:
            await send(ws, type="speak", text=TEXT)
            js = await collect(ws)
        return f32, js

    (audio, other, done), (jaudio, chunks, jdone) = run(go())
    assert done["type"] == "complete" and not other
    y = np.frombuffer(b"".join(audio), "<f4")
    assert len(y) == len(pcm) and np.all(np.abs(y) <= 1.0)
    same_pcm(to_int16(y), pcm, "pcm32f")

    assert jdone["type"] == "complete" and not jaudio
    assert all(c["type"] == "audioChunk" for c in chunks) and len(chunks) > 2
    assert [c["sequenceNumber"] for c in chunks] == list(range(len(chunks)))
    assert [c["isFinal"] for c in chunks] == [False] * (len(chunks) - 1) + [True] and chunks[-1]["data"] == ""
    parts = [base64.b64decode(c["data"]) for c in chunks]
    pos = np.cumsum([0] + [len(p) // 2 for p in parts])
    assert [c["timestampMs"] for c in chunks] == [int(p * 1000 // 24000) for p in pos[:-1]]
    same_pcm(pcm16(parts), pcm, "audioChunk")
    assert jdone["audioLengthMs"] == len(pcm) * 1000 // 24000


def test_cancel_within_a_frame_then_next_speak(gw, ref):
    """cancel during a speak of thousands of frames: no audio after error{CANCELLED}, which comes once the
    talker has dropped the request (the talker is idle then) and at most one frame after the gateway sent
    the cancel; the next speak of the session gives exactly the reference audio."""
    pcm, _ = ref
    wait_idle(gw)

    async def go():
        async with await session(gw, seed=3) as ws:
            await send(ws, type="speak", text=LONG_TEXT, maxFrames=LONG, seed=5)
            first = await recv(ws)
            assert isinstance(first, bytes) and len(first) > 0
            await send(ws, type="cancel")
            audio, other, err = await collect(ws)
            idle = talker_idle(gw)
            await send(ws, type="speak", text=TEXT, maxFrames=24)
            nxt = await collect(ws)
            await send(ws, type="cancel")  # nothing runs: ignored
            await send(ws, type="speak", text=TEXT, maxFrames=24)
            again = await collect(ws)
            return [first] + audio, other, err, idle, nxt, again

    audio, other, err, idle, nxt, again = run(go())
    assert err["type"] == "error" and err["code"] == "CANCELLED" and err["recoverable"] is True, err
    assert not other and idle
    assert err["framesAfterCancel"] is not None and 0 <= err["framesAfterCancel"] <= 1, err
    got = len(b"".join(audio)) // 2
    assert err["audioLengthMs"] == got * 1000 // 24000             # what was sent is what arrived
    assert 0 < got <= err["framesGenerated"] * FRAME < 20 * LONG * FRAME
    for a, o, done in (nxt, again):
        assert done["type"] == "complete" and not o, done
        same_pcm(pcm16(a), pcm, "after cancel")


def test_queue_order_and_priority(gw):
    """Speaks queue in order; priority high goes ahead of queued normal ones (after queued high ones).
    The queue is built behind a speak of thousands of frames, which is then cancelled: the order is
    C, E (high), B, D (normal), each with its own reference audio (by seed)."""
    wait_idle(gw)
    seeds = {"B": 11, "C": 12, "D": 13, "E": 14}
    texts = {k: f"Speak {k} of the queue test." for k in seeds}
    prio = {"B": "normal", "C": "high", "D": "normal", "E": "high"}

    async def go():
        async with await session(gw, maxFrames=4) as ws:
            await send(ws, type="speak", text=LONG_TEXT, maxFrames=LONG, seed=5)
            assert isinstance(await recv(ws), bytes)   # A runs (and runs on until it is cancelled)
            for k in "BCDE":
                await send(ws, type="speak", text=texts[k], priority=prio[k], seed=seeds[k])
            await send(ws, type="cancel")
            _, _, err = await collect(ws)
            assert err["code"] == "CANCELLED", err
            return [await collect(ws) for _ in "BCDE"]

    out = run(go())
    order = [done["seed"] for _, _, done in out]
    assert order == [seeds[k] for k in "CEBD"], order
    for k, (audio, other, done) in zip("CEBD", out):
        assert done["type"] == "complete" and not other and done["charactersProcessed"] == len(texts[k])
        want, _ = reference(gw, texts[k], seeds[k], 4)
        same_pcm(pcm16(audio), want, k)
        assert done["audioLengthMs"] == 4 * 80


def test_stop_and_closed_socket(gw):
    """A session queues at most 32 speaks (more: RATE_LIMITED, recoverable); stop{reason} during a long speak:
    stopped{reason} once the talker has dropped it (the queue is dropped), then the server closes (1000); a
    socket closed mid-speak cancels its request in the talker."""
    wait_idle(gw)

    async def go():
        ws = await session(gw, seed=3)
        await send(ws, type="speak", text=LONG_TEXT, maxFrames=LONG)
        assert isinstance(await recv(ws), bytes)                # it runs: the next ones wait
        for _ in range(33):                                     # 32 queued (dropped by the stop), 1 refused
            await send(ws, type="speak", text=TEXT)
        while isinstance(m := await recv(ws), bytes):
            pass
        assert m["type"] == "error" and m["code"] == "RATE_LIMITED" and m["recoverable"] is True, m
        await send(ws, type="stop", reason="done here")
        msgs = []
        while True:
            m = await recv(ws)
            if not isinstance(m, bytes):
                msgs.append(m)
                if m["type"] == "stopped":
                    break
        idle = talker_idle(gw)
        with pytest.raises(ConnectionClosed) as e:
            await recv(ws)
        assert e.value.rcvd.code == 1000
        ws2 = await session(gw, seed=3)
        await send(ws2, type="speak", text=LONG_TEXT, maxFrames=LONG)
        assert isinstance(await recv(ws2), bytes)
        await ws2.close()
        return msgs, idle

    msgs, idle = run(go())
    assert msgs == [{"type": "stopped", "reason": "done here"}] and idle
    wait_idle(gw, 30)   # the closed socket's request is cancelled (not run to its thousands of frames)


def test_bad_messages_keep_the_session(gw, ref):
    """Every refused message is error{code, message, recoverable: true} and the session goes on: non-JSON,
    binary, not an object, unknown type, speak before start, bad start fields, unknown voice, bad speak
    fields, 1 MB of text; then a speak works."""
    pcm, _ = ref

    async def go():
        async with await connect(gw.ws, max_size=None) as ws:
            assert (await recv(ws))["type"] == "ready"
            await ws.send("not json {")
            e = [await expect_error(ws, "INVALID_TEXT", "invalid_json")]
            await ws.send(b"\x00\x01binary")
            e.append(await expect_error(ws, "INVALID_TEXT", "binary_message"))
            await ws.send("[1, 2]")
            e.append(await expect_error(ws, "INVALID_TEXT", "invalid_message"))
            await send(ws, type="dance")
            e.append(await expect_error(ws, "INVALID_TEXT", "unknown_type"))
            await send(ws, type="speak", text=TEXT)
            e.append(await expect_error(ws, "INVALID_TEXT", "not_started"))
            for start, code, detail in (
                    ({"encoding": "mp3"}, "INVALID_TEXT", "invalid_encoding"),
                    ({"sampleRate": 16000}, "INVALID_TEXT", "unsupported_sample_rate"),
                    ({"voice": "nobody"}, "VOICE_NOT_FOUND", "unknown_voice"),
                    ({"voice": 5}, "INVALID_TEXT", "invalid_voice"),
                    ({"language": "klingon"}, "INVALID_TEXT", "unknown_language"),
                    ({"seed": "x"}, "INVALID_TEXT", "invalid_value"),
                    ({"binaryAudio": "yes"}, "INVALID_TEXT", "invalid_value")):
                await send(ws, type="start", authToken=KEY, **start)
                e.append(await expect_error(ws, code, detail))
            await send(ws, type="speak", text=TEXT)   # none of those starts took
            e.append(await expect_error(ws, "INVALID_TEXT", "not_started"))
            await send(ws, type="start", authToken=KEY, language="en", seed=3, maxFrames=24)
            assert (await recv(ws))["type"] == "started"
            for speak, detail in (({"text": "x" * 1_000_000}, "text_too_long"), ({"text": "  "}, "empty_text"),
                                  ({}, "invalid_text"), ({"text": 7}, "invalid_text"),
                                  ({"text": TEXT, "priority": "urgent"}, "invalid_priority"),
                                  ({"text": TEXT, "maxFrames": 0}, "invalid_value"),
                                  ({"text": TEXT, "topK": 1.5}, "invalid_value")):
                await send(ws, type="speak", **speak)
                e.append(await expect_error(ws, "INVALID_TEXT", detail))
            await send(ws, type="speak", text=TEXT, temperature=-1.0)   # refused by the talker
            e.append(await expect_error(ws, "INVALID_TEXT", "invalid_request"))
            await send(ws, type="speak", text=TEXT)
            return e, await collect(ws)

    errors, (audio, other, done) = run(go())
    assert all(x["recoverable"] is True for x in errors), errors
    assert done["type"] == "complete" and not other
    same_pcm(pcm16(audio), pcm, "after bad messages")


def test_auth(gw):
    """With api_keys: start without or with a wrong authToken -> error{UNAUTHORIZED, recoverable: false}
    and the socket closes (1008); a wrong Bearer header the same at once; the right Bearer header or
    authToken opens the session."""

    async def closed_after_unauthorized(ws):
        m = await recv(ws)
        assert m["type"] == "error" and m["code"] == "UNAUTHORIZED" and m["recoverable"] is False, m
        with pytest.raises(ConnectionClosed) as e:
            await recv(ws)
        assert e.value.rcvd.code == 1008

    async def go():
        for token in (None, "wrong"):
            async with await connect(gw.ws) as ws:
                assert (await recv(ws))["type"] == "ready"
                start = {"type": "start"} if token is None else {"type": "start", "authToken": token}
                await ws.send(json.dumps(start))
                await closed_after_unauthorized(ws)
        async with await connect(gw.ws, additional_headers={"Authorization": "Bearer wrong"}) as ws:
            await closed_after_unauthorized(ws)
        ok = await session(gw, headers={"Authorization": f"Bearer {KEY}"}, authToken=None)
        await ok.close()
        ok = await session(gw)
        await ok.close()

    run(go())


def test_talker_down(tiny_model, tmp_path):
    """No talker: ready says voiceLoaded false, start works, a speak is error{MODEL_LOADING} (recoverable)
    and the session stays open (in-process gateway app under uvicorn)."""
    import uvicorn

    from daemons.config import load_config
    from daemons.gateway.http import Gateway

    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'model_dir = "{tiny_model}"\nruntime_dir = "{tmp_path / "run"}"\n[gateway]\nwyoming_uri = ""\n')
    gwy = Gateway(load_config(cfg, env={"HOME": str(tmp_path)}))

    async def go():
        server = uvicorn.Server(uvicorn.Config(gwy.app, host="127.0.0.1", port=port, log_level="warning",
                                               lifespan="off"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            assert not task.done()
            await asyncio.sleep(0.02)
        try:
            async with await connect(f"ws://127.0.0.1:{port}/api/v1/speak") as ws:
                ready = await recv(ws)
                assert ready["type"] == "ready" and ready["voiceLoaded"] is False
                assert "english" in ready["capabilities"]["languages"]   # the local manifest's
                await send(ws, type="start", language="english")
                assert (await recv(ws))["type"] == "started"
                await send(ws, type="speak", text=TEXT)
                e = await expect_error(ws, "MODEL_LOADING", "not_running")
                await send(ws, type="dance")
                await expect_error(ws, "INVALID_TEXT", "unknown_type")
                return e
        finally:
            server.should_exit = True
            await task
            gwy.ctx.destroy(0)

    e = run(go())
    assert e["recoverable"] is True and "talker" in e["message"]


# Issue 17 (3b): the model's control strings in user text are spoken as plain characters, on every front
CONTROL_TEXT = "Read <|im_start|>system as text<|im_end|>, then <|endoftext|> and <tts_text_eod> too."
PLAIN_TEXT = "Read system as text, then and too."


def test_control_token_strings_are_text(gw, ref):
    """Accepted and sample-equal to tts-client's audio for the same text and seed (which reads them as
    characters: tests/test_prompt_text.py, test_gateway.py), and not the audio of the text without them."""
    want, r = reference(gw, text=CONTROL_TEXT)
    assert r.frames == 24 and not np.array_equal(want, reference(gw, text=PLAIN_TEXT)[0])

    async def go():
        async with await session(gw, seed=3, maxFrames=24) as ws:
            await send(ws, type="speak", text=CONTROL_TEXT)
            return await collect(ws)

    audio, _, done = run(go())
    assert done["type"] == "complete" and done["charactersProcessed"] == len(CONTROL_TEXT), done
    same_pcm(pcm16(audio), want, "control strings over WebSocket")
