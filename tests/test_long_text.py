"""Long input and runaway generation: sentence segments, per-segment caps, loop/silence detection, reports."""
from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import ROOT, snr_db
from daemons.engine.generate import RunawayRules, frame_cap
from daemons.engine.segment import split_text

EN_PARA = ("The quick brown fox jumps over the lazy dog. Dr. Smith paid $3.50 for 2.5 kg of apples at 10 a.m. "
           "on Jan. 5, didn't he? It was a bright cold day in April, and the clocks were striking thirteen! ")
ZH_PARA = "今天天气很好，我们去公园散步吧。你好，这是一个语音合成系统的测试！北京是中国的首都；上海是最大的城市？"


def long_text(para: str, n_chars: int = 5000) -> str:
    paras, total = [], 0
    while total < n_chars:
        p = (para * 3).strip()
        paras.append(p)
        total += len(p) + 2
    return "\n\n".join(paras)[:n_chars]


def test_split_rules():
    assert split_text("Hello Mr. Smith. How are you? Pi is 3.14 today. J. K. Rowling wrote it.") == [
        "Hello Mr. Smith.", "How are you?", "Pi is 3.14 today.", "J. K. Rowling wrote it."]
    assert split_text("你好，世界。今天天气很好！我们去公园散步吧？") == ["你好，世界。", "今天天气很好！", "我们去公园散步吧？"]
    assert split_text("Привет, мир! Это т.е. тест. Всё.") == ["Привет, мир!", "Это т.е. тест. Всё."]
    assert split_text("One.\n\nTwo paragraphs here.") == ["One. Two paragraphs here."] or \
        split_text("One paragraph.\n\nTwo paragraphs here.") == ["One paragraph.", "Two paragraphs here."]
    assert split_text("First paragraph, long enough.\n\nSecond one.") == ["First paragraph, long enough.",
                                                                         "Second one."]
    long = "word " * 200
    parts = split_text(long, max_chars=120)
    assert all(len(p) <= 120 for p in parts) and " ".join(parts) == long.strip()
    clause = ("a clause, " * 40).strip()
    assert all(p.endswith(",") or p == split_text(clause, max_chars=100)[-1] for p in split_text(clause, 100))
    text = long_text(EN_PARA)
    segs = split_text(text)
    assert "".join(segs).replace(" ", "") == text.replace(" ", "").replace("\n", "")  # nothing lost, in order


def test_loop_rule():
    r = RunawayRules(loop_frames=12, loop_period=4)
    assert not r.looping(list(range(40)))
    assert r.looping([5, 6, 7] + [1, 2, 3] * 5)
    assert r.looping([9] * 13)
    assert not r.looping([1, 2, 3] * 4)  # exactly loop_frames long: needs one more period of evidence
    assert not RunawayRules(loop_frames=0).looping([9] * 100)
    assert frame_cap(10) == 85 and frame_cap(0) == 25


def test_detection_never_alters_output_that_ends_on_eos(eos_ckpt, tmp_path):
    from daemons.engine.synth import Synthesizer
    from scripts.convert import convert

    s = Synthesizer(convert(eos_ckpt, tmp_path / "m", "f32", log=lambda *_: None), threads=2)
    try:
        ended = 0
        for text, lang, ns in [("Привет!", "russian", True), ("你好，这是一个语音合成系统的测试。", "chinese", True),
                               ("Hi there, friend.", "auto", False)]:
            p = s.sampling(do_sample=False, sub_do_sample=False)
            a, wa, ga = s.synthesize(text, lang, params=p, non_streaming=ns, max_frames=300, runaway=None)
            b, wb, gb = s.synthesize(text, lang, params=p, non_streaming=ns, max_frames=300, runaway=RunawayRules())
            if ga[-1].stop == "eos":
                ended += 1
                assert gb[-1].stop == "eos" and a.shape == b.shape and (a == b).all() and (wa == wb).all()
        assert ended >= 2, "too few utterances ended on EOS for the check to mean anything"
    finally:
        s.close()


def test_segment_boundaries_have_no_seam(synth):
    text = "First sentence is here. Second one follows it! And a third one ends the text."
    p = synth.sampling(seed=11)
    codes, wav, gens = synth.synthesize(text, "english", params=p, max_frames=20, chunk_frames=3, pause_ms=0)
    assert len(gens) == 3 and sum(g.frames for g in gens) == len(codes)
    assert snr_db(synth.vocoder.decode_all(codes), wav) >= 60
    codes2, wav2, gens2 = synth.synthesize(text, "english", params=p, max_frames=20, chunk_frames=3, pause_ms=100)
    assert (codes2 == codes).all()
    n0, n1 = gens2[0].frames * 1920, gens2[1].frames * 1920
    pause = 2400
    assert len(wav2) == len(wav) + 2 * pause
    assert not wav2[n0:n0 + pause].any() and not wav2[n0 + pause + n1:n0 + pause + n1 + pause].any()
    stitched = np.concatenate([wav2[:n0], wav2[n0 + pause:n0 + pause + n1], wav2[n0 + 2 * pause + n1:]])
    assert snr_db(wav, stitched) >= 60


def start_cluster(model, tmp, limits: str, top: str = ""):
    from daemons.launcher import ROLES, Launcher

    run = tmp / "run"
    cfg = tmp / "qwen3-tts.toml"
    cfg.write_text(f'model_dir = "{model}"\nruntime_dir = "{run}"\n{top}[limits]\n{limits}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TTS_")}
    env.update(QWEN3_TTS_CONFIG=str(cfg), PYTHONPATH=str(ROOT))
    la = Launcher(run, env=env)
    for r in ROLES:
        la.start(r)
    for r in ROLES:
        la.wait_ready(r, 120)
    la.endpoint = f"ipc://{run}/talker.sock"
    return la


def stop_cluster(la):
    from daemons.launcher import ROLES

    for r in ROLES:
        la.stop(r)
    la.close()


@pytest.fixture(scope="module")
def long_cluster(tiny_model, tmp_path_factory):
    # small caps keep a 5,000-character request quick on the tiny model (whose random weights rarely end on EOS)
    la = start_cluster(tiny_model, tmp_path_factory.mktemp("long"),
                       "cap_base_frames = 4\ncap_frames_per_token = 0.5\npause_ms = 40\n")
    yield la
    stop_cluster(la)


def test_silence_rule_stops_after_the_text(tiny_model, tmp_path, synth):
    """With every frame counted as near-silent, a segment stops a few frames after its text is used up."""
    from client.api import TTSClient

    la = start_cluster(tiny_model, tmp_path, "silence_rms = 10.0\nsilence_frames = 5\nloop_frames = 0\n")
    try:
        text = "A fairly long sentence to speak here. And a second one."
        with TTSClient(la.endpoint, idle_timeout_s=60) as c:
            r = c.synthesize(text, "english", pause_ms=0, params={"seed": 3})
        fired = 0
        for seg, txt in zip(r.segments, split_text(text)):
            n_tok = synth.prompts.build(txt, "english").n_text_tokens
            if seg["stop"] == "eos":  # the model may stop by itself first; then the rule must not have fired
                assert seg["frames"] < n_tok + 5, seg
                continue
            assert seg["stop"] == "runaway_silence", seg
            fired += 1
            # text used up after n_tok frames (streaming text), then 5 silent frames; more may be generated
            # while their audio is on its way back from the vocoder (a loaded machine: up to a few chunks)
            assert n_tok + 5 <= seg["frames"] <= n_tok + 5 + 40, (seg, n_tok)
        assert fired >= 1
    finally:
        stop_cluster(la)


@pytest.mark.parametrize("language, para", [("english", EN_PARA), ("chinese", ZH_PARA)])
def test_5000_characters_complete_and_reported(long_cluster, synth, language, para):
    from client.api import TTSClient

    text = long_text(para)
    expected = split_text(text)
    with TTSClient(long_cluster.endpoint, idle_timeout_s=60) as c:
        r = c.synthesize(text, language, return_codes=True)
    assert len(r.segments) == len(expected) > 20
    assert [s["index"] for s in r.segments] == list(range(len(expected)))
    assert [s["chars"] for s in r.segments] == [len(e) for e in expected]
    assert sum(s["frames"] for s in r.segments) == r.frames == len(r.codes)
    pause = 40 * 24
    assert len(r.audio) == r.frames * 1920 + pause * (len(expected) - 1)
    for seg, txt in zip(r.segments, expected):
        n_tokens = synth.prompts.build(txt, language).n_text_tokens
        cap = frame_cap(n_tokens, 4, 0.5)
        assert seg["frames"] <= cap, (seg, cap)
        assert seg["stop"] in ("eos", "max_frames", "runaway_loop", "runaway_silence")
        if seg["stop"] == "max_frames":
            assert seg["frames"] == cap
    assert r.truncated  # random weights: the runaway case; reported, never hidden


def test_client_warns_and_strict_fails(long_cluster, tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # a fixed seed: the tiny random model sometimes ends every segment on EOS, and then nothing is truncated
    args = [sys.executable, "-m", "client.cli", EN_PARA, "-l", "english", "-o", str(tmp_path / "a.wav"),
            "--endpoint", long_cluster.endpoint, "--seed", "1"]
    r = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and "warning: segment 1/" in r.stderr, r.stderr
    r = subprocess.run(args + ["--strict"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 5 and (tmp_path / "a.wav").exists()
