"""Reference-audio encoders for voice cloning, torch-free (numpy, onnxruntime, soundfile, soxr).

What `Qwen3TTSModel.create_voice_clone_prompt` (qwen-tts 0.1.1) computes from one reference recording:

  * `codes`   int64 [F, 16], F = ceil(samples_24k / 1920): the speech-tokenizer encoder (Mimi, first 16 of 32
              codebooks), used as the reference frames of an in-context (ICL) prompt;
  * `xvector` float32 [1024]: the ECAPA-TDNN speaker encoder on a 128-band log-mel, the x-vector row.

Both run on the same waveform: mono (channels averaged), resampled to 24 kHz with soxr "HQ" exactly as
librosa.resample does it (length ceil(n * 24000 / sr)), no normalisation. The ONNX graphs and the mel
filterbank are written at conversion time by `scripts/export_encoders.py` (manifest key "voice").

    enc = VoiceEncoder("model")                       # or a daemons.engine.manifest.ModelDir
    wav, sr = load_audio("ref.wav")                   # any format/channel count soundfile reads
    wav24 = resample_24k(wav, sr)
    codes, xvec = enc.codes(wav24), enc.xvector(wav24)   # or: codes, xvec = enc.encode("ref.wav")
"""
from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np

from .errors import InvalidRequest, ModelError
from .manifest import ModelDir
from .onnx_session import cpu_session

SAMPLE_RATE = 24000
FORMAT = "qwen3-tts-voice-encoders"
FORMAT_VERSION = 1


def _one_line(e: BaseException) -> str:
    s = " ".join(str(e).split())
    return s if s else type(e).__name__


def load_audio(source, name: str | None = None) -> tuple[np.ndarray, int]:
    """A reference recording as (float32 mono waveform at its own rate, that rate). `source`: a path, the
    bytes of a file in any format soundfile reads, or a (waveform, sample rate) pair with the waveform
    [n] or [n, channels]. Channels are averaged as the official loaders do: files like librosa.load(mono=True),
    arrays like `Qwen3TTSModel._normalize_audio_inputs` (float32, then the mean over the last axis).
    `name` names the recording in errors (e.g. the path its bytes came from). Unreadable, empty or
    non-finite audio -> InvalidRequest."""
    import soundfile as sf

    what = f"reference audio {name}" if name else "reference audio"
    if isinstance(source, tuple):
        if len(source) != 2:
            raise InvalidRequest("reference audio must be a (waveform, sample rate) pair")
        wav = np.asarray(source[0], dtype=np.float32)
        if wav.ndim > 1:
            wav = np.mean(wav, axis=-1).astype(np.float32)
        sr = source[1]
    else:
        if isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise InvalidRequest(f"{what} is empty (0 bytes)")
            f = io.BytesIO(bytes(source))
        elif isinstance(source, (str, Path)):
            f = str(source)
            what = f"reference audio {name or source}"
        else:
            raise InvalidRequest(f"reference audio must be a path, the bytes of an audio file or a (waveform, "
                                 f"sample rate) pair, not {type(source).__name__}")
        try:
            data, sr = sf.read(f, dtype="float32", always_2d=True)  # [n, channels]
        except Exception as e:  # soundfile raises LibsndfileError/RuntimeError/TypeError/OSError
            raise InvalidRequest(f"cannot read {what}: {_one_line(e)}") from None
        if data.shape[0] == 0 or data.shape[1] == 0:
            raise InvalidRequest(f"{what} holds no samples")
        # librosa.to_mono on the [channels, n] view: mean over the channel axis (float32)
        wav = data[:, 0] if data.shape[1] == 1 else np.mean(data.T, axis=0)
    wav = np.ascontiguousarray(wav, dtype=np.float32)
    if wav.ndim != 1 or wav.size == 0:
        raise InvalidRequest(f"{what} holds no samples")
    if not np.isfinite(wav).all():
        raise InvalidRequest(f"{what} contains NaN or infinite samples")
    return wav, int(sr)


def _check_wav(wav, name: str = "waveform") -> np.ndarray:
    a = np.asarray(wav)
    if a.ndim != 1:
        raise InvalidRequest(f"{name} must be mono (1-D), got shape {a.shape}")
    if a.size == 0:
        raise InvalidRequest(f"{name} is empty")
    if not np.issubdtype(a.dtype, np.floating):
        raise InvalidRequest(f"{name} must be floating point, got {a.dtype}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(a).all():
        raise InvalidRequest(f"{name} contains NaN or infinite samples")
    return a


def resample_24k(wav: np.ndarray, sr: int) -> np.ndarray:
    """`librosa.resample(wav.astype(float32), orig_sr=sr, target_sr=24000)` (res_type "soxr_hq", fix=True)
    without librosa: soxr HQ, then trimmed or zero-padded to ceil(n * 24000 / sr) samples. float32."""
    import soxr

    y = _check_wav(wav)
    sr = int(sr)
    if sr <= 0:
        raise InvalidRequest(f"sample rate must be positive, got {sr}")
    if sr == SAMPLE_RATE:
        return y
    n_out = int(np.ceil(y.shape[-1] * (float(SAMPLE_RATE) / sr)))
    y_hat = soxr.resample(y, sr, SAMPLE_RATE, quality="soxr_hq")
    if y_hat.shape[0] > n_out:
        y_hat = y_hat[:n_out]
    elif y_hat.shape[0] < n_out:
        y_hat = np.pad(y_hat, (0, n_out - y_hat.shape[0]))
    return np.ascontiguousarray(y_hat, dtype=np.float32)


class VoiceEncoder:
    """The two encoders of a converted model directory (manifest key "voice"). ONNX sessions are created
    on first use (`load()` forces it); calls are thread-safe (onnxruntime sessions are).

    `model`: a ModelDir or its path. `threads`: onnxruntime intra-op threads (0 = onnxruntime's default)."""

    def __init__(self, model: ModelDir | str | Path, threads: int = 0):
        self.model = model if isinstance(model, ModelDir) else ModelDir(model)
        if not isinstance(threads, int) or threads < 0:
            raise ValueError(f"threads must be an int >= 0, got {threads!r}")
        self.threads = threads
        voice = self.model.manifest.get("voice")
        if not voice:
            raise ModelError(f"model directory {self.model.path} has no voice-cloning encoders (no \"voice\" "
                             "entry in manifest.json; converted by an older converter): re-convert with "
                             "scripts/convert.py")
        self.spec = voice
        try:
            se, sp, mel = voice["speech_encoder"], voice["speaker_encoder"], voice["mel"]
            for s in (se, sp):
                if s.get("format") != FORMAT or s.get("format_version") != FORMAT_VERSION:
                    raise ModelError(f"{self.model.path}: voice encoders are not {FORMAT} v{FORMAT_VERSION} "
                                     f"(format={s.get('format')!r}, version={s.get('format_version')!r}); "
                                     "re-convert with scripts/convert.py")
            self._speech_path = self.model.file(se["onnx"])
            self._speaker_path = self.model.file(sp["onnx"])
            self.sample_rate = int(se["sample_rate"])
            self.samples_per_frame = int(se["samples_per_frame"])
            self.num_quantizers = int(se["num_quantizers"])
            self.codebook_size = int(se["codebook_size"])
            self.enc_dim = int(sp["enc_dim"])
            self.min_mel_frames = int(sp.get("min_frames", 1))
            self.n_fft, self.hop, self.win = int(mel["n_fft"]), int(mel["hop"]), int(mel["win"])
            self.pad, self.n_mels = int(mel["pad"]), int(mel["n_mels"])
            self.mag_eps, self.log_clip = float(mel["magnitude_eps"]), float(mel["log_clip"])
            filters_name = mel["filters"]
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"{self.model.path}/manifest.json: malformed \"voice\" entry ({_one_line(e)}); "
                             "re-convert with scripts/convert.py") from None
        if self.sample_rate != SAMPLE_RATE or int(mel["sample_rate"]) != SAMPLE_RATE:
            raise ModelError(f"voice encoders expect {self.sample_rate} Hz; this runtime resamples to {SAMPLE_RATE}")
        if mel.get("window") != "hann_periodic" or mel.get("center") or self.win != self.n_fft:
            raise ModelError(f"unsupported mel front end {mel}")
        for p in (self._speech_path, self._speaker_path, self.model.file(filters_name)):
            if not p.is_file():
                raise ModelError(f"model directory {self.model.path} is incomplete: {p.name} is missing")
        self.mel_filters = np.ascontiguousarray(np.load(self.model.file(filters_name)), dtype=np.float64)
        if self.mel_filters.shape != (self.n_mels, self.n_fft // 2 + 1):
            raise ModelError(f"{filters_name} has shape {self.mel_filters.shape}, expected "
                             f"({self.n_mels}, {self.n_fft // 2 + 1})")
        n = np.arange(self.win, dtype=np.float64)
        self.window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.win)  # torch.hann_window (periodic)
        # the shortest waveform the speaker encoder takes: reflect padding needs > pad samples, and its
        # "same" convolutions (reflect) need min_frames mel frames
        self.min_samples = max(self.pad + 1, (self.min_mel_frames - 1) * self.hop + self.n_fft - 2 * self.pad)
        self._lock = threading.Lock()
        self._speech = None
        self._speaker = None

    @staticmethod
    def available(model: ModelDir | str | Path) -> bool:
        """Does this model directory carry the voice-cloning encoders (converted with them)?"""
        try:
            md = model if isinstance(model, ModelDir) else ModelDir(model)
        except ModelError:
            return False
        return bool(md.manifest.get("voice"))

    # --- sessions ---
    def _session(self, path: Path):
        try:
            # no memory arena: activations scale with the reference length (full size: ~35 MiB per second of
            # audio in the 24 kHz conv stages) and an arena would keep the peak for the life of the process
            return cpu_session(path, self.threads, mem_arena=False)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load {path}: {_one_line(e)}") from None

    def load(self) -> "VoiceEncoder":
        """Create both onnxruntime sessions now (otherwise on first use)."""
        with self._lock:
            if self._speech is None:
                self._speech = self._session(self._speech_path)
            if self._speaker is None:
                self._speaker = self._session(self._speaker_path)
        return self

    # --- encoders ---
    def codes(self, wav24k: np.ndarray) -> np.ndarray:
        """Speech-tokenizer codes of a 24 kHz mono waveform: int64 [ceil(n / 1920), 16]."""
        y = _check_wav(wav24k, "24 kHz waveform")
        if self._speech is None:
            self.load()
        codes = self._speech.run(None, {"wav": y})[0]
        frames = -(-y.shape[0] // self.samples_per_frame)
        if codes.shape != (frames, self.num_quantizers):
            raise ModelError(f"speech encoder returned shape {codes.shape}, expected ({frames}, {self.num_quantizers})")
        return np.ascontiguousarray(codes, dtype=np.int64)

    def log_mel(self, wav24k: np.ndarray) -> np.ndarray:
        """The speaker encoder's input: float32 [1, T, n_mels], T = 1 + (n + 2*pad - n_fft) // hop
        (`modeling_qwen3_tts.mel_spectrogram`: reflect pad, |STFT| (center=False, periodic Hann), slaney mel
        filterbank, log(clamp(x, 1e-5))). Computed in float64, returned as float32."""
        y = _check_wav(wav24k, "24 kHz waveform")
        if y.shape[0] < self.min_samples:
            raise InvalidRequest(f"reference audio too short for the speaker encoder: {y.shape[0]} samples at "
                                 f"{self.sample_rate} Hz, need at least {self.min_samples} "
                                 f"({self.min_samples / self.sample_rate * 1000:.0f} ms)")
        yp = np.pad(y.astype(np.float64), (self.pad, self.pad), mode="reflect")
        n_frames = 1 + (yp.shape[0] - self.n_fft) // self.hop
        out = np.empty((n_frames, self.n_mels), dtype=np.float32)
        frames = np.lib.stride_tricks.sliding_window_view(yp, self.n_fft)[:: self.hop]
        step = 512  # frames per block (bounds the float64 working set)
        for i in range(0, n_frames, step):
            spec = np.fft.rfft(frames[i:i + step] * self.window, n=self.n_fft, axis=-1)
            mag = np.sqrt(spec.real ** 2 + spec.imag ** 2 + self.mag_eps)
            mel = mag @ self.mel_filters.T
            out[i:i + step] = np.log(np.maximum(mel, self.log_clip))
        return out[None]

    def xvector(self, wav24k: np.ndarray) -> np.ndarray:
        """Speaker embedding (x-vector) of a 24 kHz mono waveform: float32 [enc_dim]."""
        mel = self.log_mel(wav24k)
        if self._speaker is None:
            self.load()
        x = self._speaker.run(None, {"mel": mel})[0]
        if x.shape != (self.enc_dim,):
            raise ModelError(f"speaker encoder returned shape {x.shape}, expected ({self.enc_dim},)")
        return np.ascontiguousarray(x, dtype=np.float32)

    def encode(self, source: str | Path | bytes | tuple[np.ndarray, int]) -> tuple[np.ndarray, np.ndarray]:
        """(codes, xvector) of one reference recording (anything `load_audio` reads), as
        `create_voice_clone_prompt` computes them (both from the same 24 kHz waveform)."""
        y = resample_24k(*load_audio(source))
        return self.codes(y), self.xvector(y)
