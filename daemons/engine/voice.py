"""Voice files: what a cloned voice needs at synthesis time, made once from a reference recording.

A voice file (JSON) holds the reference codes [frames, 16] (speech-tokenizer encoder), the reference
transcript, the speaker x-vector in float32 (float16 audibly changes the timbre), the language, and the
hash of the source audio. With a transcript it is an in-context voice (reference codes + text + x-vector,
MODEL.md 2.5); without one it is an x-vector-only voice."""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidRequest, TTSError

VOICE_FORMAT = "qwen3-tts-voice"
VOICE_VERSION = 1
MIN_SECONDS = 1.0    # the speaker encoder and the in-context prompt need a few words at least
MAX_SECONDS = 30.0   # longer references only lengthen every prompt (12.5 rows per second) and the vocoder context
SILENCE_RMS = 1e-3   # -60 dBFS: nothing to clone
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")  # \Z: "$" would accept a trailing newline
MAX_FILE_BYTES = 4 * 1024 * 1024  # a 30 s voice file is ~60 KB; the largest inline voice a message can carry
MAX_CODE = 1 << 31                # codes are small non-negative ints (the codebook size is checked by the users)
F32_MAX = 3.4e38                  # x-vector values must fit float32 (and be finite)
FILE_MODE = 0o640                 # voice files: owner and the service group, nobody else


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
        """Write atomically (a temporary file in the same directory, then os.replace) with mode 0640: the
        vocoder's scan of voices_dir never reads half a file, and a voice is not world-readable."""
        path = Path(path)
        data = (json.dumps(self.to_json(), ensure_ascii=False) + "\n").encode("utf-8")
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), FILE_MODE)
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return path

    @classmethod
    def from_json(cls, doc, where: str = "voice", hidden: int | None = None) -> "Voice":
        """A voice from its JSON object (a file's content, or an inline voice in a request): VoiceError for
        anything but the documented types and finite, in-range values (checked before any numpy conversion)."""
        if not isinstance(doc, dict) or doc.get("format") != VOICE_FORMAT:
            raise VoiceError(f"{where}: not a {VOICE_FORMAT} file")
        version = doc.get("version")
        if type(version) is not int or version != VOICE_VERSION:
            raise VoiceError(f"{where}: voice file version {version!r} is not supported "
                             f"(this runtime reads version {VOICE_VERSION}); re-encode it")
        raw_xv = doc.get("xvector")
        if not isinstance(raw_xv, list) or not raw_xv \
                or not all(type(v) in (int, float) and abs(v) < F32_MAX for v in raw_xv):  # NaN compares False
            raise VoiceError(f"{where}: malformed voice file (the x-vector must be a list of finite numbers)")
        xv = np.asarray(raw_xv, dtype=np.float32)
        if hidden is not None and xv.shape[0] != hidden:
            raise VoiceError(f"{where}: the x-vector must be {hidden} finite floats, got shape {xv.shape}")
        codes = doc.get("ref_codes")
        if codes is not None:
            if not isinstance(codes, list) or not codes or not all(isinstance(r, list) and len(r) == 16
                                                                    for r in codes):
                shape = (len(codes), "?") if isinstance(codes, list) else type(codes).__name__
                raise VoiceError(f"{where}: reference codes must be [frames, 16], got {shape}")
            if not all(type(c) is int and 0 <= c < MAX_CODE for r in codes for c in r):
                raise VoiceError(f"{where}: reference codes must be integers in 0..{MAX_CODE - 1}")
            codes = np.asarray(codes, dtype=np.int64)
        text = doc.get("ref_text")
        if text is not None and not isinstance(text, str):
            raise VoiceError(f"{where}: ref_text must be a string")
        lang = doc.get("language") or "auto"
        if not isinstance(lang, str):
            raise VoiceError(f"{where}: language must be a string")
        sha = doc.get("source_sha256") or ""
        if not isinstance(sha, str) or len(sha) > 128:
            raise VoiceError(f"{where}: source_sha256 must be a string")
        return cls(xv, codes if text else None, text or None, lang, sha)

    @classmethod
    def load(cls, path: str | Path, hidden: int | None = None) -> "Voice":
        """Read a voice file: a regular file of at most MAX_FILE_BYTES (a FIFO or a device is refused without
        blocking), valid UTF-8 JSON, then `from_json`. Every failure is a VoiceError."""
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VoiceError(f"voice file not found: {path}") from None
        except OSError as e:
            raise VoiceError(f"unreadable voice file {path}: {e.strerror or e}") from None
        try:
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise VoiceError(f"unreadable voice file {path}: not a regular file")
                if st.st_size > MAX_FILE_BYTES:
                    raise VoiceError(f"unreadable voice file {path}: {st.st_size} bytes (at most {MAX_FILE_BYTES})")
                raw = f.read(MAX_FILE_BYTES + 1)
            if len(raw) > MAX_FILE_BYTES:
                raise VoiceError(f"unreadable voice file {path}: more than {MAX_FILE_BYTES} bytes")
            doc = json.loads(raw.decode("utf-8"))
        except VoiceError:
            raise
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
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
