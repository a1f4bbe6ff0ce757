"""Voice-cloning encoders: the torch-free engine (daemons/engine/voice_encoder.py, ONNX graphs written by
scripts/export_encoders.py at conversion) vs the official qwen-tts modules, tiny random checkpoint.

For each synthetic reference recording (chirp + noise; 24 kHz, 16 kHz FLAC, 44.1 kHz stereo PCM-16; lengths
that are and are not multiples of 1920 samples, 0.08-12 s) the official side is
`Qwen3TTSModel.create_voice_clone_prompt(ref_audio=<file path>)` itself: librosa.load -> speech_tokenizer.encode
(resampled by the tokenizer wrapper) for the ICL codes, librosa.resample -> extract_speaker_embedding for the
x-vector. Our side: load_audio -> resample_24k -> VoiceEncoder.codes / .xvector.
  * codes: identical (every frame, every codebook);
  * x-vector: cosine >= 0.9999, and the error is tiny next to the distance between two recordings' x-vectors
    (random-weight x-vectors of *different* signals already have cosine ~0.999, so cosine alone proves little).
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Imported normally: the test environment always has them (scripts/test.sh installs the dev extras), so a
# broken install or import fails the module instead of skipping it.
import onnxruntime  # noqa: E402,F401
import soundfile as sf  # noqa: E402
import torch  # noqa: E402,F401

from scripts.official import import_qwen_tts  # noqa: E402

import_qwen_tts()  # the official classes

from daemons.engine.errors import InvalidRequest, ModelError  # noqa: E402
from daemons.engine.voice_encoder import VoiceEncoder, load_audio, resample_24k  # noqa: E402

HOP = 1920
MIN_COS = 0.9999

# (name, samples, sample rate, channels, file format/subtype)
SIGNALS = [
    ("24k_2s_whole_frames", 25 * HOP, 24000, 1, ("WAV", "FLOAT")),
    ("24k_1s_plus1", 24001, 24000, 1, ("WAV", "FLOAT")),
    # > 250 frames at 25 Hz: the official one-shot encode attends to the whole past (no sliding window)
    ("24k_12s_plus5", 12 * 24000 + 5, 24000, 1, ("WAV", "FLOAT")),
    ("16k_5s_plus7_flac", 5 * 16000 + 7, 16000, 1, ("FLAC", "PCM_16")),
    ("44k1_7s_plus3_stereo", 7 * 44100 + 3, 44100, 2, ("WAV", "PCM_16")),
    ("44k1_2s_odd", 98761, 44100, 1, ("WAV", "FLOAT")),
    ("24k_one_partial_frame", 1919, 24000, 1, ("WAV", "FLOAT")),
]


def chirp_noise(seed: int, n: int, sr: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    f0 = 80 + 400 * rng.random()
    x = 0.3 * np.sin(2 * np.pi * (f0 * t + 150 * t * t)) + 0.05 * rng.standard_normal(n)
    if channels == 2:
        x = np.stack([x, 0.5 * x + 0.05 * rng.standard_normal(n)], axis=1)
    return x.astype(np.float32)


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def audio_bytes(x: np.ndarray, sr: int, fmt: tuple[str, str]) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format=fmt[0], subtype=fmt[1])
    return buf.getvalue()


@pytest.fixture(scope="module")
def engine(tiny_model):
    return VoiceEncoder(tiny_model, threads=2).load()


@pytest.fixture(scope="module")
def parity(official, engine, tmp_path_factory):
    """Runs every signal through both sides once; {name: dict of arrays and figures}."""
    import torch

    d = tmp_path_factory.mktemp("voice")
    out = {}
    for seed, (name, n, sr, ch, fmt) in enumerate(SIGNALS):
        data = audio_bytes(chirp_noise(seed, n, sr, ch), sr, fmt)
        path = d / f"{name}.{fmt[0].lower()}"
        path.write_bytes(data)
        item = official.create_voice_clone_prompt(ref_audio=str(path), ref_text="reference",
                                                  x_vector_only_mode=False)[0]
        ref_codes = item.ref_code.numpy()
        ref_x = item.ref_spk_embedding.numpy()

        wav, sr_read = load_audio(path)
        wav_b, _ = load_audio(data)
        assert sr_read == sr and np.array_equal(wav, wav_b)
        wav24 = resample_24k(wav, sr)
        codes = engine.codes(wav24)
        x = engine.xvector(wav24)
        with torch.no_grad():  # the same path, straight from speech_tokenizer.encode on our waveform
            direct = official.model.speech_tokenizer.encode(wav, sr=sr).audio_codes[0].numpy()
        out[name] = dict(n24=len(wav24), ref_codes=ref_codes, codes=codes, direct=direct, ref_x=ref_x, x=x,
                         cos=_cos(ref_x, x),
                         max_abs=float(np.max(np.abs(ref_x - x))), wav24=wav24)
    return out


@pytest.mark.parametrize("name", [s[0] for s in SIGNALS])
def test_codes_identical_to_official(parity, name):
    r = parity[name]
    frames = math.ceil(r["n24"] / HOP)
    assert r["ref_codes"].shape == (frames, 16)
    assert np.array_equal(r["direct"], r["ref_codes"])
    assert r["codes"].dtype == np.int64 and r["codes"].shape == (frames, 16), r["codes"].shape
    bad = np.where(np.any(r["codes"] != r["ref_codes"], axis=1))[0]
    assert bad.size == 0, f"{name}: {bad.size} of {frames} frames differ (first {bad[:8].tolist()})"


def test_codes_are_not_degenerate(parity):
    """The comparison must not be vacuous: every codebook uses many codes (the tiny codebooks hold 32)."""
    c = parity["24k_12s_plus5"]["codes"]
    used = [len(np.unique(c[:, q])) for q in range(c.shape[1])]
    assert min(used) >= 8, f"distinct codes per codebook: {used}"


def test_perturbed_input_changes_codes(engine, parity):
    """A burst in the middle changes later frames and (causal encoder) none before it."""
    r = parity["24k_12s_plus5"]
    w = r["wav24"].copy()
    a, b = 5 * 24000, 5 * 24000 + 4000
    w[a:b] += 0.2 * np.random.default_rng(7).standard_normal(b - a).astype(np.float32)
    c = engine.codes(w)
    diff = np.where(np.any(c != r["codes"], axis=1))[0]
    assert diff.size > 0, "a loud burst did not change any code: the comparison cannot fail"
    assert diff.min() >= a // HOP - 1, f"frames before the burst changed: {diff[:8].tolist()}"


@pytest.mark.parametrize("name", [s[0] for s in SIGNALS])
def test_xvector_matches_official(parity, name):
    r = parity[name]
    assert r["x"].dtype == np.float32 and r["x"].shape == r["ref_x"].shape
    assert r["cos"] >= MIN_COS, f"{name}: cosine {r['cos']:.9f}, max |diff| {r['max_abs']:.3g}"


def test_xvector_error_small_against_speaker_distance(parity):
    """Worst figures over all signals; our error must be << the gap between two recordings' x-vectors."""
    worst_cos = min(r["cos"] for r in parity.values())
    worst_abs = max(r["max_abs"] for r in parity.values())
    refs = [r["ref_x"] for r in parity.values()]
    gap = min(np.linalg.norm(refs[i] - refs[j]) for i in range(len(refs)) for j in range(i + 1, len(refs)))
    err = max(np.linalg.norm(r["ref_x"] - r["x"]) for r in parity.values())
    msg = (f"x-vector parity over {len(parity)} signals: worst cosine {worst_cos:.12f} (1 - cos = "
           f"{1 - worst_cos:.2e}), max |diff| "
           f"{worst_abs:.3g}, worst L2 error {err:.3g} vs smallest inter-signal L2 distance {gap:.3g}")
    print(msg)
    assert worst_cos >= MIN_COS, msg
    assert err < 1e-3 * gap, msg


def test_log_mel_matches_official_front_end(engine, parity):
    import torch
    from qwen_tts.core.models.modeling_qwen3_tts import mel_spectrogram

    for name in ("24k_1s_plus1", "44k1_7s_plus3_stereo"):
        w = parity[name]["wav24"]
        ref = mel_spectrogram(torch.from_numpy(w)[None], n_fft=1024, num_mels=128, sampling_rate=24000,
                              hop_size=256, win_size=1024, fmin=0, fmax=12000).transpose(1, 2).numpy()
        got = engine.log_mel(w)
        assert got.shape == ref.shape and got.dtype == np.float32
        d = float(np.max(np.abs(got - ref)))
        assert d < 2e-3, f"{name}: log-mel max |diff| {d:.3g}"


@pytest.mark.parametrize("sr,n", [(16000, 16000 * 3 + 1), (44100, 44100 * 2 + 17), (48000, 48000 + 5),
                                  (22050, 22050 * 4), (8000, 8001), (44100, 1)])
def test_resample_matches_librosa(sr, n):
    import librosa

    x = chirp_noise(sr + n, n, sr)
    ref = librosa.resample(y=x, orig_sr=sr, target_sr=24000)
    got = resample_24k(x, sr)
    # librosa's length fix: ceil(n * float(24000 / sr)), 1 sample more than exact for 22050 Hz * 4 s
    assert got.dtype == np.float32 and got.shape == ref.shape == (int(np.ceil(n * (24000.0 / sr))),)
    assert float(np.max(np.abs(got - ref))) <= 1e-6


def test_resample_24k_identity():
    x = chirp_noise(1, 5000, 24000)
    assert np.array_equal(resample_24k(x, 24000), x)


@pytest.mark.parametrize("data", [b"", b"RIFF\x00\x00\x00\x00WAVEfmt garbage" * 3, bytes(range(256)) * 40])
def test_corrupt_bytes_are_invalid_request(data):
    with pytest.raises(InvalidRequest) as ei:
        load_audio(data)
    assert "\n" not in str(ei.value) and str(ei.value)


def test_unreadable_inputs(tmp_path, engine):
    with pytest.raises(InvalidRequest):
        load_audio(tmp_path / "missing.wav")
    good = audio_bytes(chirp_noise(3, 24000, 24000), 24000, ("WAV", "PCM_16"))
    (tmp_path / "truncated.wav").write_bytes(good[:30])
    with pytest.raises(InvalidRequest):
        load_audio(tmp_path / "truncated.wav")
    bad = chirp_noise(4, 24000, 24000)
    bad[100] = np.nan
    with pytest.raises(InvalidRequest):
        resample_24k(bad, 16000)
    with pytest.raises(InvalidRequest):
        engine.codes(bad)
    with pytest.raises(InvalidRequest, match="too short"):
        engine.xvector(chirp_noise(5, 1000, 24000))
    with pytest.raises(InvalidRequest):
        engine.codes(np.zeros((10, 2), np.float32))


def test_encode_convenience(engine, parity, tmp_path):
    data = audio_bytes(chirp_noise(1, 24001, 24000), 24000, ("WAV", "FLOAT"))
    codes, x = engine.encode(data)
    assert np.array_equal(codes, parity["24k_1s_plus1"]["codes"])
    assert np.array_equal(x, parity["24k_1s_plus1"]["x"])


def test_manifest_and_missing_voice_entry(tiny_model, tmp_path):
    m = json.loads((tiny_model / "manifest.json").read_text())
    v = m["voice"]
    for f in ("speech_encoder.onnx", "speaker_encoder.onnx", "mel_filters.npy"):
        assert f in m["files"]
    assert v["speech_encoder"]["num_quantizers"] == 16 and v["mel"]["n_mels"] == 128
    assert v["verify"]["codes_equal"] is True
    assert VoiceEncoder.available(tiny_model)

    old = tmp_path / "old"
    shutil.copytree(tiny_model, old)
    del m["voice"]
    (old / "manifest.json").write_text(json.dumps(m))
    assert not VoiceEncoder.available(old)
    with pytest.raises(ModelError, match="re-convert with scripts/convert.py"):
        VoiceEncoder(old)


def test_export_is_deterministic(tiny_ckpt, tiny_model, tmp_path):
    from scripts.export_encoders import export_encoders

    spec = export_encoders(tiny_ckpt, tmp_path, log=lambda *_: None, verify=False)
    assert spec["files"] == ["speech_encoder.onnx", "speaker_encoder.onnx", "mel_filters.npy"]

    def sha(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    for f in spec["files"]:
        assert sha(tmp_path / f) == sha(tiny_model / f), f"{f} differs between two exports"


def test_runtime_needs_no_torch_or_librosa(tiny_model):
    import subprocess

    code = ("import sys; sys.modules['torch'] = None; sys.modules['librosa'] = None\n"
            "import numpy as np\n"
            "from daemons.engine.voice_encoder import VoiceEncoder, resample_24k\n"
            f"e = VoiceEncoder({str(tiny_model)!r}, threads=1)\n"
            "w = resample_24k((np.random.default_rng(0).standard_normal(16000) * 0.1).astype(np.float32), 16000)\n"
            "c, x = e.codes(w), e.xvector(w)\n"
            "assert c.shape == (13, 16) and x.ndim == 1, (c.shape, x.shape)\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stderr[-2000:]
