"""Voice files: what a cloned voice needs at synthesis time, made once from a reference recording.

A voice file (JSON) holds the reference codes [frames, 16] (speech-tokenizer encoder), the reference
transcript, the speaker x-vector in float32 (float16 audibly changes the timbre), the language, and the
hash of the source audio. With a transcript it is an in-context voice (reference codes + text + x-vector,
MODEL.md 2.5); without one it is an x-vector-only voice."""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidRequest, TTSError

VOICE_FORMAT = "qwen3-tts-voice"
VOICE_VERSION = 1
MIN_SECONDS = 1.0    # the speaker encoder and the in-context prompt need a few words at least
MAX_SECONDS = 30.0   # longer references only lengthen every prompt (12.5 rows per second) and the vocoder context
SILENCE_RMS = 1e-3   # -60 dBFS: nothing to clone
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class VoiceError(TTSError):
    code = "invalid_voice"


@dataclass
class Voice:
    xvector: np.ndarray                  # float32 [hidden]
    ref_codes: np.ndarray | None = None  # int64 [frames, 16]; None: x-vector-only
    ref_text: str | None = None
    language: str = "auto"
    source_sha256: str = ""
    name: str = ""

    @property
    def mode(self) -> str:
        return "icl" if self.ref_codes is not None and self.ref_text else "xvector"

    def as_xvector_only(self) -> "Voice":
        return Voice(self.xvector, None, None, self.language, self.source_sha256, self.name)

    def to_json(self) -> dict:
        return {"format": VOICE_FORMAT, "version": VOICE_VERSION, "mode": self.mode, "language": self.language,
                "ref_text": self.ref_text if self.mode == "icl" else None,
                "source_sha256": self.source_sha256,
                # float32 -> Python float is exact, and JSON keeps the shortest repr that reads back exactly
                "xvector": [float(v) for v in np.asarray(self.xvector, dtype=np.float32)],
                "ref_codes": None if self.ref_codes is None else np.asarray(self.ref_codes).astype(int).tolist()}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def from_json(cls, doc, where: str = "voice", hidden: int | None = None) -> "Voice":
        if not isinstance(doc, dict) or doc.get("format") != VOICE_FORMAT:
            raise VoiceError(f"{where}: not a {VOICE_FORMAT} file")
        if doc.get("version") != VOICE_VERSION:
            raise VoiceError(f"{where}: voice file version {doc.get('version')!r} is not supported "
                             f"(this runtime reads version {VOICE_VERSION}); re-encode it")
        try:
            xv = np.asarray(doc["xvector"], dtype=np.float32)
            codes = doc.get("ref_codes")
            codes = None if codes is None else np.asarray(codes, dtype=np.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise VoiceError(f"{where}: malformed voice file ({e})") from None
        if xv.ndim != 1 or not np.all(np.isfinite(xv)) or (hidden is not None and xv.shape[0] != hidden):
            raise VoiceError(f"{where}: the x-vector must be {hidden or 'N'} finite floats, got shape {xv.shape}")
        if codes is not None and (codes.ndim != 2 or codes.shape[1] != 16 or codes.shape[0] == 0):
            raise VoiceError(f"{where}: reference codes must be [frames, 16], got {codes.shape}")
        text = doc.get("ref_text")
        if text is not None and not isinstance(text, str):
            raise VoiceError(f"{where}: ref_text must be a string")
        lang = doc.get("language") or "auto"
        if not isinstance(lang, str):
            raise VoiceError(f"{where}: language must be a string")
        return cls(xv, codes if text else None, text or None, lang, str(doc.get("source_sha256", "")))

    @classmethod
    def load(cls, path: str | Path, hidden: int | None = None) -> "Voice":
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise VoiceError(f"voice file not found: {path}") from None
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise VoiceError(f"unreadable voice file {path}: {e}") from None
        v = cls.from_json(doc, str(path), hidden)
        v.name = path.stem
        return v


def find_voice(name: str, voices_dir: str | Path | None, hidden: int | None = None) -> Voice:
    """A voice by name from the configured voices directory (`<voices_dir>/<name>.json`)."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise VoiceError(f"bad voice name {name!r}: letters, digits, '.', '_' and '-' only")
    if voices_dir is None:
        raise VoiceError(f"no voices directory is configured (voices_dir), so voice {name!r} cannot be found")
    path = Path(voices_dir) / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in Path(voices_dir).glob("*.json")) if Path(voices_dir).is_dir() else []
        raise VoiceError(f"unknown voice {name!r}; available: {', '.join(known) or 'none'} (in {voices_dir})")
    return Voice.load(path, hidden)


def check_reference(wav: np.ndarray, sr: int = 24000) -> None:
    secs = len(wav) / sr
    if secs < MIN_SECONDS:
        raise InvalidRequest(f"reference audio is too short: {secs:.2f} s (at least {MIN_SECONDS:g} s)")
    if secs > MAX_SECONDS:
        raise InvalidRequest(f"reference audio is too long: {secs:.1f} s (at most {MAX_SECONDS:g} s; "
                             "cut it to a few sentences)")
    if not np.all(np.isfinite(wav)):
        raise InvalidRequest("reference audio contains NaN or infinite samples")
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
    if rms < SILENCE_RMS:
        raise InvalidRequest(f"reference audio is silent (RMS {20 * np.log10(max(rms, 1e-12)):.0f} dBFS)")


def encode_voice(model_dir, audio, ref_text: str | None = None, language: str = "auto", *, encoder=None,
                 threads: int = 0) -> Voice:
    """Make a voice from a recording: `audio` is a path, the file's bytes, or a (waveform, sample_rate)
    pair at any rate and channel count. `encoder` reuses an open VoiceEncoder."""
    from .manifest import ModelDir
    from .prompt import PromptBuilder
    from .voice_encoder import VoiceEncoder, load_audio, resample_24k

    md = model_dir if isinstance(model_dir, ModelDir) else ModelDir(model_dir)
    if isinstance(audio, tuple):
        wav, sr = load_audio(audio)
        raw = wav.tobytes() + str(sr).encode()
    else:  # the file is read once: its bytes are hashed and decoded
        is_bytes = isinstance(audio, (bytes, bytearray))
        raw = bytes(audio) if is_bytes else _read_bytes(audio)
        wav, sr = load_audio(raw, name=None if is_bytes else str(audio))
    if ref_text is not None:
        ref_text = PromptBuilder.check_text(ref_text, "reference text")
    if language and language.strip().lower() != "auto" and language.strip().lower() not in md.languages:
        raise InvalidRequest(f"unknown language {language!r}; supported: auto, {', '.join(sorted(md.languages))}")
    check_reference(wav, sr)
    wav24 = resample_24k(wav, sr)
    enc = encoder or VoiceEncoder(md, threads=threads)
    codes = enc.codes(wav24) if ref_text else None
    return Voice(enc.xvector(wav24), codes, ref_text, (language or "auto").strip().lower(),
                 hashlib.sha256(raw).hexdigest())


def _read_bytes(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InvalidRequest(f"cannot read reference audio {path}: {e.strerror or e}") from None
