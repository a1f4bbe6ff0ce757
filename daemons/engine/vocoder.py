"""Streaming vocoder (12 Hz speech-tokenizer decoder) on onnxruntime: codes [N, 16] -> 24 kHz float audio.

The model is the stateful chunk step written by `scripts/export_vocoder.py` (`vocoder.onnx` + `vocoder.json`).
A `VocoderStream` keeps the decoder state (conv left contexts, transposed-conv overlap tails, the
sliding-window KV cache and its position counter) between calls, so feeding an utterance's frames in
chunks of any size gives the same audio as decoding all of them at once: no seams, no re-decoding of
context, constant cost per chunk. numpy + onnxruntime only (no torch).

    eng = VocoderEngine("model/vocoder.onnx", threads=2)   # vocoder.json is read from the same folder
    s = eng.new_stream()
    for codes in frames_from_generation:                   # int64 [n, 16], any n >= 1
        pcm = s.decode(codes)                              # float32 [n * 1920], in [-1, 1]
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .errors import ModelError
from .onnx_session import cpu_session

FORMAT = "qwen3-tts-vocoder-stream"
FORMAT_VERSION = 1
SPEC_NAME = "vocoder.json"

_DTYPES = {"float32": np.float32, "int64": np.int64}
# Priming with a reference: the conv tail (~99 % of the work) depends on its last 10 input frames only
# (MODEL.md 5.1, measured), so only the reference's last HEAD_TAIL_FRAMES go through the whole graph; the
# frames before them through the head alone (`vocoder_head.onnx`), whose transformer needs them all.
HEAD_TAIL_FRAMES = 16


def _load_spec(onnx_path: Path, state_spec: Mapping[str, Any] | str | Path | None) -> dict:
    if state_spec is None:
        state_spec = onnx_path.parent / SPEC_NAME
    if isinstance(state_spec, (str, Path)):
        p = Path(state_spec)
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read the vocoder spec {p}: {e}") from None
    return dict(state_spec)


class VocoderEngine:
    """One onnxruntime session for the streaming vocoder; any number of independent streams.

    `model`: path of `vocoder.onnx`, or the directory holding it (the file named by the spec's "onnx").
    `state_spec`: the dict returned by `export_vocoder()` (= the content of `vocoder.json`, or the
    manifest's "vocoder" entry), or a path to such a JSON file; None reads `vocoder.json` next to the model.
    `threads`: onnxruntime intra-op threads (None = onnxruntime's default, one per core).
    `spinning`: let idle intra-op threads busy-wait between ops (faster, but burns CPU that the talker
    and code predictor may need when they share the cores; off by default).
    `opt_level`, `mem_pattern`: onnxruntime session options (see `onnx_session.cpu_session`; the
    defaults are the fastest measured, scripts/bench_vocoder.py).
    Sessions are not re-entrant per stream; different streams may be decoded from different threads.
    (The RK3588 NPU backend with the same interface is `daemons.engine.vocoder_rknn.RknnVocoderEngine`.)
    """

    backend = "onnx"
    fallback_reason: str | None = None  # set by daemons.engine.vocoder_rknn.open_vocoder when RKNN was not usable

    def __init__(self, model: str | Path, state_spec: Mapping[str, Any] | str | Path | None = None,
                 threads: int | None = None, *, spinning: bool = False, providers: list | None = None,
                 opt_level: str = "all", mem_pattern: bool = True):
        import onnxruntime as ort

        model = Path(model)
        if model.is_dir():
            spec = _load_spec(model / SPEC_NAME, state_spec)
            model = model / spec.get("onnx", "vocoder.onnx")
        else:
            spec = _load_spec(model, state_spec)
        if spec.get("format") != FORMAT or spec.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"not a {FORMAT} v{FORMAT_VERSION} spec (format={spec.get('format')!r}, "
                             f"version={spec.get('format_version')!r}); re-export with scripts/export_vocoder.py")
        if not model.is_file():
            raise ModelError(f"vocoder model not found: {model}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        self.spec = spec
        self.path = model
        self.num_quantizers = int(spec["num_quantizers"])
        self.codebook_size = int(spec["codebook_size"])
        self.samples_per_frame = int(spec["samples_per_frame"])
        self.sample_rate = int(spec["sample_rate"])
        pin, pout = spec.get("state_input_prefix", "state_in_"), spec.get("state_output_prefix", "state_out_")
        self._state_spec = [(s["name"], tuple(int(x) for x in s["shape"]), _DTYPES[s["dtype"]])
                        for s in spec["states"]]
        self._in_names = ["codes"] + [pin + n for n, _, _ in self._state_spec]
        self._out_names = ["wav"] + [pout + n for n, _, _ in self._state_spec]

        try:
            self.session = cpu_session(model, threads, spinning=spinning, providers=providers, opt_level=opt_level,
                                       mem_pattern=mem_pattern)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load the vocoder {model}: {e}") from None
        have_in = {i.name for i in self.session.get_inputs()}
        have_out = {o.name for o in self.session.get_outputs()}
        missing = [n for n in self._in_names if n not in have_in] + [n for n in self._out_names if n not in have_out]
        if missing:
            raise ModelError(f"{model} does not match its spec: missing tensors {missing[:5]}")
        self._ort = ort
        self._threads, self._providers = threads, providers
        head = spec.get("head") or {}
        self.head_path = model.parent / head["onnx"] if head.get("onnx") else None
        if self.head_path is not None and not self.head_path.is_file():
            self.head_path = None  # an older conversion: priming decodes every reference frame
        self._head_states = [self.state_names.index(n) for n in head.get("states", [])]

    def prime_head(self, codes: np.ndarray, states: list) -> list | None:
        """`states` after the head alone has seen `codes` (validated), the tail states untouched; None without
        a head model. Its session (~150 MB at full size) lives for this call only: priming is rare, and its
        states are cached by the caller."""
        if self.head_path is None:
            return None
        try:
            sess = cpu_session(self.head_path, self._threads, providers=self._providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load the vocoder head {self.head_path}: {e}") from None
        feeds = self._feeds(codes, states, self._head_states)
        outs = sess.run_with_ort_values([self._out_names[1 + i] for i in self._head_states], feeds)
        new = list(states)
        for i, o in zip(self._head_states, outs):
            new[i] = o
        return new

    @property
    def state_names(self) -> list[str]:
        return [n for n, _, _ in self._state_spec]

    def initial_state(self) -> list[np.ndarray]:
        """Zeros for every state tensor (the exact start-of-utterance state)."""
        return [np.zeros(shape, dtype) for _, shape, dtype in self._state_spec]

    def new_stream(self) -> "VocoderStream":
        return VocoderStream(self)

    def validate(self, codes) -> np.ndarray:
        """Check and normalise a chunk of codes to a contiguous int64 [N, num_quantizers] array."""
        if not isinstance(codes, np.ndarray):
            raise ValueError(f"codes must be a numpy array of shape (N, {self.num_quantizers}), "
                             f"got {type(codes).__name__}")
        if codes.ndim != 2 or codes.shape[1] != self.num_quantizers:
            raise ValueError(f"codes must have shape (N, {self.num_quantizers}) (frames x codebooks), "
                             f"got {codes.shape}")
        if codes.shape[0] < 1:
            raise ValueError("codes must hold at least one frame (got N=0)")
        if not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(f"codes must be integers (int64), got dtype {codes.dtype}")
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= self.codebook_size:
            bad = np.argwhere((codes < 0) | (codes >= self.codebook_size))[0]
            raise ValueError(f"code out of range 0..{self.codebook_size - 1}: codes[{bad[0]}, {bad[1]}] = "
                             f"{int(codes[bad[0], bad[1]])} (frame {bad[0]}, codebook {bad[1]})")
        return np.ascontiguousarray(codes, dtype=np.int64)

    def _feeds(self, codes: np.ndarray, states: list, which) -> dict:
        """Session inputs: codes and the states numbered `which` (OrtValues, or numpy arrays)."""
        ov = self._ort.OrtValue.ortvalue_from_numpy
        feeds = {"codes": ov(codes)}
        for i in which:
            st = states[i]
            feeds[self._in_names[1 + i]] = st if isinstance(st, self._ort.OrtValue) else ov(np.ascontiguousarray(st))
        return feeds

    def _run(self, codes: np.ndarray, states: list):
        """One chunk step. `states` are OrtValues (or numpy arrays); returns (wav numpy, new OrtValues)."""
        outs = self.session.run_with_ort_values(self._out_names, self._feeds(codes, states, range(len(states))))
        return outs[0].numpy().reshape(-1), list(outs[1:])

    def decode_all(self, codes) -> np.ndarray:
        """Decode a whole utterance [T, 16] in one call (= the official decoder's full forward)."""
        return self.new_stream().decode(codes)


class VocoderStream:
    """Decoder state of one utterance. `decode()` successive chunks of frames; the concatenated
    outputs equal one decode of all frames. Not thread-safe (one stream = one producer)."""

    def __init__(self, engine: VocoderEngine):
        self.engine = engine
        self.reset()

    def reset(self) -> None:
        """Back to the start-of-utterance state."""
        self._states: list = self.engine.initial_state()
        self.frames = 0

    def decode(self, codes) -> np.ndarray:
        """codes int [N, 16] (N >= 1, each 0..codebook_size-1) -> float32 [N * 1920] audio in [-1, 1]."""
        codes = self.engine.validate(codes)
        wav, self._states = self.engine._run(codes, self._states)
        self.frames += codes.shape[0]
        return wav

    def prime(self, codes, at: int, step: int) -> int:
        """One step of priming with a reference `codes` (its audio is dropped), from frame `at`; returns the
        next `at`. A fresh stream whose engine has a head model takes all but the last HEAD_TAIL_FRAMES in
        one head-only pass (400 frames at full size: 12.5 s -> 0.6 s, 81 dB from decoding them all); then,
        and otherwise, `step` frames go through the whole graph."""
        n = len(codes) - HEAD_TAIL_FRAMES
        if at == 0 and self.frames == 0 and n > 0 and hasattr(self.engine, "prime_head"):
            states = self.engine.prime_head(self.engine.validate(codes[:n]), self._states)
            if states is not None:
                self._states, self.frames = states, n
                return n
        self.decode(codes[at:at + step])
        return min(at + step, len(codes))

    def get_state(self) -> list[np.ndarray]:
        """A copy of the state (numpy), e.g. to cache the state after a voice's reference codes."""
        return [np.array(s.numpy() if isinstance(s, self.engine._ort.OrtValue) else s, copy=True)
                for s in self._states]

    def set_state(self, states: list[np.ndarray], frames: int | None = None) -> None:
        if len(states) != len(self.engine._state_spec):
            raise ValueError(f"expected {len(self.engine._state_spec)} state tensors, got {len(states)}")
        for (name, shape, dtype), s in zip(self.engine._state_spec, states):
            if tuple(s.shape) != shape or s.dtype != dtype:
                raise ValueError(f"state {name}: expected {dtype.__name__}{list(shape)}, "
                                 f"got {s.dtype}{list(s.shape)}")
        self._states = [np.array(s, copy=True) for s in states]
        if frames is None:
            names = self.engine.state_names
            frames = int(states[names.index("tfm_pos")].reshape(-1)[0]) if "tfm_pos" in names else 0
        self.frames = int(frames)

    def clone(self) -> "VocoderStream":
        """An independent stream continuing from this one's state."""
        other = VocoderStream(self.engine)
        other.set_state(self.get_state(), self.frames)
        return other
