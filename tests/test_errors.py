"""Bad inputs to the converter and the engines give clear, typed errors (no hang, no traceback)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from daemons.engine.errors import InvalidRequest, InvalidText, ModelError, UnknownLanguage


def _copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return dst


def _run(*args):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("breakage, message", [
    ("no-dir", "checkpoint directory not found"),
    ("no-config", "config.json missing"),
    ("bad-json", "not valid JSON"),
    ("wrong-model-type", "model_type is 'llama'"),
    ("custom-voice", "only Base models are supported"),
    ("25hz", "only the 12 Hz speech tokenizer"),
    ("no-weights", "model.safetensors missing"),
    ("no-speech-tokenizer", "speech_tokenizer/config.json missing"),
    ("no-text-tokenizer", "text tokenizer files missing"),
])
def test_converter_refuses(breakage, message, tiny_ckpt, tmp_path):
    from scripts.convert import ConversionError, convert

    ck = tmp_path / "ck"
    if breakage != "no-dir":
        _copy_ckpt(tiny_ckpt, ck)
    cfg_path = ck / "config.json"

    def edit(**kv):
        cfg = json.loads(cfg_path.read_text())
        cfg.update(kv)
        cfg_path.write_text(json.dumps(cfg))

    if breakage == "no-config":
        cfg_path.unlink()
    elif breakage == "bad-json":
        cfg_path.write_text("{not json")
    elif breakage == "wrong-model-type":
        edit(model_type="llama")
    elif breakage == "custom-voice":
        edit(tts_model_type="custom_voice")
    elif breakage == "25hz":
        edit(tokenizer_type="qwen3_tts_tokenizer_25hz")
    elif breakage == "no-weights":
        (ck / "model.safetensors").unlink()
    elif breakage == "no-speech-tokenizer":
        shutil.rmtree(ck / "speech_tokenizer")
    elif breakage == "no-text-tokenizer":
        for f in ("tokenizer.json", "vocab.json"):
            (ck / f).unlink()
    with pytest.raises(ConversionError, match=message):
        convert(ck, tmp_path / "out", "f32")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_converter_cli_error_is_one_line(tmp_path):
    r = _run("scripts/convert.py", str(tmp_path / "nothing"), str(tmp_path / "out"))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: checkpoint directory not found")
    assert "Traceback" not in r.stderr


def test_converter_rejects_shape_mismatch(tiny_ckpt, tmp_path):
    """A config that disagrees with the weights is refused, not silently converted."""
    from scripts.convert import ConversionError, convert

    ck = _copy_ckpt(tiny_ckpt, tmp_path / "ck")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["talker_config"]["vocab_size"] += 8
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match="codec_embedding.weight has shape"):
        convert(ck, tmp_path / "out", "f32")


def test_engine_bad_inputs(synth):
    b = synth.prompts
    for text in ("", "   \n\t"):
        with pytest.raises(InvalidText, match="empty"):
            b.build(text, "english")
    with pytest.raises(InvalidText, match="not valid UTF-8"):
        b.build(b"\xff\xfe broken", "english")
    with pytest.raises(InvalidText, match="too long"):
        b.build("a" * 1_000_000, "english")
    with pytest.raises(UnknownLanguage, match="unknown language 'klingon'; supported: auto, chinese"):
        b.build("hello", "klingon")
    with pytest.raises(InvalidRequest, match="x-vector must be"):
        b.build("hello", "english", xvector=np.zeros(3, dtype=np.float32))
    with pytest.raises(InvalidRequest, match="reference codes"):
        b.build("hello", "english", ref_codes=np.full((4, 16), 10 ** 6), ref_text="hi")
    # language names are case-insensitive, like the official wrapper
    assert b.build("hello", "English").prefill.shape == b.build("hello", "english").prefill.shape


def test_model_dir_errors(tiny_model, tmp_path):
    from daemons.engine.manifest import ModelDir

    with pytest.raises(ModelError, match="not found"):
        ModelDir(tmp_path / "missing")
    with pytest.raises(ModelError, match="no manifest.json"):
        ModelDir(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    (broken / "talker.gguf").unlink()
    with pytest.raises(ModelError, match="talker.gguf is missing"):
        ModelDir(broken)


def test_synth_cli_errors(tiny_model):
    r = _run("-m", "daemons.engine.synth", "--model-dir", str(tiny_model), "--text", "hi", "--language", "klingon")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown language 'klingon'"), r.stderr
    r = _run("-m", "daemons.engine.synth", "--model-dir", str(tiny_model), "--text", " ", "--language", "english")
    assert r.returncode == 2 and "text is empty" in r.stderr and "Traceback" not in r.stderr
    r = _run("-m", "daemons.engine.synth", "--model-dir", "/nonexistent", "--text", "hi")
    assert r.returncode == 2 and "model directory not found" in r.stderr


# --- issue 11, class 1: nothing malformed escapes as anything but a typed error ---------------------------
def _hdr(**h) -> bytes:
    return json.dumps({"v": 1, "type": "x", **h}).encode()


@pytest.mark.parametrize("frames, match", [
    ([b"[" * 1100 + b"]" * 1100], "nests deeper"),                                   # RecursionError before
    ([b'{"v":1,"type":"x","a":' + b"[" * 40 + b"]" * 40 + b"}"], "nests deeper"),
    ([_hdr(arrays=[{"name": "c", "dtype": "<i8", "shape": [True, 16]}]), b"\x00" * 128], "bad array spec"),
    ([_hdr(arrays=[{"name": "c", "dtype": "<i8", "shape": [1 << 30, 1 << 30, 16]}]), b""], "do not match"),
    ([_hdr(arrays=[{"name": "c", "dtype": [], "shape": [1]}]), b"\x00" * 8], "bad array spec"),   # unhashable
    ([_hdr(arrays=[{"name": "c", "dtype": "<i8", "shape": [1.0]}]), b"\x00" * 8], "bad array spec"),
    ([_hdr(arrays=[{"name": "c", "dtype": "<i8", "shape": [1]}] * 2), b"\x00" * 8, b"\x00" * 8], "twice"),
    ([b'{"v":1,"type":"x","id":"q","p":{"top_k":Infinity}}'], "non-finite"),
    ([b'{"v":1,"type":"x","id":"q","seed":1e400}'], "non-finite"),
    ([b'{"v":1,"type":"x","id":"q","seed":NaN}'], "non-finite"),
    ([b'{"v":1,"type":"x","id":"q","seed":' + b"9" * 20 + b"}"], "beyond"),
    ([b'{"v":1,"type":"x","seed":' + b"9" * 5000 + b"}"], "not valid JSON"),
    ([b'{"v":true,"type":"x"}'], "version"),
    ([_hdr(type="")], "message type"),
    ([_hdr(id="")], "id must be"),
])
def test_protocol_decode_hostile_headers(frames, match):
    from daemons import protocol

    with pytest.raises(protocol.ProtocolError, match=match) as ei:
        protocol.decode(frames)
    if b'"id":"q"' in frames[0]:
        assert ei.value.rid == "q"  # the error reply reaches the request it is about


def test_protocol_round_trip_of_empty_arrays():
    from daemons import protocol

    m = protocol.decode(protocol.encode("audio", {"pcm": np.zeros(0, np.float32)}, id="a", seq=0))
    assert m.arrays["pcm"].shape == (0,)  # a pause of 0 samples: memoryview.cast refused a 0 in the shape


@pytest.mark.parametrize("field, value", [
    ("temperature", 5e-324), ("sub_temperature", 1e-9), ("temperature", float("inf")), ("top_p", float("nan")),
    ("repetition_penalty", 5e-324), ("repetition_penalty", float("inf")), ("top_k", 2.5), ("top_k", 1 << 40),
    ("sub_top_k", -1), ("sub_top_p", 0.0),
])
def test_sampling_params_that_would_give_nan(field, value):
    from daemons.engine.sampling import SamplingParams

    p = SamplingParams(**{field: value})
    with pytest.raises(ValueError, match=field):
        p.validate()


def test_worker_loop_survives_a_handler_exception(caplog):
    """A handler that raises: one log line with the id in repr, error `internal` to the sender, and the next
    message is served (WorkerService.serve_once); an exception from serve_once itself does not end run()."""
    import logging

    import zmq

    from daemons import protocol
    from daemons.config import Config
    from daemons.cpu import CpuPlan
    from daemons.service import WorkerService

    class Boom(WorkerService):
        role = "boom"
        loops = 0

        def handle_boom(self, ident, msg):
            raise RuntimeError("kaput\nFORGED line")

        def serve_once(self, timeout_ms):
            self.loops += 1
            if self.loops == 1:
                raise OSError("the loop itself")
            if self.loops > 3:
                self.stop_requested = True
            return super().serve_once(timeout_ms)

    import signal

    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    svc = Boom(Config(), CpuPlan([0], 1, "test"))  # installs its own SIGTERM/SIGINT handlers: put back below
    svc.sock = svc.bind_router("inproc://boom")
    c = zmq.Context.instance().socket(zmq.DEALER)
    c.setsockopt(zmq.LINGER, 0)
    c.connect("inproc://boom")
    try:
        c.send_multipart(protocol.encode("boom", id="a\nFORGED"))
        c.send_multipart(protocol.encode("ping"))
        with caplog.at_level(logging.INFO, logger="qwen3_tts.boom"):
            assert svc.run() == 0
        err = protocol.decode(c.recv_multipart())
        assert (err.type, err.id, err.header["code"]) == ("error", "a\nFORGED", "internal")
        assert protocol.decode(c.recv_multipart()).type == "pong"
    finally:
        c.close(0)
        svc.sock.close(0)
        signal.signal(signal.SIGTERM, handlers[0])
        signal.signal(signal.SIGINT, handlers[1])
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 2 and all("\n" not in ln for ln in lines), lines
    assert "serving loop: internal error: OSError" in lines[0]
    assert "'boom' message 'a\\nFORGED': internal error: RuntimeError" in lines[1]
