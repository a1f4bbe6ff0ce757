"""Voice cloning: voice files, both clone modes against the official generate_voice_clone, the talker's
prompt-prefix cache, the vocoder's reference left context, and the client/daemon wiring."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, snr_db, start_cluster, stop_cluster

N_FRAMES = 40
TEXT_LONG = "Hello, this is a test of the text to speech system, spoken in a cloned voice."


def ref_audio(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """A voiced-sounding test signal: a wobbling harmonic tone with a little noise (not speech)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.8 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(0.25 / k * np.sin(k * phase) for k in range(1, 6)) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t) ** 2)
    x = x + 0.02 * rng.standard_normal(len(t))
    x = x.astype(np.float32)
    return np.stack([x, 0.8 * x], axis=1) if channels == 2 else x


def greedy(synth):
    return synth.sampling(do_sample=False, sub_do_sample=False)


# --- voice files ------------------------------------------------------------------------------------
def test_voice_file_round_trip_and_errors(tmp_path):
    from daemons.engine.voice import Voice, VoiceError, find_voice

    rng = np.random.default_rng(1)
    v = Voice(rng.standard_normal(64).astype(np.float32) * 1e-3, rng.integers(0, 2048, (7, 16)), "Hi there.",
              "english", "ab" * 32)
    p = v.save(tmp_path / "anna.json")
    w = Voice.load(p, hidden=64)
    assert w.xvector.dtype == np.float32 and (w.xvector == v.xvector).all()  # float32 kept exactly
    assert (w.ref_codes == v.ref_codes).all() and w.ref_text == "Hi there." and w.mode == "icl"
    assert find_voice("anna", tmp_path, 64).name == "anna"
    assert w.as_xvector_only().mode == "xvector"
    with pytest.raises(VoiceError, match="unknown voice 'bob'; available: anna"):
        find_voice("bob", tmp_path)
    with pytest.raises(VoiceError, match="bad voice name"):
        find_voice("../etc/passwd", tmp_path)
    with pytest.raises(VoiceError, match="x-vector must be 1024"):
        Voice.load(p, hidden=1024)
    doc = json.loads(p.read_text())
    for bad, msg in [({**doc, "version": 9}, "version 9"), ({**doc, "format": "x"}, "not a qwen3-tts-voice"),
                     ({**doc, "ref_codes": [[1, 2]]}, r"\[frames, 16\]"), ({**doc, "xvector": "x"}, "malformed")]:
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(VoiceError, match=msg):
            Voice.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(VoiceError, match="unreadable"):
        Voice.load(tmp_path / "bad.json")


def test_voice_files_are_written_atomically_0640(tmp_path, monkeypatch):
    """Issue 11: a temporary file in the same directory, then os.replace; mode 0640; a reader of the old
    file keeps reading it whole; a failed write leaves the old file and no temporary behind; a symlink in
    the file's place is replaced, its target untouched."""
    from daemons.engine.voice import Voice

    rng = np.random.default_rng(2)
    old = Voice(rng.standard_normal(64).astype(np.float32), rng.integers(0, 2048, (7, 16)), "Old.", "english")
    new = Voice(rng.standard_normal(64).astype(np.float32), rng.integers(0, 2048, (9, 16)), "New.", "english")
    p = old.save(tmp_path / "v.json")
    assert oct(os.stat(p).st_mode & 0o777) == "0o640" and os.listdir(tmp_path) == ["v.json"]
    before = p.read_bytes()
    with open(p, "rb") as reader:
        new.save(p)
        assert reader.read() == before                       # the old inode, complete
    assert Voice.load(p).ref_text == "New." and os.listdir(tmp_path) == ["v.json"]
    assert oct(os.stat(p).st_mode & 0o777) == "0o640"

    def broken_fsync(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space"):
        old.save(p)
    monkeypatch.undo()
    assert Voice.load(p).ref_text == "New." and os.listdir(tmp_path) == ["v.json"]

    target = tmp_path / "elsewhere.txt"
    target.write_text("not a voice")
    (tmp_path / "link.json").symlink_to(target)
    old.save(tmp_path / "link.json")
    assert target.read_text() == "not a voice" and not (tmp_path / "link.json").is_symlink()


def test_hostile_voice_values_are_voice_errors(tmp_path):
    """Issue 11: whatever a voice file or an inline voice holds, from_json/load raise VoiceError (never
    OverflowError, TypeError, RecursionError, ...), and a FIFO or an oversized file is refused unread."""
    from daemons.engine.voice import MAX_FILE_BYTES, Voice, VoiceError

    rng = np.random.default_rng(3)
    good = Voice(rng.standard_normal(64).astype(np.float32), rng.integers(0, 2048, (4, 16)), "Hi.").to_json()
    bad = {
        "codes-inf": {**good, "ref_codes": [[float("inf")] + [1] * 15] * 4},
        "codes-20-digits": {**good, "ref_codes": [[10 ** 19] * 16] * 4},
        "codes-400-digits": {**good, "ref_codes": [[10 ** 400] * 16]},
        "codes-negative": {**good, "ref_codes": [[-1] * 16]},
        "codes-bool": {**good, "ref_codes": [[True] * 16]},
        "codes-float": {**good, "ref_codes": [[1.5] * 16]},
        "codes-ragged": {**good, "ref_codes": [[1] * 16, [1] * 3]},
        "codes-empty": {**good, "ref_codes": []},
        "codes-string": {**good, "ref_codes": "1,2,3"},
        "codes-deep": {**good, "ref_codes": [[[1] * 16]] * 4},
        "xvector-nan": {**good, "xvector": [float("nan")] * 64},
        "xvector-1e39": {**good, "xvector": [1e39] * 64},
        "xvector-400-digits": {**good, "xvector": [10 ** 400] * 64},
        "xvector-strings": {**good, "xvector": ["1.0"] * 64},
        "xvector-empty": {**good, "xvector": []},
        "xvector-missing": {k: v for k, v in good.items() if k != "xvector"},
        "version-true": {**good, "version": True},
        "language-int": {**good, "language": 5},
        "ref_text-list": {**good, "ref_text": ["a"]},
        "sha-dict": {**good, "source_sha256": {"a": 1}},
        "not-an-object": [good],
    }
    for name, doc in bad.items():
        with pytest.raises(VoiceError):
            Voice.from_json(doc, name)
    for name, text in [("deep", "[" * 100000), ("nan", json.dumps(good).replace("[", "[NaN, ", 1)),
                       ("1e400", json.dumps(good).replace("[", "[1e400, ", 1)), ("utf8", b"\xff\xfe")]:
        f = tmp_path / f"{name}.json"
        f.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(VoiceError):
            Voice.load(f)
    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(VoiceError, match="at most"):
        Voice.load(big)
    os.mkfifo(tmp_path / "fifo.json")  # would block a plain open() for reading forever
    with pytest.raises(VoiceError, match="not a regular file"):
        Voice.load(tmp_path / "fifo.json")
    assert Voice.from_json(good).ref_codes.shape == (4, 16)
    # A name is matched as a whole string: "anna\n" (which "$" would accept) names no file of voices_dir.
    from daemons.engine.voice import find_voice
    Voice.from_json(good).save(tmp_path / "anna.json")
    assert find_voice("anna", tmp_path).name == "anna"
    for name in ("anna\n", "anna\n\n", "\nanna", "anna/", "../anna", "", "a" * 65):
        with pytest.raises(VoiceError, match="bad voice name"):
            find_voice(name, tmp_path)

def test_reference_audio_checks(tiny_model, tmp_path):
    from daemons.engine.errors import InvalidRequest
    from daemons.engine.voice import encode_voice

    for audio, msg in [((ref_audio(0.5, 24000), 24000), "too short"), ((ref_audio(31, 8000), 8000), "too long"),
                       ((np.zeros(48000, np.float32), 24000), "silent"), (b"RIFF\x00garbage" * 10, "cannot read reference audio")]:
        with pytest.raises(InvalidRequest, match=msg):
            encode_voice(tiny_model, audio, "Hi.")
    with pytest.raises(InvalidRequest, match="cannot read"):
        encode_voice(tiny_model, tmp_path / "missing.wav")
    with pytest.raises(InvalidRequest, match="unknown language"):
        encode_voice(tiny_model, (ref_audio(2, 24000), 24000), "Hi.", "klingon")


# --- parity with the official voice clone -----------------------------------------------------------
CLONES = {
    # reference shorter than the text (in frames of the prompt overlay) / longer than the text
    "icl-ref-short": dict(seconds=1.5, sr=16000, channels=1, ref_text="Hi there.", text=TEXT_LONG),
    "icl-ref-long": dict(seconds=6.0, sr=44100, channels=2, ref_text="This reference transcript is long.",
                         text="Hello."),
    "icl-non-streaming": dict(seconds=3.0, sr=24000, channels=1, ref_text="Hi there.", text="Hello, test.",
                              non_streaming=True),
    "xvector-streaming": dict(seconds=4.0, sr=22050, channels=1, ref_text=None, text=TEXT_LONG),
    "xvector-non-streaming": dict(seconds=2.5, sr=24000, channels=2, ref_text=None, text="Hello, test.",
                                  non_streaming=True),
}


@pytest.mark.parametrize("case", list(CLONES))
def test_clone_matches_official_generate_voice_clone(case, synth, official, monkeypatch, tmp_path):
    import soundfile as sf
    import torch

    from daemons.engine.voice import encode_voice

    c = CLONES[case]
    wav = ref_audio(c["seconds"], c["sr"], c["channels"], seed=len(case))
    icl = c["ref_text"] is not None
    ns = c.get("non_streaming", False)
    audio = (wav, c["sr"])
    if c["channels"] == 2:  # the official wrapper cannot average a stereo array (it assigns into a tuple):
        audio = str(tmp_path / "ref.wav")  # give both a file, which it reads with librosa.load(mono=True)
        sf.write(audio, wav, c["sr"], subtype="FLOAT")
    voice = encode_voice(synth.md, audio, c["ref_text"], "english")
    assert voice.mode == ("icl" if icl else "xvector")

    items = official.create_voice_clone_prompt(ref_audio=audio, ref_text=c["ref_text"],
                                               x_vector_only_mode=not icl)
    xo = items[0].ref_spk_embedding.numpy()
    cos = float(np.dot(xo, voice.xvector) / np.linalg.norm(xo) / np.linalg.norm(voice.xvector))
    assert cos >= 0.9999, cos
    if icl:
        assert (items[0].ref_code.numpy() == voice.ref_codes).all()

    captured = {}
    orig = official.model.generate

    def spy(*a, **k):
        out = orig(*a, **k)
        captured["codes"] = out[0][0].numpy().astype(np.int64)
        return out

    monkeypatch.setattr(official.model, "generate", spy)
    with torch.no_grad():
        wavs, sr = official.generate_voice_clone(c["text"], language="english", voice_clone_prompt=items,
                                                 non_streaming_mode=ns, max_new_tokens=N_FRAMES + 1,
                                                 do_sample=False, subtalker_dosample=False,
                                                 repetition_penalty=1.05)
    ref = captured["codes"]
    codes, ours, gens = synth.synthesize(c["text"], "english", params=greedy(synth), max_frames=N_FRAMES,
                                         non_streaming=ns, voice=voice, segment=False, chunk_frames=4)
    assert len(ref) >= 20, f"official output ended after {len(ref)} frames: too short to compare"
    assert codes.shape == ref.shape and (codes == ref).all(), \
        f"first mismatch {np.argwhere(codes != ref)[:1].tolist()} of {ref.shape}"
    off = len(wavs[0]) - len(ours)
    if icl:  # official cut = int(R / (R + F) * len): float rounding may keep one reference sample
        R = len(voice.ref_codes)
        assert off == R * 1920 - int(R / (R + len(ref)) * (R + len(ref)) * 1920) and off in (0, 1)
    else:
        assert off == 0
    assert snr_db(wavs[0][off:], ours) >= 60


def test_icl_audio_is_the_cut_of_decoding_reference_plus_output(synth):
    """The vocoder started with the reference frames as left context gives exactly the tail of one decode of
    reference + generated frames, in any chunking; without the context it does not."""
    from daemons.engine.voice import Voice

    rng = np.random.default_rng(3)
    cb = synth.md.predictor["codebook_size"]
    v = Voice(rng.standard_normal(synth.md.talker["hidden_size"]).astype(np.float32),
              rng.integers(0, cb, (25, 16)), "Hi there, this is me.", "english")
    codes, wav, _ = synth.synthesize("Hello there.", "english", params=synth.sampling(seed=4), max_frames=24,
                                     voice=v, chunk_frames=3)
    full = synth.vocoder.decode_all(np.concatenate([v.ref_codes, codes]))
    assert len(wav) == len(codes) * 1920
    assert snr_db(full[25 * 1920:], wav) >= 60
    assert snr_db(full[25 * 1920:], synth.vocoder.decode_all(codes)) < 30  # the context matters


# --- prompt-prefix cache ------------------------------------------------------------------------------
def test_prefix_cache_skips_the_voice_prefill_and_keeps_the_codes(synth):
    from daemons.engine.voice import Voice

    rng = np.random.default_rng(11)
    cb = synth.md.predictor["codebook_size"]
    v = Voice(rng.standard_normal(synth.md.talker["hidden_size"]).astype(np.float32),
              rng.integers(0, cb, (80, 16)), "A reference transcript that is fairly long, to cache.", "english")
    t = synth.talker
    p = synth.prompts.build("Hello again.", "english", xvector=v.xvector, ref_codes=v.ref_codes,
                            ref_text=v.ref_text)
    n_ref = len(synth.prompts.encode(v.ref_text, "<|im_start|>assistant\n{}<|im_end|>\n")[3:-2])
    # role rows, [think, think_bos, lang, think_eos, spk, pad] + text, then the reference-transcript rows
    assert n_ref < 80 and p.n_fixed == 3 + 6 + n_ref and p.n_fixed < len(p.prefill)

    def run(text):
        before = (t.cache.hits, t.cache.misses, t.cache.rows_skipped, t.prefill_rows)
        out = np.stack(list(synth.frames(text, "english", params=greedy(synth), max_frames=12, voice=v)))
        return out, [a - b for a, b in zip((t.cache.hits, t.cache.misses, t.cache.rows_skipped, t.prefill_rows),
                                           before)]

    a, d1 = run("Hello again.")
    b, d2 = run("Hello again.")
    c, d3 = run("Something else entirely.")  # same voice, other text: same prefix
    assert d1[:3] == [0, 1, 0] and d1[3] == len(p.prefill)
    assert d2[:3] == [1, 0, p.n_fixed] and d2[3] == len(p.prefill) - p.n_fixed
    assert d3[:3] == [1, 0, p.n_fixed]
    cache, t.cache = t.cache, None
    try:
        plain = np.stack(list(synth.frames("Hello again.", "english", params=greedy(synth), max_frames=12,
                                           voice=v)))
        other = np.stack(list(synth.frames("Something else entirely.", "english", params=greedy(synth),
                                           max_frames=12, voice=v)))
    finally:
        t.cache = cache
    assert (a == b).all() and (a == plain).all() and (c == other).all()


def test_prefix_cache_survives_a_restart(tiny_model, tmp_path):
    from daemons.engine.manifest import ModelDir
    from daemons.engine.prompt import PromptBuilder
    from daemons.engine.talker import TalkerEngine

    md = ModelDir(tiny_model)
    rows = PromptBuilder(md).build("Hi.", "english", xvector=np.ones(md.talker["hidden_size"], np.float32))
    outs = []
    for _ in range(2):
        t = TalkerEngine(md, threads=1, n_ctx=256, cache_dir=tmp_path / "kv")
        outs.append(t.prefill(rows.prefill, rows.n_fixed))
        outs.append((t.cache.hits, t.cache.misses))
        t.close()
    assert outs[1] == (0, 1) and outs[3] == (1, 0)
    assert np.array_equal(outs[0][0], outs[2][0]) and np.array_equal(outs[0][1], outs[2][1])
    assert len(list((tmp_path / "kv").glob("*.kv"))) == 1


# --- daemons and client --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def voice_cluster(tiny_model, tmp_path_factory):
    from daemons.engine.voice import Voice

    tmp = tmp_path_factory.mktemp("vc")
    (tmp / "voices").mkdir()
    rng = np.random.default_rng(21)  # a named in-context voice present at start: primed while idle
    from daemons.engine.manifest import ModelDir

    md = ModelDir(tiny_model)
    Voice(rng.standard_normal(md.talker["hidden_size"]).astype(np.float32),
          rng.integers(0, md.predictor["codebook_size"], (30, 16)), "Hi, I am already here.",
          "english").save(tmp / "voices" / "primed.json")
    la = start_cluster(tiny_model, tmp, top=f'voices_dir = "{tmp / "voices"}"\n')
    cfg = tmp / "qwen3-tts.toml"
    la.voices = tmp / "voices"
    la.config = cfg
    yield la
    stop_cluster(la)


def vocoder_pong(la) -> dict:
    import zmq

    from daemons import protocol

    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"ipc://{la.config.parent / 'run'}/vocoder.sock")
    try:
        s.send_multipart(protocol.encode("ping"))
        assert s.poll(10000), "the vocoder daemon did not answer a ping"
        return protocol.decode(s.recv_multipart(), 1 << 20).header
    finally:
        s.close(0)


def test_named_voices_are_primed_while_idle(voice_cluster, synth):
    import time

    from client.api import TTSClient
    from daemons.engine.voice import find_voice

    la = voice_cluster
    deadline = time.monotonic() + 120
    while vocoder_pong(la)["primed_idle"] < 1:
        assert time.monotonic() < deadline, "the named voice was not primed"
        time.sleep(0.5)
    before = vocoder_pong(la)
    v = find_voice("primed", la.voices)
    ref_codes, ref_wav, _ = synth.synthesize("Hello there.", "english", params=synth.sampling(seed=2),
                                             max_frames=10, voice=v, chunk_frames=4)
    with TTSClient(la.endpoint, idle_timeout_s=60) as c:
        r = c.synthesize("Hello there.", params={"seed": 2}, max_frames=10, voice="primed", return_codes=True)
    after = vocoder_pong(la)
    assert after["context_misses"] == before["context_misses"], (before, after)  # no priming on first use
    assert after["context_hits"] > before["context_hits"]
    assert (r.codes == ref_codes).all() and snr_db(ref_wav, r.audio) >= 60


def _env(la):
    return {**{k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TTS_")},
            "QWEN3_TTS_CONFIG": str(la.config), "QWEN3_TTS_VOICES_DIR": str(la.voices), "PYTHONPATH": str(ROOT)}


def test_encode_voice_cli_and_clone_through_the_daemons(voice_cluster, synth, tmp_path):
    import soundfile as sf

    from client.api import TTSClient
    from daemons.engine.voice import Voice

    la = voice_cluster
    wav = ref_audio(3.0, 44100, channels=2, seed=5)
    sf.write(tmp_path / "ref.wav", wav, 44100)
    cli = [sys.executable, "-m", "client.cli"]
    r = subprocess.run(cli + ["encode-voice", "-a", str(tmp_path / "ref.wav"), "-r", "Hi there, it is me.",
                              "-o", str(tmp_path / "me.json"), "--name", "me", "-l", "english"],
                       capture_output=True, text=True, env=_env(la), timeout=300)
    assert r.returncode == 0, r.stderr
    assert "icl voice (38 reference frames" in r.stderr, r.stderr  # ceil(3 s * 24000 / 1920)
    v = Voice.load(tmp_path / "me.json")
    assert (la.voices / "me.json").read_text() == (tmp_path / "me.json").read_text()

    ref_codes, ref_wav, _ = synth.synthesize("Hello there.", "english", params=synth.sampling(seed=9),
                                             max_frames=20, voice=v, chunk_frames=4)
    with TTSClient(la.endpoint, idle_timeout_s=60) as c:
        by_name = c.synthesize("Hello there.", params={"seed": 9}, max_frames=20, voice="me",
                               return_codes=True)  # language: the voice's
        inline = c.synthesize("Hello there.", "english", params={"seed": 9}, max_frames=20, voice=v,
                              return_codes=True)
    assert (by_name.codes == ref_codes).all() and (inline.codes == ref_codes).all()
    assert snr_db(ref_wav, by_name.audio) >= 60 and snr_db(ref_wav, inline.audio) >= 60
    # the second request reused the vocoder state primed with the reference (the first primed it, unless
    # the vocoder's idle rescan of voices_dir got there first)
    pong = vocoder_pong(la)
    assert pong["context_misses"] <= 1 and pong["context_hits"] >= 2, pong

    out = tmp_path / "o.wav"
    r = subprocess.run(cli + ["Hello.", "--voice", "me", "--max-frames", "8", "-o", str(out), "--endpoint",
                              la.endpoint], capture_output=True, text=True, env=_env(la), timeout=120)
    assert r.returncode == 0 and out.exists(), r.stderr
    for voice, msg in [("nobody", "unknown voice 'nobody'; available: me"),
                       (str(tmp_path / "missing.json"), "voice file not found")]:
        r = subprocess.run(cli + ["Hello.", "--voice", voice, "--endpoint", la.endpoint], capture_output=True,
                           text=True, env=_env(la), timeout=120)
        assert r.returncode in (1, 2) and msg in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_encode_voice_cli_errors(tiny_model, tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "short.wav", ref_audio(0.3, 16000), 16000)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF" + np.random.default_rng(8).bytes(200))  # seeded garbage
    sf.write(tmp_path / "silent.wav", np.zeros(48000, np.float32), 24000)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QWEN3_TTS_MODEL_DIR": str(tiny_model)}
    for f, msg in [("short.wav", "too short"), ("corrupt.wav", "corrupt.wav"), ("silent.wav", "silent"),
                   ("missing.wav", "cannot read")]:
        r = subprocess.run([sys.executable, "-m", "client.cli", "encode-voice", "-a", str(tmp_path / f), "-r",
                            "Hi.", "-o", str(tmp_path / "v.json")], capture_output=True, text=True, env=env,
                           timeout=120)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (f, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
