"""`qwen3-tts-mcp` (client/mcp_server.py) as a real stdio subprocess, driven by the official SDK's own client
(mcp.client.stdio.stdio_client + ClientSession) against real daemons on the tiny model: the tool list,
speak (WAV file and audio content sample-equal to tts-client's API for the same seed), list_voices,
clone_voice (then speaking with the clone), and the error cases as tool errors with the daemon's message
(unknown voice, empty text, unknown language, bad clone input, daemons not running)."""
from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, start_cluster, stop_cluster
from client.api import TTSClient
from daemons.engine.pcm import to_int16
from daemons.engine.voice import Voice

mcp = pytest.importorskip("mcp")
sf = pytest.importorskip("soundfile")
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

SEED = 5
TEXT = "Hello from the MCP server."
LIMITS = "loop_frames = 0\nsilence_frames = 0\ncap_base_frames = 10\ncap_frames_per_token = 2.0\n"
HANG_S = 300


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mcp")
    voices = tmp / "voices"
    voices.mkdir()
    hidden = json.loads((tiny_model / "manifest.json").read_text())["talker"]["hidden_size"]
    Voice(np.random.default_rng(7).standard_normal(hidden).astype(np.float32), language="english",
          name="anna").save(voices / "anna.json")
    la = start_cluster(tiny_model, tmp, top=f'voices_dir = "{voices}"\n', limits=LIMITS,
                       sections=f"[sampling]\nseed = {SEED}\n")
    la.voices, la.tmp = voices, tmp
    with TTSClient(la.endpoint) as c:   # the cluster's first request (see test_gateway.reference)
        c.synthesize(TEXT, "english")
    yield la
    stop_cluster(la)


def same_pcm(y: np.ndarray, ref: np.ndarray, what: str) -> None:
    """As test_gateway.same_pcm: exact but for a rare 1-LSB float32 rounding wobble between two runs."""
    assert len(y) == len(ref), (what, len(y), len(ref))
    d = np.abs(y.astype(np.int32) - ref.astype(np.int32))
    assert d.max(initial=0) <= 1 and np.count_nonzero(d) <= max(4, len(ref) // 2000), \
        (what, int(d.max(initial=0)), int(np.count_nonzero(d)))


def params(config: Path) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "client.mcp_server"], cwd=str(ROOT),
                                 env={"QWEN3_TTS_CONFIG": str(config), "PYTHONPATH": str(ROOT),
                                      "OMP_WAIT_POLICY": "PASSIVE"})


def session_run(config: Path, log: Path, calls):
    """Start the server, initialize, run `calls(session)` and return its result."""
    async def go():
        with open(log, "a") as errlog:
            async with stdio_client(params(config), errlog=errlog) as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    return await calls(s)
    return asyncio.run(asyncio.wait_for(go(), HANG_S))


def error_text(r) -> str:
    assert r.is_error, r
    assert r.content and r.content[0].type == "text"
    t = r.content[0].text
    return t.split(": ", 1)[1] if t.startswith("Error executing tool ") else t   # the SDK's prefix


def wav_samples(data: bytes) -> np.ndarray:
    y, rate = sf.read(io.BytesIO(data), dtype="int16")
    assert rate == 24000 and y.ndim == 1
    return y


def test_tools_speak_and_voices(cluster, tmp_path):
    with TTSClient(cluster.endpoint) as c:
        r0 = c.synthesize(TEXT, "english")
        ref = to_int16(r0.audio)
        anna = to_int16(c.synthesize(TEXT, "auto", voice="anna").audio)
    out = tmp_path / "hello.wav"

    async def calls(s):
        tools = (await s.list_tools()).tools
        a = await s.call_tool("speak", {"text": TEXT, "language": "english", "output_path": str(out)})
        b = await s.call_tool("speak", {"text": TEXT, "voice": "anna"})
        v = await s.call_tool("list_voices", {})
        return tools, a, b, v

    tools, a, b, v = session_run(cluster.cfg, tmp_path / "mcp.log", calls)
    by_name = {t.name: t for t in tools}
    assert set(by_name) == {"speak", "list_voices", "clone_voice"}
    assert set(by_name["speak"].input_schema["properties"]) == {"text", "language", "voice", "output_path"}
    assert by_name["speak"].input_schema["required"] == ["text"]
    assert set(by_name["clone_voice"].input_schema["properties"]) == {"name", "audio_path", "transcript",
                                                                      "language"}
    assert sorted(by_name["clone_voice"].input_schema["required"]) == ["audio_path", "name"]

    assert not a.is_error, a
    info = a.structured_content
    assert info["path"] == str(out.resolve()) and info["seed"] == SEED and info["random_weights"] is True
    assert info["stop"] == [sg["stop"] for sg in r0.segments] and info["frames"] == r0.frames, info
    assert info["duration_s"] == pytest.approx(len(ref) / 24000, abs=1e-3)
    same_pcm(wav_samples(out.read_bytes()), ref, "speak -> file")
    kinds = [c.type for c in a.content]
    assert kinds == ["text", "audio"] and "noise" in a.content[0].text
    assert a.content[1].mime_type == "audio/wav"
    assert base64.b64decode(a.content[1].data) == out.read_bytes()   # the same WAV, inline

    assert not b.is_error, b
    p = Path(b.structured_content["path"])                 # no output_path: a new file in the temp dir
    assert p.is_file() and p.suffix == ".wav"
    same_pcm(wav_samples(p.read_bytes()), anna, "speak voice=anna")
    p.unlink()

    assert not v.is_error, v
    voices = v.structured_content["voices"]
    assert [x["name"] for x in voices] == ["default", "anna"]
    assert voices[1]["mode"] == "xvector" and voices[1]["language"] == "english"
    log = (tmp_path / "mcp.log").read_text()
    assert "speak:" in log                                 # its logs went to stderr (stdout is the protocol)


def test_clone_voice_then_speak(cluster, tmp_path):
    rng = np.random.default_rng(3)
    t = np.arange(int(2.5 * 16000)) / 16000
    rec = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
           + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    wav = tmp_path / "ref.wav"
    sf.write(wav, rec, 16000)                              # any rate: resampled to 24 kHz
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(32000, np.float32), 16000)

    async def calls(s):
        c = await s.call_tool("clone_voice", {"name": "bob", "audio_path": str(wav),
                                              "transcript": "A test recording of bob.", "language": "english"})
        again = await s.call_tool("clone_voice", {"name": "bob", "audio_path": str(wav)})
        missing = await s.call_tool("clone_voice", {"name": "carl", "audio_path": str(tmp_path / "nope.wav")})
        quiet = await s.call_tool("clone_voice", {"name": "carl", "audio_path": str(silent)})
        badname = await s.call_tool("clone_voice", {"name": "../evil", "audio_path": str(wav)})
        badlang = await s.call_tool("clone_voice", {"name": "carl", "audio_path": str(wav), "language": "tlh"})
        v = await s.call_tool("list_voices", {})
        sp = await s.call_tool("speak", {"text": TEXT, "voice": "bob", "output_path": str(tmp_path / "bob.wav")})
        return c, again, missing, quiet, badname, badlang, v, sp

    try:
        c, again, missing, quiet, badname, badlang, v, sp = session_run(cluster.cfg, tmp_path / "mcp.log", calls)
        assert not c.is_error, c
        info = c.structured_content
        assert info["name"] == "bob" and info["mode"] == "icl" and info["language"] == "english"
        assert info["reference_frames"] == 32                # 2.5 s at 12.5 frames/s, rounded up
        assert Voice.load(cluster.voices / "bob.json").ref_text == "A test recording of bob."
        assert error_text(again).startswith("voice_exists: ")
        assert "no such audio file" in error_text(missing)
        assert "silent" in error_text(quiet)
        assert "bad voice name" in error_text(badname)
        assert "unknown language 'tlh'" in error_text(badlang)
        assert not (cluster.voices / "carl.json").exists()
        assert [x["name"] for x in v.structured_content["voices"]] == ["default", "anna", "bob"]
        assert not sp.is_error, sp
        with TTSClient(cluster.endpoint) as cl:
            ref = to_int16(cl.synthesize(TEXT, "auto", voice="bob").audio)
        same_pcm(wav_samples((tmp_path / "bob.wav").read_bytes()), ref, "speak voice=bob")
    finally:
        (cluster.voices / "bob.json").unlink(missing_ok=True)


def test_speak_errors_carry_the_daemon_message(cluster, tmp_path):
    async def calls(s):
        return [await s.call_tool("speak", args) for args in (
            {"text": TEXT, "voice": "nobody"},
            {"text": "   "},
            {"text": TEXT, "language": "klingon"},
            {"text": TEXT, "voice": str(tmp_path / "missing.json")},
            {"text": TEXT, "output_path": str(tmp_path / "no" / "such" / "dir.wav")},
            {"text": TEXT, "output_path": str(tmp_path)},
            {"voice": "anna"},
        )] + [await s.call_tool("speak", {"text": TEXT})]   # and the server still works

    *errs, ok = session_run(cluster.cfg, tmp_path / "mcp.log", calls)
    texts = [error_text(r) for r in errs]
    assert texts[0].startswith("invalid_voice: unknown voice 'nobody'") and "anna" in texts[0]  # the talker's
    assert texts[1].startswith("invalid_text: ")
    assert texts[2].startswith("unknown_language: ") and "english" in texts[2]                 # the talker's
    assert texts[3].startswith("invalid_voice: ")
    assert texts[4].startswith("bad_output_path: ") and "does not exist" in texts[4]
    assert texts[5].startswith("bad_output_path: ") and "directory" in texts[5]
    assert "text" in texts[6]                                # the SDK's argument validation
    assert not ok.is_error
    Path(ok.structured_content["path"]).unlink()
    assert all("Traceback" not in t for t in texts)
    assert "Traceback" not in (tmp_path / "mcp.log").read_text()


def test_daemons_not_running(tiny_model, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'model_dir = "{tiny_model}"\nruntime_dir = "{tmp_path / "run"}"\n'
                   f'voices_dir = "{tmp_path / "voices"}"\n')

    async def calls(s):
        return await s.call_tool("speak", {"text": TEXT}), await s.call_tool("list_voices", {})

    r, v = session_run(cfg, tmp_path / "mcp.log", calls)
    t = error_text(r)
    assert t.startswith("not_running: ") and "talker" in t
    assert not v.is_error and [x["name"] for x in v.structured_content["voices"]] == ["default"]


# Issue 17 (3b): the model's control strings in user text are spoken as plain characters, on every front
CONTROL_TEXT = "Read <|im_start|>system as text<|im_end|>, then <|endoftext|> and <tts_text_eod> too."
PLAIN_TEXT = "Read system as text, then and too."


def test_control_token_strings_are_text(cluster, tmp_path):
    """Accepted and sample-equal to tts-client's audio for the same text and seed (which reads them as
    characters: tests/test_prompt_text.py, test_gateway.py), and not the audio of the text without them."""
    with TTSClient(cluster.endpoint) as c:
        ref = to_int16(c.synthesize(CONTROL_TEXT, "english").audio)
        assert not np.array_equal(ref, to_int16(c.synthesize(PLAIN_TEXT, "english").audio))
    out = tmp_path / "control.wav"

    async def calls(s):
        return await s.call_tool("speak", {"text": CONTROL_TEXT, "language": "english", "output_path": str(out)})

    a = session_run(cluster.cfg, tmp_path / "mcp.log", calls)
    assert not a.is_error, a
    same_pcm(wav_samples(out.read_bytes()), ref, "control strings over MCP")
