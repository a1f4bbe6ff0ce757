#!/usr/bin/env python3
"""Convert the streaming vocoder (`vocoder.onnx` + `vocoder.json`) to an RK3588 `.rknn` model and measure
its accuracy in the rknn-toolkit2 simulator against onnxruntime FP32.

Runs inside `.venv-rknn` (made by `bash scripts/setup_rknn_env.sh`; rknn-toolkit2 pins numpy/onnx/torch
versions that clash with the project's .venv):

    .venv-rknn/bin/python scripts/convert_rknn.py MODEL_DIR [--precision int16|fp16|int8|hybrid] [--chunk 4]
        [--graph split|full] [--split-at dac|upsample] [--out MODEL_DIR/vocoder.rknn] [--calib-chunks 128]
        [--calib-codes CODES.npy] [--eval-chunks 6] [--seed 0] [--json REPORT.json]

The RKNN graph has static shapes: the chunk of N frames (`--chunk`, default 4 = the talker's
`chunk_frames`) is fixed; `daemons/engine/vocoder_rknn.py` runs full chunks on the NPU and the remainder of a
call on onnxruntime (never padding: the model is stateful). Writes `<out>`, `<out>.json` (chunk,
precision, graph layout, tensor order, accuracy figures) and, for the split layout, `<out>.head.onnx`.

Graph layout (`--graph`, see scripts/rknn_graph.py):
  split   (default) the position-dependent head (RVQ, transformer with KV cache and RoPE, and with
          `--split-at dac` also the upsampling) stays onnxruntime FP32 on the CPU (`<out>.head.onnx`);
          only the SnakeBeta/conv decoder goes to the NPU. Head then tail is the original graph node for
          node (checked: fp32 head+tail vs vocoder.onnx, reported as "split_check").
  full    the whole chunk step on the NPU (loses 1-3 dB more, and collapses at long stream positions in
          int16/int8: the RoPE angle pos * inv_freq is calibrated on short streams only).

Precisions:
  int16   (default) w16a16i_dfp: 16-bit dynamic fixed point weights and activations, calibrated on
          `--calib-chunks` real chunk steps (see below)
  fp16    no quantization (the NPU computes in float16)
  int8    w8a8 quantization of everything
  hybrid  w8a8 where it is harmless, float16 elsewhere: rknn-toolkit2's automatic hybrid quantization
          (build(auto_hybrid=True)) keeps in float16 every layer whose int8 output falls below cosine
          similarity HYBRID_COS_THRESH on the calibration set
Calibration (int16/int8/hybrid) feeds the NPU graph the inputs it really gets: the codes of random
utterances (or of `--calib-codes`, an int [T, 16] .npy of codes from real generation) and the state
tensors the FP32 stream actually reaches, so the conv contexts are calibrated too. int16 keeps each
tensor's calibrated range (rounded up to a power of two): a value beyond it saturates, so calibrate on
enough steps (default 128; with 24, 2 of 100 evaluation chunks of the tiny model fell to 20 dB).

Accuracy (simulator, `init_runtime()` with no target: this is ACCURACY, not board speed): a random code
sequence of `--eval-chunks` chunks, decoded by onnxruntime FP32 and by `daemons.engine.vocoder_rknn.
RknnVocoderEngine` with the simulator in place of the NPU (the board's own code path), reported as
  snr_db          closed loop: the .rknn model feeds back its own state (what the board does)
  snr_db_step     open loop: every chunk starts from the FP32 reference state (one-step error)
  snr_db_mixed    one more call of chunk + 3 frames, continuing the closed loop: a full chunk on the
                  NPU, then 3 frames on onnxruntime (the remainder path, state hand-over NPU -> CPU)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RKNN_META_FORMAT = "qwen3-tts-vocoder-rknn"   # = daemons.engine.vocoder_rknn.RKNN_META_FORMAT
RKNN_META_VERSION = 2                          # = daemons.engine.vocoder_rknn.RKNN_META_VERSION
TARGET = "rk3588"
PRECISIONS = ("int16", "fp16", "int8", "hybrid")
DEFAULT_PRECISION = "int16"
QUANTIZED_DTYPE = {"int16": "w16a16i_dfp", "int8": "w8a8", "hybrid": "w8a8"}
GRAPHS = ("split", "full")
# --precision hybrid: layers whose int8 output has a cosine similarity below this (vs float, on the
# calibration set) stay float16 (rknn-toolkit2 auto_hybrid); the rest are w8a8
HYBRID_COS_THRESH = 0.999
SPLIT_MIN_SNR_DB = 100.0  # the fp32 head+tail must reproduce vocoder.onnx (it is exact: inf)


def snr_db(ref, x) -> float:
    ref = np.asarray(ref, dtype=np.float64).ravel()
    x = np.asarray(x, dtype=np.float64).ravel()
    err = float(np.sum((ref - x) ** 2))
    return float("inf") if err == 0 else 10 * math.log10(float(np.sum(ref ** 2)) / err)


def _round(x: float) -> float | str:
    return "inf" if math.isinf(x) else round(x, 2)


class OnnxStep:
    """The FP32 reference: one chunk step of vocoder.onnx on onnxruntime."""

    def __init__(self, model_dir: Path):
        import onnxruntime as ort

        self.spec = json.loads((model_dir / "vocoder.json").read_text())
        self.onnx = model_dir / self.spec.get("onnx", "vocoder.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(str(self.onnx), so, providers=["CPUExecutionProvider"])
        self.pin = self.spec.get("state_input_prefix", "state_in_")
        self.pout = self.spec.get("state_output_prefix", "state_out_")
        self.states = self.spec["states"]
        self.names = [s["name"] for s in self.states]
        self.inputs = ["codes"] + [self.pin + s["name"] for s in self.states]
        self.outputs = ["wav"] + [self.pout + s["name"] for s in self.states]
        self.nq = int(self.spec["num_quantizers"])
        self.K = int(self.spec["codebook_size"])

    def initial(self) -> list[np.ndarray]:
        return [np.zeros(s["shape"], dtype=s["dtype"]) for s in self.states]

    def __call__(self, codes, states):
        out = self.sess.run(self.outputs, dict(zip(self.inputs, [codes, *states])))
        return out[0].reshape(-1), out[1:]


class NpuGraph:
    """What goes to the NPU: the whole step ("full") or the tail after the CPU head ("split")."""

    def __init__(self, ref: OnnxStep, graph: str, split_at: str, chunk: int, work: Path, log=print):
        self.ref, self.graph, self.chunk = ref, graph, chunk
        self.meta: dict = {"graph": graph}
        if graph == "full":
            self.onnx = ref.onnx
            self.inputs, self.outputs = list(ref.inputs), list(ref.outputs)
            self.sizes = [[chunk, ref.nq]] + [list(s["shape"]) for s in ref.states]
            self.head = None
            return
        from scripts import rknn_graph as G

        t0 = time.perf_counter()
        head, tail, info = G.split_vocoder(G.load_model(ref.onnx), ref.spec, split_at)
        n_sq = G.square_by_mul(tail)
        check = G.check_split(ref.onnx, ref.spec, head, tail, info)
        if check["snr_db_wav"] < SPLIT_MIN_SNR_DB:
            raise RuntimeError(f"the head/tail split is not equivalent to {ref.onnx} in fp32: {check}")
        log(f"split at {split_at!r} (tensor {info['cut_tensor']}): head {len(head.graph.node)} nodes, "
            f"tail {len(tail.graph.node)} nodes ({n_sq} Pow(x, 2) -> Mul(x, x)); fp32 head+tail vs vocoder.onnx: "
            f"{check['snr_db_wav']} dB, max |diff| {check['max_abs_diff']} ({time.perf_counter() - t0:.1f} s)")
        self.head_model = head
        self.onnx = work / "vocoder_tail.onnx"
        import onnx

        onnx.save(tail, str(self.onnx))
        self.head_states, self.tail_states = info["head_states"], info["tail_states"]
        self._hi = [ref.names.index(n) for n in self.head_states]
        self._ti = [ref.names.index(n) for n in self.tail_states]
        self.inputs = [G.LATENT] + [ref.pin + n for n in self.tail_states]
        self.outputs = ["wav"] + [ref.pout + n for n in self.tail_states]
        lat = list(info["latent_shape_per_frame"])
        lat[2] *= chunk
        self.sizes = [lat] + [list(ref.states[i]["shape"]) for i in self._ti]
        self.head = G._session(head)
        self._head_io = (["codes"] + [ref.pin + n for n in self.head_states],
                         [G.LATENT] + [ref.pout + n for n in self.head_states])
        self.meta.update(split_at=split_at, cut_tensor=info["cut_tensor"], tail_transforms={"pow2_to_mul": n_sq},
                         head_states=self.head_states,
                         tail_states=self.tail_states, latent_shape=lat,
                         split_check={k: _round(v) if isinstance(v, float) and k.startswith("snr") else v
                                      for k, v in check.items()})

    def save_head(self, path: Path) -> None:
        import onnx

        onnx.save(self.head_model, str(path))

    def npu_inputs(self, codes: np.ndarray, states: list[np.ndarray]) -> list[np.ndarray]:
        """The NPU graph's inputs for one chunk step from (codes, full FP32 state list)."""
        if self.head is None:
            return [codes, *states]
        ins, outs = self._head_io
        latent = self.head.run(outs[:1], dict(zip(ins, [codes] + [states[i] for i in self._hi])))[0]
        return [latent] + [states[i] for i in self._ti]


def _calibration_codes(ref: OnnxStep, chunk: int, n_steps: int, seed: int, calib_codes: Path | None):
    """Per utterance a list of chunk code arrays: random codes, or consecutive chunks of `calib_codes`."""
    rng = np.random.default_rng(seed)
    per_utt = max(1, min(8, n_steps))
    if calib_codes is None:
        src = None
    else:
        src = np.load(calib_codes)
        if src.ndim != 2 or src.shape[1] != ref.nq or src.shape[0] < chunk:
            raise ValueError(f"--calib-codes {calib_codes}: expected int codes [T >= {chunk}, {ref.nq}], "
                             f"got {src.shape}")
        if src.min() < 0 or src.max() >= ref.K:
            raise ValueError(f"--calib-codes {calib_codes}: codes out of range 0..{ref.K - 1}")
        src = src.astype(np.int64)
    utts, step, off = [], 0, 0
    while step < n_steps:
        n = min(per_utt, n_steps - step)
        if src is None:
            utts.append([rng.integers(0, ref.K, (chunk, ref.nq), dtype=np.int64) for _ in range(n)])
        else:
            if off + n * chunk > src.shape[0]:
                off = 0
            n = min(n, src.shape[0] // chunk)
            utts.append([src[off + i * chunk: off + (i + 1) * chunk] for i in range(n)])
            off += n * chunk
        step += n
    return utts


def make_calibration(ref: OnnxStep, npu: NpuGraph, chunk: int, n_steps: int, seed: int, out_dir: Path,
                     calib_codes: Path | None = None) -> Path:
    """`n_steps` chunk steps of a few utterances: each step's NPU inputs (latent or codes, plus the states
    the FP32 stream reached) saved as .npy, one dataset line per step."""
    lines = []
    for utt in _calibration_codes(ref, chunk, n_steps, seed, calib_codes):
        st = ref.initial()
        for codes in utt:
            paths = []
            for i, a in enumerate(npu.npu_inputs(codes, st)):
                p = out_dir / f"s{len(lines):03d}_i{i:02d}.npy"
                np.save(p, np.asarray(a))  # dataset .npy: the ONNX layout (NCHW)
                paths.append(str(p))
            lines.append(" ".join(paths))
            _, st = ref(codes, st)
    ds = out_dir / "dataset.txt"
    ds.write_text("\n".join(lines) + "\n")
    return ds


def _check(ret, what: str) -> None:
    if ret != 0:
        raise RuntimeError(f"rknn-toolkit2 {what} failed ({ret}); see the log above")


def evaluate(ref: OnnxStep, engine, chunk: int, eval_chunks: int, seed: int) -> dict:
    """Simulator accuracy of `engine` (a RknnVocoderEngine) against onnxruntime FP32."""
    rng = np.random.default_rng(seed + 1000)
    stream = engine.new_stream()
    st_ref = ref.initial()
    wr, wk, step_snr, state_snr = [], [], [], {}
    t1 = time.perf_counter()
    for _ in range(eval_chunks):
        codes = rng.integers(0, ref.K, (chunk, ref.nq), dtype=np.int64)
        w_ref, nst_ref = ref(codes, st_ref)
        w_step, st_step = engine._run_npu(codes, [s.copy() for s in st_ref])      # open loop
        wk.append(stream.decode(codes))                                            # closed loop
        step_snr.append(snr_db(w_ref, w_step))
        state_snr = {n: _round(snr_db(a, b)) for n, a, b in zip(ref.names, nst_ref, st_step)
                     if a.dtype == np.float32 and np.any(a)}
        wr.append(w_ref)
        st_ref = nst_ref
    # one call of chunk + 3 frames: a full NPU chunk, then the remainder on onnxruntime
    codes = rng.integers(0, ref.K, (chunk + 3, ref.nq), dtype=np.int64)
    w_ref, _ = ref(codes, st_ref)
    w_mix = stream.decode(codes)
    a, b = np.concatenate(wr), np.concatenate(wk)
    return {"frames": eval_chunks * chunk, "chunks": eval_chunks,
            "snr_db": _round(snr_db(a, b)),
            "snr_db_step_min": _round(min(step_snr)),
            "snr_db_step_mean": _round(float(np.mean(step_snr))),
            "snr_db_mixed": _round(snr_db(w_ref, w_mix)),
            "state_snr_db_last_step": state_snr,
            "ref_rms": round(float(np.sqrt(np.mean(a.astype(np.float64) ** 2))), 4),
            "simulator_seconds": round(time.perf_counter() - t1, 1),
            "note": "rknn-toolkit2 simulator on x86: accuracy only, not RK3588 speed"}


def convert(model_dir: str | Path, precision: str = DEFAULT_PRECISION, chunk: int = 4,
            out: str | Path | None = None, *, graph: str = "split", split_at: str = "dac",
            calib_chunks: int = 128, calib_codes: str | Path | None = None, eval_chunks: int = 6,
            seed: int = 0, verbose: bool = False, log=print) -> dict:
    """Build `<out>` (default MODEL_DIR/vocoder.rknn) + `<out>.json` (+ `<out>.head.onnx` for the split
    layout); returns the metadata (with accuracy)."""
    from rknn.api import RKNN

    from daemons.engine.vocoder import VocoderEngine
    from daemons.engine.vocoder_rknn import RknnVocoderEngine, rknn_meta_path

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if graph not in GRAPHS:
        raise ValueError(f"graph must be one of {GRAPHS}, got {graph!r}")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    model_dir = Path(model_dir)
    out = Path(out) if out is not None else model_dir / "vocoder.rknn"
    head_path = out.with_name(out.name + ".head.onnx")
    ref = OnnxStep(model_dir)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="rknn-conv-"))
    rk = RKNN(verbose=verbose)
    cwd = os.getcwd()
    eng = None
    try:
        npu = NpuGraph(ref, graph, split_at, chunk, work, log=log)
        quant = precision in QUANTIZED_DTYPE
        cfg = dict(target_platform=TARGET)
        if quant:
            cfg.update(quantized_dtype=QUANTIZED_DTYPE[precision], quantized_algorithm="normal",
                       quantized_method="channel")
        if precision == "hybrid":
            cfg.update(auto_hybrid_cos_thresh=HYBRID_COS_THRESH)
        rk.config(**cfg)
        _check(rk.load_onnx(str(npu.onnx), inputs=npu.inputs, input_size_list=npu.sizes), "load_onnx")
        ds = make_calibration(ref, npu, chunk, calib_chunks, seed + 1, work,
                              Path(calib_codes) if calib_codes else None) if quant else None
        # hybrid: rknn-toolkit2's automatic hybrid quantization keeps in float16 every layer whose int8
        # output falls below cosine similarity auto_hybrid_cos_thresh on the calibration set
        _check(rk.build(do_quantization=quant, dataset=str(ds) if ds else None,
                        auto_hybrid=precision == "hybrid"), "build")
        out.parent.mkdir(parents=True, exist_ok=True)
        _check(rk.export_rknn(str(out)), "export_rknn")
        if graph == "split":
            npu.save_head(head_path)
        elif head_path.exists():
            head_path.unlink()  # a stale head from an earlier split conversion
        build_s = time.perf_counter() - t0
        log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {precision}, {graph} graph, chunk {chunk})"
            + (f" + {head_path.name} ({head_path.stat().st_size / 1e6:.1f} MB)" if graph == "split" else "")
            + f" in {build_s:.1f} s")
        import rknn

        meta = {"format": RKNN_META_FORMAT, "format_version": RKNN_META_VERSION, "target": TARGET,
                "precision": precision, "quantized_dtype": QUANTIZED_DTYPE.get(precision), "chunk": chunk,
                **npu.meta, "head_onnx": head_path.name if graph == "split" else None,
                "onnx": ref.onnx.name, "onnx_bytes": ref.onnx.stat().st_size,
                "inputs": npu.inputs, "outputs": npu.outputs, "input_layout": "nchw",
                "rknn_toolkit2": getattr(rknn, "__version__", "2.5.0"),
                "calibration_chunks": calib_chunks if quant else 0,
                "calibration_codes": str(calib_codes) if (quant and calib_codes) else None, "seed": seed,
                "build_seconds": round(build_s, 1)}
        rknn_meta_path(out).write_text(json.dumps(meta, indent=1) + "\n")

        # --- simulator accuracy vs onnxruntime FP32, through the runtime engine's own code path
        _check(rk.init_runtime(), "init_runtime (simulator)")
        cpu = VocoderEngine(ref.onnx, ref.spec, threads=1)
        eng = RknnVocoderEngine(out, cpu, runtime=rk, threads=1)
        acc = evaluate(ref, eng, chunk, eval_chunks, seed)
        log(f"simulator SNR vs onnxruntime FP32 ({precision}, {graph} graph, chunk {chunk}, {eval_chunks} chunks): "
            f"{acc['snr_db']} dB closed loop, {acc['snr_db_step_mean']} dB per step "
            f"(min {acc['snr_db_step_min']}), {acc['snr_db_mixed']} dB with a CPU remainder")
    finally:
        os.chdir(cwd)
        if eng is not None:
            eng.close()
        rk.release()
        shutil.rmtree(work, ignore_errors=True)
    meta["accuracy"] = acc
    rknn_meta_path(out).write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="model directory holding vocoder.onnx + vocoder.json")
    ap.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION)
    ap.add_argument("--chunk", type=int, default=4, help="frames per NPU call (fixed shape), default 4")
    ap.add_argument("--graph", choices=GRAPHS, default="split",
                    help="split: FP32 CPU head + NPU conv decoder (default); full: everything on the NPU")
    ap.add_argument("--split-at", choices=("dac", "upsample"), default="dac",
                    help="where the split graph is cut (default dac: the upsampling stays on the CPU)")
    ap.add_argument("--out", help="output .rknn (default MODEL_DIR/vocoder.rknn)")
    ap.add_argument("--calib-chunks", type=int, default=128, help="calibration chunk steps (int16/int8/hybrid)")
    ap.add_argument("--calib-codes", help="calibrate on these codes (int .npy [T, 16]) instead of random ones")
    ap.add_argument("--eval-chunks", type=int, default=6, help="chunks decoded for the SNR check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the metadata/accuracy report here")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    meta = convert(a.model_dir, a.precision, a.chunk, a.out, graph=a.graph, split_at=a.split_at,
                   calib_chunks=a.calib_chunks, calib_codes=a.calib_codes, eval_chunks=a.eval_chunks,
                   seed=a.seed, verbose=a.verbose)
    if a.json:
        Path(a.json).write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta["accuracy"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
