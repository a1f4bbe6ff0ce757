"""Streaming vocoder on the RK3588 NPU (rknn-toolkit-lite2); the backend choice is `daemons.vocoder_backend`.

`scripts/convert_rknn.py` converts the stateful chunk step `vocoder.onnx` (see `daemons/engine/vocoder.py`) with a
FIXED chunk of N frames (RKNN graphs have static shapes). Its sidecar `<file>.rknn.json` records N, the
precision, the graph layout and the tensor order. Two layouts:

  "split" (sidecar format_version 2, the default): the position-dependent head (RVQ, transformer with
          its KV cache and RoPE, upsampling) runs on onnxruntime FP32 from `<file>.rknn.head.onnx`;
          only the conv decoder (latent + its states -> wav) is on the NPU. The head is ~4 % of the
          FLOPs (~12 % of onnxruntime's time); on the NPU it cost 2-4 dB, and int16/int8 collapsed once
          the stream position left the calibrated range (docs/RKNN.md).
  "full"  (format_version 1): the whole chunk step on the NPU (codes + all states -> wav + states).

Chunks that are not a multiple of N: the stateful model must never be fed padding frames (padding
would advance the KV cache, the position counter and every conv context), so a call of n frames runs
the n // N full chunks on the NPU (after the CPU head, split layout) and the n % N remaining frames on
onnxruntime (CPU) with the same `vocoder.onnx`, handing the state tensors over between the two. The API is exactly `VocoderStream`'s:
n frames in, n * 1920 samples out, immediately (no buffering, no flush, no added latency); with the
talker's steady chunk of 4 frames and N = 4 everything but the first chunk (2 frames) and the
remainder of a sentence runs on the NPU. Both backends compute the same function, so the hand-over is
seam-free up to the NPU's precision (measured in docs/RKNN.md).
"""
from __future__ import annotations

import json
import logging
import platform
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .console_capture import captured_console
from .errors import ModelError
from .onnx_session import cpu_session
from .vocoder import SPEC_NAME, VocoderEngine, VocoderStream

RKNN_META_SUFFIX = ".json"            # vocoder.rknn -> vocoder.rknn.json
RKNN_META_FORMAT = "qwen3-tts-vocoder-rknn"
RKNN_META_VERSION = 2                 # 2: "graph" = "split" | "full"; version 1 files are "full"
RKNN_META_VERSIONS = (1, 2)
LATENT = "latent"                     # = scripts.rknn_graph.LATENT, the NPU tail's first input


class RknnUnavailable(RuntimeError):
    """The NPU path cannot be used; `what` is "file", "runtime", "driver" or "model"."""

    def __init__(self, what: str, message: str):
        super().__init__(message)
        self.what = what


def rknn_meta_path(rknn_path: str | Path) -> Path:
    p = Path(rknn_path)
    return p.with_name(p.name + RKNN_META_SUFFIX)


def read_rknn_meta(rknn_path: str | Path) -> dict:
    p = Path(rknn_path)
    if not p.is_file():
        raise RknnUnavailable("file", f"no RKNN model at {p} (make one with scripts/convert_rknn.py)")
    mp = rknn_meta_path(p)
    try:
        meta = json.loads(mp.read_text())
    except (OSError, ValueError) as e:
        raise RknnUnavailable("file", f"cannot read {mp} (written by scripts/convert_rknn.py): {e}") from None
    if meta.get("format") != RKNN_META_FORMAT or meta.get("format_version") not in RKNN_META_VERSIONS:
        raise RknnUnavailable("file", f"{mp}: not a {RKNN_META_FORMAT} v{'/v'.join(map(str, RKNN_META_VERSIONS))} "
                                      f"file")
    meta.setdefault("graph", "full")
    return meta


def _import_rknnlite():
    # rknn-toolkit-lite2 2.5.0's import renames logging's levels process-wide to C/E/W/I/D and drops the
    # standard names (seen under aarch64 emulation): our journal lines would say "I" for INFO and any later
    # setLevel("WARNING") would raise. Put the tables back as they were.
    names = dict(logging._nameToLevel), dict(logging._levelToName)
    try:
        from rknnlite.api import RKNNLite  # rknn-toolkit-lite2: aarch64 boards only
    except ImportError as e:
        raise RknnUnavailable("runtime", f"rknn-toolkit-lite2 is not installed ({e}; it exists for aarch64 "
                                         f"only, this is {platform.machine()})") from None
    except Exception as e:  # noqa: BLE001 - a broken install (e.g. missing librknnrt.so) raises anything
        raise RknnUnavailable("runtime", f"rknn-toolkit-lite2 cannot be imported: {e}") from None
    finally:
        for table, saved in zip((logging._nameToLevel, logging._levelToName), names):
            if table != saved:
                table.clear()
                table.update(saved)
    return RKNNLite


def _core_mask_value(RKNNLite, mask: int | None) -> int:
    if mask is None:
        return getattr(RKNNLite, "NPU_CORE_AUTO", 0)
    return int(mask)


DEVICE_TREE = Path("/proc/device-tree/compatible")   # where rknn-toolkit-lite2 reads the SoC from
# its log lines start with its level name: "E" as it prints it, "ERROR" once our level names are back
_LEVEL = r"(?:E|ERROR) "
_TRACEBACK = re.compile(rf"^(?:{_LEVEL})?Traceback \(most recent call last\):")


def library_reason(lines: list[str]) -> str:
    """rknn-toolkit-lite2's own reason from what it printed: the exception at the end of its last traceback
    (it logs `E Catch exception when init runtime!` + `E Traceback ...`; the exception text may span lines),
    else its error lines (`E ` / `ERROR `); "" when it printed neither."""
    starts = [i for i, ln in enumerate(lines) if _TRACEBACK.match(ln)]
    if starts:
        body = lines[starts[-1] + 1:]
        frames = [i for i, ln in enumerate(body) if ln.startswith((" ", "\t"))]
        exc = " ".join(ln.strip() for ln in body[(frames[-1] + 1 if frames else 0):])
        return re.sub(rf"^(?:{_LEVEL})?(?:Exception: )?", "", exc).strip()
    return "; ".join(re.sub(rf"^{_LEVEL}", "", ln).strip() for ln in lines if re.match(_LEVEL, ln))


def _soc_hint() -> str:
    try:
        soc = DEVICE_TREE.read_bytes().replace(b"\0", b" ").decode("ascii", "replace").strip()
    except OSError:
        return f"; {DEVICE_TREE} is absent (not a Rockchip board, or a container without it)"
    return f"; {DEVICE_TREE}: {soc}"


def _open_rknnlite(RKNNLite, path: Path, core_mask: int | None):
    """RKNNLite with the model loaded and the runtime up, or RknnUnavailable with the library's own reason.

    target=None: "NPU inside", the board's own NPU, the SoC read from the device tree (a target name
    means a device over adb/ntb: on aarch64 the library answers "Unsupported run platform: Linux
    aarch64"). The library prints its log and tracebacks on stdout/stderr itself: captured here, so the
    fallback is one log line with the reason in it."""
    rk, step, ret = None, "RKNNLite()", None
    with captured_console() as out:
        try:
            rk = RKNNLite(verbose=False)
            step, ret = "load_rknn", rk.load_rknn(str(path))
            if ret == 0:
                step, ret = "init_runtime", rk.init_runtime(target=None,
                                                            core_mask=_core_mask_value(RKNNLite, core_mask))
        except Exception as e:  # noqa: BLE001 - it catches its own errors; anything else is a broken install
            ret = f"{type(e).__name__}: {e}"
        if ret != 0 and rk is not None:
            try:
                rk.release()
            except Exception:  # noqa: BLE001 - already failing; the reason below is the useful part
                pass
    if ret == 0:
        return rk, out.lines()
    said = library_reason(out.lines())
    what = f"rknn-toolkit-lite2 {step} " + (f"raised {ret}" if isinstance(ret, str) else f"returned {ret}")
    what += f": {said}" if said else ""
    if step == "load_rknn":
        raise RknnUnavailable("model", f"{what} (model {path})")
    raise RknnUnavailable("driver", what + _soc_hint())


class RknnVocoderEngine:
    """Same interface as `VocoderEngine` (new_stream, validate, initial_state, decode_all, the spec numbers),
    full chunks on the NPU, remainders on the onnxruntime engine `cpu` (which must use the same spec).

    `runtime`: an initialised object with rknn's `inference(inputs=..., data_format=...)` (scripts/
    convert_rknn.py passes rknn-toolkit2's simulator here to measure this very code path); None = load
    the .rknn file with rknn-toolkit-lite2 on the NPU (`core_mask`). `threads`: onnxruntime threads of
    the split layout's head session (None = onnxruntime's default)."""

    backend = "rknn"

    def __init__(self, rknn_path: str | Path, cpu: VocoderEngine, *, core_mask: int | None = None,
                 runtime: Any = None, threads: int | None = None):
        self.path = Path(rknn_path)
        meta = read_rknn_meta(self.path)
        pin = cpu.spec.get("state_input_prefix", "state_in_")
        names = list(cpu.state_names)
        self.graph = meta["graph"]
        if self.graph == "full":
            npu_states = names
            expect = ["codes"] + [pin + n for n in names]
        elif self.graph == "split":
            head, tail = list(meta.get("head_states") or []), list(meta.get("tail_states") or [])
            if sorted(head + tail) != sorted(names) or not head or not tail:
                raise RknnUnavailable("model", f"{self.path} was converted from another vocoder (its state "
                                               f"split does not match {SPEC_NAME}); re-run scripts/convert_rknn.py")
            npu_states = tail
            expect = [LATENT] + [pin + n for n in tail]
        else:
            raise RknnUnavailable("file", f"{rknn_meta_path(self.path)}: unknown graph layout {self.graph!r}")
        if meta.get("inputs") != expect:
            raise RknnUnavailable("model", f"{self.path} was converted from another vocoder (its inputs do not "
                                           f"match {SPEC_NAME}); re-run scripts/convert_rknn.py")
        self.chunk = int(meta["chunk"])
        if self.chunk < 1:
            raise RknnUnavailable("model", f"{self.path}: bad chunk {self.chunk}")
        self.meta = meta
        self.precision = meta.get("precision")
        self.cpu = cpu
        self._npu_idx = [names.index(n) for n in npu_states]
        self.head = None
        head_path = self.path.parent / str(meta.get("head_onnx") or "")
        if self.graph == "split" and not head_path.is_file():
            raise RknnUnavailable("file", f"the split RKNN model's CPU head {head_path} is missing (written next "
                                          f"to the .rknn by scripts/convert_rknn.py)")
        init = cpu.initial_state()
        self._shapes = [s.shape for s in init]
        self._dtypes = [s.dtype for s in init]
        self.core_mask = core_mask
        RKNNLite = _import_rknnlite() if runtime is None else None
        if self.graph == "split":
            self._head_idx = [names.index(n) for n in meta["head_states"]]
            self.head = self._open_head(head_path, cpu, meta, threads)
        if runtime is not None:
            self.rknn, self._owns_runtime, self.runtime_log = runtime, False, []
            return
        rk, self.runtime_log = _open_rknnlite(RKNNLite, self.path, core_mask)
        self.rknn, self._owns_runtime = rk, True

    @staticmethod
    def _open_head(path: Path, cpu: VocoderEngine, meta: dict, threads: int | None):
        """onnxruntime session of the split layout's head (codes + head states -> latent + head states)."""
        try:
            sess = cpu_session(path, threads)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise RknnUnavailable("model", f"cannot load the CPU head {path}: {e}") from None
        pin = cpu.spec.get("state_input_prefix", "state_in_")
        pout = cpu.spec.get("state_output_prefix", "state_out_")
        ins = ["codes"] + [pin + n for n in meta["head_states"]]
        outs = [LATENT] + [pout + n for n in meta["head_states"]]
        if [i.name for i in sess.get_inputs()] != ins or [o.name for o in sess.get_outputs()] != outs:
            raise RknnUnavailable("model", f"{path} does not have the head's inputs/outputs its sidecar lists; "
                                           f"re-run scripts/convert_rknn.py")
        return sess, ins, outs

    # --- the VocoderEngine interface, delegated to the onnxruntime engine's spec
    spec = property(lambda self: self.cpu.spec)
    num_quantizers = property(lambda self: self.cpu.num_quantizers)
    codebook_size = property(lambda self: self.cpu.codebook_size)
    samples_per_frame = property(lambda self: self.cpu.samples_per_frame)
    sample_rate = property(lambda self: self.cpu.sample_rate)
    state_names = property(lambda self: self.cpu.state_names)

    def initial_state(self) -> list[np.ndarray]:
        return self.cpu.initial_state()

    def validate(self, codes) -> np.ndarray:
        return self.cpu.validate(codes)

    def new_stream(self) -> "RknnVocoderStream":
        return RknnVocoderStream(self)

    def decode_all(self, codes) -> np.ndarray:
        return self.new_stream().decode(codes)

    def _infer(self, inputs: list[np.ndarray]) -> list:
        outs = self.rknn.inference(inputs=inputs, data_format=["nchw"] * len(inputs))
        if outs is None or len(outs) != len(inputs):
            raise RuntimeError(f"rknn inference returned {None if outs is None else len(outs)} outputs, "
                               f"expected {len(inputs)}")
        return outs

    def _run_npu(self, codes: np.ndarray, states: list[np.ndarray]):
        """One full chunk: (wav, new states) with numpy states in spec order."""
        new = list(states)
        if self.head is not None:  # split: head on onnxruntime FP32, conv decoder on the NPU
            sess, ins, outs = self.head
            h = sess.run(outs, dict(zip(ins, [codes] + [states[i] for i in self._head_idx])))
            for i, a in zip(self._head_idx, h[1:]):
                new[i] = a
            npu_in = [h[0]]
        else:
            npu_in = [codes]
        o = self._infer(npu_in + [states[i] for i in self._npu_idx])
        for i, a in zip(self._npu_idx, o[1:]):
            new[i] = np.ascontiguousarray(np.asarray(a).reshape(self._shapes[i]), dtype=self._dtypes[i])
        return np.asarray(o[0], dtype=np.float32).reshape(-1), new

    def _run(self, codes: np.ndarray, states: list):
        """n frames: n // chunk full chunks on the NPU, the rest on onnxruntime; numpy states in and out."""
        states = [s.numpy() if hasattr(s, "numpy") and not isinstance(s, np.ndarray) else s for s in states]
        pcm, n, k = [], codes.shape[0], self.chunk
        full = n - n % k
        for i in range(0, full, k):
            w, states = self._run_npu(codes[i:i + k], states)
            pcm.append(w)
        if full < n:
            w, ov = self.cpu._run(codes[full:], states)
            states = [s.numpy() for s in ov]
            pcm.append(w)
        return (pcm[0] if len(pcm) == 1 else np.concatenate(pcm)), states

    def close(self) -> None:
        rk, self.rknn = getattr(self, "rknn", None), None
        if rk is not None and getattr(self, "_owns_runtime", False):
            rk.release()


class RknnVocoderStream(VocoderStream):
    """`VocoderStream` over `RknnVocoderEngine` (state kept as numpy arrays)."""

    def get_state(self) -> list[np.ndarray]:
        return [np.array(s.numpy() if not isinstance(s, np.ndarray) else s, copy=True) for s in self._states]

    def clone(self) -> "RknnVocoderStream":
        other = RknnVocoderStream(self.engine)
        other.set_state(self.get_state(), self.frames)
        return other
