#!/usr/bin/env python3
"""Convert the streaming vocoder (`vocoder.onnx` + `vocoder.json`) to an RK3588 `.rknn` model and measure
its accuracy in the rknn-toolkit2 simulator against onnxruntime FP32.

Runs inside `.venv-rknn` (made by `bash scripts/setup_rknn_env.sh`; rknn-toolkit2 pins numpy/onnx/torch
versions that clash with the project's .venv):

    .venv-rknn/bin/python scripts/convert_rknn.py MODEL_DIR --precision fp16|int8|hybrid --chunk 4 \\
        [--out MODEL_DIR/vocoder.rknn] [--calib-chunks 24] [--eval-chunks 6] [--seed 0] [--json REPORT.json]

The RKNN graph has static shapes: the chunk of N frames (`--chunk`, default 4 = the talker's
`chunk_frames`) is fixed; `daemons/vocoder_rknn.py` runs full chunks on the NPU and the remainder of a
call on onnxruntime (never padding: the model is stateful). Writes `<out>` and `<out>.json` (chunk,
precision, tensor order, accuracy figures) next to it.

Precisions:
  fp16    no quantization (the NPU computes in float16)
  int8    w8a8 quantization of everything, calibrated on `--calib-chunks` real chunk steps (codes plus the
          state tensors the ONNX stream actually reaches, so the conv contexts / KV caches are calibrated)
  hybrid  w8a8 where it is harmless, float16 elsewhere: rknn-toolkit2's automatic hybrid quantization
          (build(auto_hybrid=True)) keeps in float16 every layer whose int8 output falls below cosine
          similarity HYBRID_COS_THRESH on the calibration set

Accuracy (simulator, `init_runtime()` with no target: this is ACCURACY, not board speed): a random code
sequence of `--eval-chunks` chunks, decoded by onnxruntime FP32 and by the .rknn model, reported as
  snr_db          closed loop: the .rknn model feeds back its own state (what the board does)
  snr_db_step     open loop: every chunk starts from the FP32 reference state (one-step error)
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

RKNN_META_FORMAT = "qwen3-tts-vocoder-rknn"   # = daemons.vocoder_rknn.RKNN_META_FORMAT
RKNN_META_VERSION = 1
TARGET = "rk3588"
PRECISIONS = ("fp16", "int8", "hybrid")
# --precision hybrid: layers whose int8 output has a cosine similarity below this (vs float, on the
# calibration set) stay float16 (rknn-toolkit2 auto_hybrid); the rest are w8a8
HYBRID_COS_THRESH = 0.999


def snr_db(ref, x) -> float:
    ref = np.asarray(ref, dtype=np.float64).ravel()
    x = np.asarray(x, dtype=np.float64).ravel()
    err = float(np.sum((ref - x) ** 2))
    return float("inf") if err == 0 else 10 * math.log10(float(np.sum(ref ** 2)) / err)


class OnnxStep:
    """The FP32 reference: one chunk step of vocoder.onnx on onnxruntime."""

    def __init__(self, model_dir: Path):
        import onnxruntime as ort

        self.spec = json.loads((model_dir / "vocoder.json").read_text())
        self.onnx = model_dir / self.spec.get("onnx", "vocoder.onnx")
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.sess = ort.InferenceSession(str(self.onnx), so, providers=["CPUExecutionProvider"])
        pin = self.spec.get("state_input_prefix", "state_in_")
        pout = self.spec.get("state_output_prefix", "state_out_")
        self.states = self.spec["states"]
        self.inputs = ["codes"] + [pin + s["name"] for s in self.states]
        self.outputs = ["wav"] + [pout + s["name"] for s in self.states]
        self.nq = int(self.spec["num_quantizers"])
        self.K = int(self.spec["codebook_size"])

    def initial(self) -> list[np.ndarray]:
        return [np.zeros(s["shape"], dtype=s["dtype"]) for s in self.states]

    def __call__(self, codes, states):
        out = self.sess.run(self.outputs, dict(zip(self.inputs, [codes, *states])))
        return out[0].reshape(-1), out[1:]


def make_calibration(ref: OnnxStep, chunk: int, n_steps: int, seed: int, out_dir: Path) -> Path:
    """`n_steps` chunk steps of a few random utterances: each step's inputs (codes + the states reached)
    saved as .npy, one dataset line per step."""
    rng = np.random.default_rng(seed)
    lines, step = [], 0
    per_utt = max(1, min(8, n_steps))
    while step < n_steps:
        st = ref.initial()
        for _ in range(min(per_utt, n_steps - step)):
            codes = rng.integers(0, ref.K, (chunk, ref.nq), dtype=np.int64)
            paths = []
            for i, a in enumerate([codes, *st]):
                p = out_dir / f"s{step:03d}_i{i:02d}.npy"
                np.save(p, np.asarray(a))  # dataset .npy: the ONNX layout (NCHW)
                paths.append(str(p))
            lines.append(" ".join(paths))
            _, st = ref(codes, st)
            step += 1
    ds = out_dir / "dataset.txt"
    ds.write_text("\n".join(lines) + "\n")
    return ds


def _check(ret, what: str) -> None:
    if ret != 0:
        raise RuntimeError(f"rknn-toolkit2 {what} failed ({ret}); see the log above")


def convert(model_dir: str | Path, precision: str = "fp16", chunk: int = 4, out: str | Path | None = None, *,
            calib_chunks: int = 24, eval_chunks: int = 6, seed: int = 0, verbose: bool = False,
            log=print) -> dict:
    """Build `<out>` (default MODEL_DIR/vocoder.rknn) + `<out>.json`; returns the metadata (with accuracy)."""
    from rknn.api import RKNN

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if chunk < 1:
        raise ValueError("chunk must be >= 1")
    model_dir = Path(model_dir)
    out = Path(out) if out is not None else model_dir / "vocoder.rknn"
    ref = OnnxStep(model_dir)
    sizes = [[chunk, ref.nq]] + [list(s["shape"]) for s in ref.states]
    t0 = time.perf_counter()
    rk = RKNN(verbose=verbose)
    work = Path(tempfile.mkdtemp(prefix="rknn-conv-"))
    cwd = os.getcwd()
    try:
        quant = precision != "fp16"
        cfg = dict(target_platform=TARGET)
        if quant:
            cfg.update(quantized_dtype="w8a8", quantized_algorithm="normal", quantized_method="channel")
        if precision == "hybrid":
            cfg.update(auto_hybrid_cos_thresh=HYBRID_COS_THRESH)
        rk.config(**cfg)
        _check(rk.load_onnx(str(ref.onnx), inputs=ref.inputs, input_size_list=sizes), "load_onnx")
        ds = make_calibration(ref, chunk, calib_chunks, seed + 1, work) if quant else None
        # hybrid: rknn-toolkit2's automatic hybrid quantization keeps in float16 every layer whose int8
        # output falls below cosine similarity auto_hybrid_cos_thresh on the calibration set
        _check(rk.build(do_quantization=quant, dataset=str(ds) if ds else None,
                        auto_hybrid=precision == "hybrid"), "build")
        out.parent.mkdir(parents=True, exist_ok=True)
        _check(rk.export_rknn(str(out)), "export_rknn")
        build_s = time.perf_counter() - t0
        log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {precision}, chunk {chunk}) in {build_s:.1f} s")

        # --- simulator accuracy vs onnxruntime FP32
        _check(rk.init_runtime(), "init_runtime (simulator)")
        fmt = ["nchw"] * len(ref.inputs)  # inference() assumes NHWC for 4-D arrays unless told
        rng = np.random.default_rng(seed + 1000)
        st_ref, st_rk = ref.initial(), ref.initial()
        wr, wk, step_snr = [], [], []
        t1 = time.perf_counter()
        for _ in range(eval_chunks):
            codes = rng.integers(0, ref.K, (chunk, ref.nq), dtype=np.int64)
            w_ref, nst_ref = ref(codes, st_ref)
            o_step = rk.inference(inputs=[codes, *st_ref], data_format=fmt)    # open loop
            o = rk.inference(inputs=[codes, *st_rk], data_format=fmt)           # closed loop
            if o is None or o_step is None:
                raise RuntimeError("simulator inference failed; see the log above")
            step_snr.append(snr_db(w_ref, o_step[0]))
            wr.append(w_ref)
            wk.append(np.asarray(o[0], dtype=np.float32).reshape(-1))
            st_rk = [np.asarray(x).reshape(s.shape).astype(s.dtype) for x, s in zip(o[1:], st_ref)]
            st_ref = nst_ref
        acc = {"frames": eval_chunks * chunk, "chunks": eval_chunks,
               "snr_db": round(snr_db(np.concatenate(wr), np.concatenate(wk)), 2),
               "snr_db_step_min": round(min(step_snr), 2),
               "snr_db_step_mean": round(float(np.mean(step_snr)), 2),
               "ref_rms": round(float(np.sqrt(np.mean(np.concatenate(wr).astype(np.float64) ** 2))), 4),
               "simulator_seconds": round(time.perf_counter() - t1, 1),
               "note": "rknn-toolkit2 simulator on x86: accuracy only, not RK3588 speed"}
        log(f"simulator SNR vs onnxruntime FP32 ({precision}, chunk {chunk}, {eval_chunks} chunks): "
            f"{acc['snr_db']:.2f} dB closed loop, {acc['snr_db_step_mean']:.2f} dB per step "
            f"(min {acc['snr_db_step_min']:.2f})")
    finally:
        os.chdir(cwd)
        rk.release()
        shutil.rmtree(work, ignore_errors=True)
    import rknn

    meta = {"format": RKNN_META_FORMAT, "format_version": RKNN_META_VERSION, "target": TARGET,
            "precision": precision, "chunk": chunk, "onnx": ref.onnx.name,
            "onnx_bytes": ref.onnx.stat().st_size, "inputs": ref.inputs, "outputs": ref.outputs,
            "input_layout": "nchw", "rknn_toolkit2": getattr(rknn, "__version__", "2.5.0"),
            "calibration_chunks": calib_chunks if precision != "fp16" else 0, "seed": seed,
            "build_seconds": round(build_s, 1), "accuracy": acc}
    Path(str(out) + ".json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir", help="model directory holding vocoder.onnx + vocoder.json")
    ap.add_argument("--precision", choices=PRECISIONS, default="fp16")
    ap.add_argument("--chunk", type=int, default=4, help="frames per NPU call (fixed shape), default 4")
    ap.add_argument("--out", help="output .rknn (default MODEL_DIR/vocoder.rknn)")
    ap.add_argument("--calib-chunks", type=int, default=24, help="calibration chunk steps (int8/hybrid)")
    ap.add_argument("--eval-chunks", type=int, default=6, help="chunks decoded for the SNR check")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the metadata/accuracy report here")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args(argv)
    meta = convert(a.model_dir, a.precision, a.chunk, a.out, calib_chunks=a.calib_chunks,
                   eval_chunks=a.eval_chunks, seed=a.seed, verbose=a.verbose)
    if a.json:
        Path(a.json).write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta["accuracy"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
