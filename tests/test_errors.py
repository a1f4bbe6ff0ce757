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
