"""The Wyoming front (daemons/gateway/wyoming.py) in a real gateway process in front of the three daemons
on the tiny model, driven by the `wyoming` package's own AsyncTcpClient: describe, one-shot synthesis
sample-equal to tts-client's API for the same seed, streaming text (a block per sentence, audio before the
last chunk is sent), every error code with the connection usable afterwards, busy, a closed connection
cancelling its request, five connections at once, and the talker down (in-process front)."""
from __future__ import annotations

import asyncio
import json
import time
import uuid

import numpy as np
import pytest

from conftest import free_port, start_cluster, stop_cluster
from client.api import TTSClient
from daemons import protocol
from daemons.engine.pcm import to_int16
from daemons.engine.voice import Voice
from daemons.launcher import ROLES

wyoming = pytest.importorskip("wyoming")
from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.event import Event  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402
from wyoming.tts import (Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop,  # noqa: E402
                         SynthesizeStopped, SynthesizeVoice)

SEED = 11
TEXT = "Hello from Wyoming."
EN = SynthesizeVoice(language="en")
# Short frame caps (cap_base + per_token x tokens) keep requests short; the runaway rules off. A LONG request
# (twenty long sentences, each running at least about as many frames as it has tokens) runs for seconds.
LIMITS = ("queue_size = 4\nloop_frames = 0\nsilence_frames = 0\ncap_base_frames = 10\n"
          "cap_frames_per_token = 2.0\n")
LONG_TEXT = "This sentence is long enough for its frame cap to be large, by a wide margin indeed. " * 20
HANG_S = 180  # a hang guard only; nothing here asserts on time


@pytest.fixture(scope="module")
def wy(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wyoming")
    voices = tmp / "voices"
    voices.mkdir()
    hidden = json.loads((tiny_model / "manifest.json").read_text())["talker"]["hidden_size"]
    Voice(np.random.default_rng(7).standard_normal(hidden).astype(np.float32), language="english",
          name="anna").save(voices / "anna.json")
    port, wport = free_port(), free_port()
    la = start_cluster(tiny_model, tmp, top=f'voices_dir = "{voices}"\n', roles=(*ROLES, "gateway"),
                       limits=LIMITS,
                       sections=f"[sampling]\nseed = {SEED}\n[gateway]\nport = {port}\n"
                                f'wyoming_uri = "tcp://127.0.0.1:{wport}"\n')
    la.wport, la.voices = wport, voices
    with TTSClient(la.endpoint) as c:  # the cluster's first request (see reference() in test_gateway.py)
        c.synthesize(TEXT, "english")
    yield la
    stop_cluster(la)


def reference(wy, text: str, language: str = "english", **kw) -> np.ndarray:
    with TTSClient(wy.endpoint) as c:
        r = c.synthesize(text, language, **kw)
    assert r.seed == SEED and len(r.audio) > 0
    return to_int16(r.audio)


def same_pcm(y: np.ndarray, ref: np.ndarray, what: str) -> None:
    """As test_gateway.same_pcm: exact but for a rare 1-LSB float32 rounding wobble between two runs."""
    assert len(y) == len(ref), (what, len(y), len(ref))
    d = np.abs(y.astype(np.int32) - ref.astype(np.int32))
    assert d.max(initial=0) <= 1 and np.count_nonzero(d) <= max(4, len(ref) // 2000), \
        (what, int(d.max(initial=0)), int(np.count_nonzero(d)))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, HANG_S))


async def read(client) -> Event:
    ev = await client.read_event()
    assert ev is not None, "the server closed the connection"
    return ev


async def read_block(client, first: Event | None = None) -> tuple[np.ndarray, int]:
    """audio-start .. audio-stop -> (int16 samples, number of chunks); an error event fails."""
    ev = first or await read(client)
    assert AudioStart.is_type(ev.type), ev
    start = AudioStart.from_event(ev)
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    parts = []
    while True:
        ev = await read(client)
        if AudioStop.is_type(ev.type):
            pcm = np.frombuffer(b"".join(parts), "<i2")
            return pcm, len(parts)
        assert AudioChunk.is_type(ev.type), ev
        ch = AudioChunk.from_event(ev)
        assert (ch.rate, ch.width, ch.channels) == (24000, 2, 1) and len(ch.audio) % 2 == 0
        parts.append(ch.audio)


async def expect_error(client, code: str) -> str:
    ev = await read(client)
    assert Error.is_type(ev.type), ev
    err = Error.from_event(ev)
    assert err.code == code and err.text, err
    return err.text


def client(wy) -> AsyncTcpClient:
    return AsyncTcpClient("127.0.0.1", wy.wport)


def test_describe(wy):
    async def go():
        async with client(wy) as c:
            await c.write_event(Describe().event())
            info = Info.from_event(await read(c))
            (anna := wy.voices / "bob.json").write_text((wy.voices / "anna.json").read_text())
            try:
                await c.write_event(Describe().event())
                again = Info.from_event(await read(c))
            finally:
                anna.unlink()
        return info, again

    info, again = run(go())
    assert len(info.tts) == 1 and not info.asr
    p = info.tts[0]
    assert p.name == "qwen3-tts" and p.installed and p.supports_synthesize_streaming
    assert p.attribution.name and p.attribution.url.startswith("https://") and p.version
    assert "RANDOM WEIGHTS" in p.description   # the tiny model is noise
    assert [v.name for v in p.voices] == ["default", "anna"]
    for v in p.voices:
        assert v.installed and sorted(v.languages) == ["de", "en", "ru", "zh"]   # the tiny model's four
    assert [v.name for v in again.tts[0].voices] == ["default", "anna", "bob"]   # rebuilt on every describe


def test_synthesize_equals_tts_client(wy):
    ref = reference(wy, TEXT)
    anna = reference(wy, TEXT, "auto", voice="anna")

    async def go():
        async with client(wy) as c:
            out = []
            for voice in (EN, SynthesizeVoice(name="default", language="en_US"), SynthesizeVoice(name="anna")):
                await c.write_event(Synthesize(text=TEXT, voice=voice).event())
                if voice.name and voice.language:  # SynthesizeVoice.to_dict drops a language beside a name
                    await c.write_event(Event("synthesize", {"text": TEXT, "voice": {"name": voice.name,
                                                                                     "language": voice.language}}))
                    out.append(await read_block(c))
                out.append(await read_block(c))
            return out

    (a, na), (b0, _), (b, _), (c_, _) = run(go())
    same_pcm(a, ref, "language en")
    assert na >= 2                              # chunks as the talker's frames arrive, not one at the end
    same_pcm(b, ref, "voice default + en_US")
    assert len(b0) == len(ref)                  # default voice without a language: auto, same length
    same_pcm(c_, anna, "voice anna")


def test_streaming_text(wy):
    chunks = ["Hello from the", " stream. This is the second", " sentence of it. And", " a third one,",
              " to finish."]
    sentences = ["Hello from the stream.", "This is the second sentence of it.", "And a third one, to finish."]
    refs = [reference(wy, s) for s in sentences]

    async def go():
        log = []
        async with client(wy) as c:
            await c.write_event(SynthesizeStart(voice=EN).event())
            for ch in chunks[:4]:
                await c.write_event(SynthesizeChunk(text=ch).event())
                log.append("chunk")
            first = await read(c)                    # the first sentence is spoken while the text still comes
            log.append(first.type)
            await c.write_event(SynthesizeChunk(text=chunks[4]).event())
            log.append("chunk")
            await c.write_event(Synthesize(text="".join(chunks), voice=EN).event())  # compat: ignored
            await c.write_event(SynthesizeStop().event())
            blocks = [await read_block(c, first)]
            while True:
                ev = await read(c)
                if SynthesizeStopped.is_type(ev.type):
                    break
                blocks.append(await read_block(c, ev))
            # the connection goes on: a one-shot synthesize after the stream
            await c.write_event(Synthesize(text=TEXT, voice=EN).event())
            after = await read_block(c)
        return log, blocks, after

    log, blocks, after = run(go())
    assert log == ["chunk"] * 4 + ["audio-start", "chunk"]   # first audio before the last chunk was sent
    assert len(blocks) == len(sentences)                   # one audio block per sentence, no extra one
    for (pcm, _), ref, s in zip(blocks, refs, sentences):
        same_pcm(pcm, ref, s)
    assert len(after[0]) > 0


def test_errors_keep_the_connection(wy):
    async def go():
        texts = []
        async with client(wy) as c:
            async def err(event, code):
                await c.write_event(event)
                texts.append(await expect_error(c, code))

            await err(Synthesize(text="   ").event(), "invalid_text")
            await err(Event("synthesize", {"voice": {"name": "anna"}}), "bad_request")
            await err(Synthesize(text="x" * 20001).event(), "text_too_long")
            await err(Synthesize(text=TEXT, voice=SynthesizeVoice(name="nobody")).event(), "unknown_voice")
            await err(Synthesize(text=TEXT, voice=SynthesizeVoice(language="tlh")).event(), "unknown_language")
            await err(SynthesizeChunk(text="stray").event(), "bad_request")
            await err(SynthesizeStop().event(), "bad_request")
            # a stream with an unknown voice: one error, its text dropped, and still synthesize-stopped
            await c.write_event(SynthesizeStart(voice=SynthesizeVoice(name="nobody")).event())
            await c.write_event(SynthesizeChunk(text="Dropped. All of it. ").event())
            await c.write_event(SynthesizeStop().event())
            texts.append(await expect_error(c, "unknown_voice"))
            assert SynthesizeStopped.is_type((await read(c)).type)
            await c.write_event(Event("no-such-event", {"x": 1}))   # ignored
            await c.write_event(Describe().event())
            assert Info.is_type((await read(c)).type)
            await c.write_event(Synthesize(text=TEXT, voice=EN).event())
            pcm, _ = await read_block(c)
        return texts, pcm

    texts, pcm = run(go())
    assert "nobody" in texts[3] and "anna" in texts[3]        # names the voices there are
    assert "tlh" in texts[4] and "english" in texts[4]         # the talker's message, with its languages
    same_pcm(pcm, reference(wy, TEXT), "after the errors")


def _long_requests(wy, n: int) -> list:
    """n long requests, each on its own DEALER (one connection each, as the gateway does)."""
    import zmq

    socks = []
    for _ in range(n):
        s = zmq.Context.instance().socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(wy.endpoint)
        rid = uuid.uuid4().hex
        s.send_multipart(protocol.encode("synthesize", id=rid, text=LONG_TEXT, language="english", params={}))
        assert s.poll(30000) and protocol.decode(s.recv_multipart()).type == "accepted"
        socks.append((s, rid))
    return socks


def _ping(wy) -> dict:
    with TTSClient(wy.endpoint) as c:
        return c.ping()


def _wait_idle(wy, timeout_s: float) -> None:
    t0 = time.monotonic()
    while True:
        p = _ping(wy)
        if not p["active"] and p["queue"] == 0:
            return
        assert time.monotonic() - t0 < timeout_s, p
        time.sleep(0.05)


def test_busy_and_a_closed_connection_cancels(wy):
    """With the talker's queue full (1 generating + queue_size 4 waiting, all long), synthesize gets
    error{busy}; once they are cancelled the same connection is served. A connection closed in the middle
    of a long synthesis cancels it in the talker."""
    _wait_idle(wy, 60)
    socks = _long_requests(wy, 5)
    try:
        p = _ping(wy)
        assert p["active"] and p["queue"] == 4, p

        async def busy():
            async with client(wy) as c:
                await c.write_event(Synthesize(text=TEXT, voice=EN).event())
                text = await expect_error(c, "busy")
                for s, rid in socks:
                    s.send_multipart(protocol.encode("cancel", id=rid))
                await asyncio.get_running_loop().run_in_executor(None, _wait_idle, wy, 30)
                await c.write_event(Synthesize(text=TEXT, voice=EN).event())
                return text, (await read_block(c))[0]

        text, pcm = run(busy())
    finally:
        for s, _ in socks:
            s.close(0)
    assert "try again" in text
    same_pcm(pcm, reference(wy, TEXT), "after busy")

    async def hang_up():
        async with client(wy) as c:
            await c.write_event(Synthesize(text=LONG_TEXT, voice=EN).event())
            assert AudioStart.is_type((await read(c)).type)
            assert AudioChunk.is_type((await read(c)).type)
        # closed here, its synthesis far from done (twenty long sentences)

    run(hang_up())
    _wait_idle(wy, 20)   # the talker dropped it (a hang guard; it would otherwise run for a long while)


def test_five_connections_at_once(wy):
    ref = reference(wy, TEXT)

    async def one(i):
        async with client(wy) as c:
            await c.write_event(Describe().event())
            assert Info.is_type((await read(c)).type)
            await c.write_event(Synthesize(text=TEXT, voice=EN).event())
            return (await read_block(c))[0]

    async def go():
        return await asyncio.gather(*(one(i) for i in range(5)))

    for i, pcm in enumerate(run(go())):
        same_pcm(pcm, ref, f"connection {i}")


def test_talker_down(tiny_model, tmp_path):
    """No talker at the configured endpoint: describe still answers (voices, the local manifest's
    languages), synthesize gets error{not_running}, and the connection stays usable."""
    from daemons.config import load_config
    from daemons.gateway.wyoming import start_wyoming

    port = free_port()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'model_dir = "{tiny_model}"\nruntime_dir = "{tmp_path / "run"}"\n[gateway]\n'
                   f'wyoming_uri = "tcp://127.0.0.1:{port}"\n')
    conf = load_config(cfg, env={"HOME": str(tmp_path)})

    async def go():
        front = await start_wyoming(conf)
        try:
            async with AsyncTcpClient("127.0.0.1", port) as c:
                await c.write_event(Synthesize(text=TEXT).event())
                text = await expect_error(c, "not_running")
                await c.write_event(Describe().event())
                info = Info.from_event(await read(c))
                await c.write_event(Synthesize(text="").event())
                await expect_error(c, "invalid_text")
            # hostile input: unreadable headers get error{bad_request} and close that connection only, wrong
            # types are errors
            for raw in (b"not json\n", b'{"type": "synthesize", "data_length": "x"}\n', b"[1, 2]\n"):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(raw)
                await w.drain()
                reply = await r.read()  # (read() returns at the close)
                assert reply.startswith(b'{"type": "error"') and b'"code": "bad_request"' in reply, reply
                w.close()
            async with AsyncTcpClient("127.0.0.1", port) as c:
                for data in ({"text": 5}, {"text": "x", "voice": "anna"}, {"text": "x", "voice": {"name": 3}}):
                    await c.write_event(Event("synthesize", data))
                    await expect_error(c, "bad_request")
                other = AsyncTcpClient("127.0.0.1", port)
                await other.connect()
                await front.stop()          # the gateway stopping: open connections are closed
                front = None
                assert await c.read_event() is None and await other.read_event() is None
                await other.disconnect()
            return text, info
        finally:
            if front is not None:
                await front.stop()

    text, info = run(go())
    assert "talker" in text and "run" in text
    assert [v.name for v in info.tts[0].voices] == ["default"]
    assert sorted(info.tts[0].voices[0].languages) == ["de", "en", "ru", "zh"]
    off = load_config(cfg, env={"HOME": str(tmp_path), "QWEN3_TTS_GATEWAY_WYOMING_URI": "off"})
    assert asyncio.run(start_wyoming(off)) is None


def test_sentences_of_a_stream():
    from daemons.gateway.wyoming import _Stream, model_language

    s = _Stream({})
    got = []
    for piece in ["Dr. Smith went", " home. It was", " late", "! Then ", "he slept", ".\n\nNext para", "graph"]:
        s.buffer += piece
        got.append(s.sentences(False, 300))
    # a sentence goes out once the next one has begun (a short start like "It was" is joined to it first)
    assert got == [[], [], ["Dr. Smith went home."], [], ["It was late!"], ["Then he slept."], []]
    assert s.sentences(True, 300) == ["Next paragraph"] and s.buffer == ""
    assert [model_language(x) for x in ("en", "en_US", "en-GB", "English", "zh", "", None, "auto", "tlh")] == \
        ["english", "english", "english", "english", "chinese", "auto", "auto", "auto", "tlh"]


# Issue 17 (3b): the model's control strings in user text are spoken as plain characters, on every front
CONTROL_TEXT = "Read <|im_start|>system as text<|im_end|>, then <|endoftext|> and <tts_text_eod> too."
PLAIN_TEXT = "Read system as text, then and too."


def test_control_token_strings_are_text(wy):
    """Accepted and sample-equal to tts-client's audio for the same text and seed (which reads them as
    characters: tests/test_prompt_text.py, test_gateway.py), and not the audio of the text without them."""
    ref = reference(wy, CONTROL_TEXT)
    assert not np.array_equal(ref, reference(wy, PLAIN_TEXT))

    async def go():
        async with client(wy) as c:
            await c.write_event(Synthesize(text=CONTROL_TEXT, voice=EN).event())
            return await read_block(c)

    pcm, _ = run(go())
    same_pcm(pcm, ref, "control strings over Wyoming")
