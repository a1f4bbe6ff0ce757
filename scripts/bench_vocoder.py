#!/usr/bin/env python3
"""Vocoder benchmark: graph variants x onnxruntime session options, timed interleaved in one run.

    python scripts/bench_vocoder.py [--checkpoint DIR | --model-dir DIR] [--work DIR] [--variants a,b,...]
                                    [--frames 100] [--chunk 4] [--threads 1] [--rounds 5] [--cpu N]
                                    [--int8] [--json FILE]

Graphs: with a checkpoint (`--checkpoint`, default: the full-size random one `scripts/bench.py` makes under
`--work`), every graph form of `scripts/export_vocoder.py` is exported once into `<work>/vocoder-graphs/`
(needs torch + qwen-tts): `c1-pow` (Conv1d, Pow: the export before session 7), `c1-mul`, `c2-pow`,
`c2-mul` (Conv2d(1 x k) + Mul), `c1-mul-pp`, `c2-mul-pp` (+ the decoder's transposed convs as polyphase
1 x 1 convs: the default). `--model-dir` benches one converted model's `vocoder.onnx`
as it is (no torch: runs on a board) under the session-option variants only.
Session options (on the default graph): `spin` (intra-op spinning on), `extended` / `basic` (graph
optimisation level), `nomempat` (no memory pattern), `offline` (the ORT_ENABLE_ALL-optimised model saved
once and loaded with optimisation off; the file is specific to this CPU's kernels).
`--int8`: also `int8-res` (static QDQ int8, per channel, of the residual units' k=7 convs only), reported
with its SNR: an approximation, never a default.

Each variant is one session holding `--threads` intra-op threads (the daemon: 1 thread, on its own CPU;
`--cpu` pins this process there). A round decodes `--frames` seeded random frames in `--chunk`-frame
calls through `VocoderStream`, as the vocoder daemon does; rounds go A B C ... A B C, the figure is the
median over rounds of each round's median ms per frame. SNR is each variant's whole round output
against the first variant's (the FP32 Conv1d reference graph when it is benched). Kernels: the op types
of each session's optimised graph (NchwcConv = onnxruntime's blocked direct convolution, Conv =
im2col + GEMM, QLinearConv = int8). Timings on a shared VM vary by +-30 %: compare variants of one run.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import bench_util  # noqa: E402 (after the path setup: run as a script too)

GRAPHS = {  # name -> export_vocoder (conv2d, snake, tconv)
    "c1-pow": (False, "pow", "convtranspose"), "c1-mul": (False, "mul", "convtranspose"),
    "c2-pow": (True, "pow", "convtranspose"), "c2-mul": (True, "mul", "convtranspose"),
    "c1-mul-pp": (False, "mul", "polyphase"), "c2-mul-pp": (True, "mul", "polyphase"),
}
DEFAULT_GRAPH = "c2-mul-pp"
SESSION_VARIANTS = {  # name -> cpu_session keyword overrides, on the default graph
    "spin": {"spinning": True},
    "extended": {"opt_level": "extended"},
    "basic": {"opt_level": "basic"},
    "nomempat": {"mem_pattern": False},
    "offline": {"offline": True},
}
DEFAULT_VARIANTS = ["c1-pow", "c1-mul", "c2-pow", "c2-mul", "c1-mul-pp", "c2-mul-pp", "spin", "extended",
                    "nomempat", "offline"]


log = bench_util.make_log("bench_vocoder")


def snr_db(ref, x) -> float:
    import numpy as np

    ref = np.asarray(ref, dtype=np.float64).ravel()
    x = np.asarray(x, dtype=np.float64).ravel()
    err = float(np.sum((ref - x) ** 2))
    return float("inf") if err == 0 else round(10 * np.log10(float(np.sum(ref ** 2)) / err), 1)


def cpu_info() -> dict:
    import platform

    info = {"machine": platform.machine(), "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "CPU part") and "model" not in info:
            info["model"] = val.strip()
        if key in ("flags", "Features"):
            flags = set(val.split())
            info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni",
                                        "amx_bf16", "neon", "asimd", "asimddp", "fphp", "bf16", "i8mm")
                            if f in flags]
            break
    return info


# ------------------------------------------------------------------------------------------------ graphs

def ensure_checkpoint(work: Path, checkpoint: str | None) -> Path:
    if checkpoint:
        ck = Path(checkpoint)
    else:
        ck = work / "ckpt-full"
        if not (ck / "speech_tokenizer" / "model.safetensors").is_file():
            import subprocess

            log(f"making a full-size random-weight checkpoint in {ck} (~1 min, ~5 GB RAM)")
            subprocess.run([sys.executable, str(ROOT / "scripts" / "make_checkpoint.py"), str(ck), "--size", "full"],
                           check=True, cwd=ROOT)
    if not (ck / "speech_tokenizer" / "model.safetensors").is_file():
        sys.exit(f"error: {ck} has no speech_tokenizer/model.safetensors")
    return ck


def ensure_graph(ck: Path, out: Path, name: str) -> Path:
    """`<out>/<name>/vocoder.onnx`, exported from `ck` unless an export of the same form is there."""
    conv2d, snake, tconv = GRAPHS[name]
    d = out / name
    spec_path = d / "vocoder.json"
    if spec_path.is_file():
        spec = json.loads(spec_path.read_text())
        if (spec.get("graph") == {"conv2d": conv2d, "snake": snake, "tconv": tconv}
                and spec.get("source") == str(ck.resolve())):
            return d
    from scripts.export_vocoder import export_vocoder

    log(f"exporting graph {name} from {ck} ...")
    spec = export_vocoder(ck, d, conv2d=conv2d, snake=snake, tconv=tconv, verify=False)
    spec["source"] = str(ck.resolve())
    spec_path.write_text(json.dumps(spec, indent=2) + "\n")
    return d


def quantize_residual_int8(src_dir: Path, out_dir: Path, frames: int, chunk: int) -> Path:
    """Static QDQ int8 (per-channel weights, u8 activations) of the residual units' dilated k=7 convs only:
    those hold most of the decoder's MACs; the entry/upsampling/post convs and the head stay FP32.
    Calibration: the stream's own activations on seeded random codes (a different seed from the timing)."""
    import numpy as np
    import onnx
    from onnxruntime import quantization as q

    from daemons.engine.vocoder import VocoderEngine

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = json.loads((src_dir / "vocoder.json").read_text())
    model = onnx.load(str(src_dir / "vocoder.onnx"), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    nodes = [n.name for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1
             and n.input[1] in inits and inits[n.input[1]].dims[-1] == 7
             and any(a.name == "dilations" and max(a.ints) > 1 for a in n.attribute)]
    # the first residual unit of each block has dilation 1: include the k=7 convs right after a Concat too
    prod = {o: n for n in model.graph.node for o in n.output}
    for n in model.graph.node:
        if (n.op_type == "Conv" and n.name not in nodes and len(n.input) > 1 and n.input[1] in inits
                and inits[n.input[1]].dims[-1] == 7 and inits[n.input[1]].dims[0] == inits[n.input[1]].dims[1]
                and n.input[0] in prod):
            nodes.append(n.name)
    log(f"int8: quantizing {len(nodes)} residual-unit convs")
    eng = VocoderEngine(src_dir, threads=1)
    rng = np.random.default_rng(12345)
    codes = rng.integers(0, eng.codebook_size, size=(frames, eng.num_quantizers), dtype=np.int64)
    pin = spec.get("state_input_prefix", "state_in_")

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            feeds, states, n = [], eng.initial_state(), 0
            while n + chunk <= len(codes):
                feeds.append({"codes": codes[n:n + chunk],
                              **{pin + s: np.asarray(v) for s, v in zip(eng.state_names, states)}})
                _, states = eng._run(codes[n:n + chunk], states)
                states = [s.numpy() for s in states]
                n += chunk
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    dst = out_dir / "vocoder.onnx"
    q.quantize_static(str(src_dir / "vocoder.onnx"), str(dst), Reader(), quant_format=q.QuantFormat.QDQ,
                      per_channel=True, activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                      nodes_to_quantize=nodes, calibrate_method=q.CalibrationMethod.MinMax,
                      use_external_data_format=False)
    spec["onnx"] = "vocoder.onnx"
    spec["external_data"] = None
    spec["graph"] = dict(spec.get("graph", {}), int8="residual-unit convs, static QDQ per channel")
    (out_dir / "vocoder.json").write_text(json.dumps(spec, indent=2) + "\n")
    return out_dir


# ------------------------------------------------------------------------------------------------ timing

def open_engine(model_dir: Path, threads: int, opts: dict, work: Path, name: str):
    """A VocoderEngine on `model_dir` with session options `opts` (see SESSION_VARIANTS); returns
    (engine, load seconds, kernel counts of the optimised graph)."""
    import onnx

    from daemons.engine.onnx_session import cpu_session
    from daemons.engine.vocoder import VocoderEngine

    opts = dict(opts)
    offline = opts.pop("offline", False)
    src = model_dir / "vocoder.onnx"
    opt_dir = work / "optimized" / name
    opt_dir.mkdir(parents=True, exist_ok=True)
    opt_path = opt_dir / "vocoder.onnx"
    # the optimised graph, saved: for the kernel counts, and it is the `offline` variant's model
    t0 = time.perf_counter()
    cpu_session(src, threads, optimized_path=opt_path, **{k: v for k, v in opts.items() if k != "spinning"})
    counts = collections.Counter(("Nchwc" if n.domain == "com.microsoft.nchwc" else "") + n.op_type
                                 for n in onnx.load(str(opt_path), load_external_data=False).graph.node)
    load_s = time.perf_counter() - t0
    spec = json.loads((model_dir / "vocoder.json").read_text())
    if offline:
        (opt_dir / "vocoder.json").write_text(json.dumps(dict(spec, onnx="vocoder.onnx"), indent=2))
        t0 = time.perf_counter()
        eng = VocoderEngine(opt_dir, threads=threads, opt_level="disabled", **opts)
        load_s = time.perf_counter() - t0
    else:
        eng = VocoderEngine(model_dir, threads=threads, **opts)
    return eng, load_s, dict(counts)


def kernels_summary(counts: dict) -> str:
    keys = ("NchwcConv", "Conv", "FusedConv", "ConvTranspose", "QLinearConv", "NchwcReorderInput",
            "NchwcReorderOutput", "Sin", "Pow", "Mul", "MatMul", "FusedMatMul")
    return ", ".join(f"{k} {counts[k]}" for k in keys if counts.get(k))


def one_round(eng, codes, chunk: int):
    import numpy as np

    """(median wall ms/frame, median CPU ms/frame of this thread, audio). With 1 intra-op thread
    onnxruntime runs every kernel on the calling thread, so its CPU time is the work itself, robust to
    other processes taking the core (the wall time is not)."""
    s = eng.new_stream()
    ts, cs, outs, n = [], [], [], 0
    while n + chunk <= len(codes):
        t0, c0 = time.perf_counter(), time.thread_time()
        outs.append(s.decode(codes[n:n + chunk]))
        cs.append((time.thread_time() - c0) * 1e3 / chunk)
        ts.append((time.perf_counter() - t0) * 1e3 / chunk)
        n += chunk
    return statistics.median(ts), statistics.median(cs), np.concatenate(outs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="checkpoint with speech_tokenizer/ (default: <work>/ckpt-full, made once)")
    ap.add_argument("--model-dir", help="a converted model: bench its vocoder.onnx under the session options only")
    ap.add_argument("--work", default="/tmp/qwen3-tts-bench", help="exported graphs and optimised models go here")
    ap.add_argument("--variants", help=f"comma list (default {','.join(DEFAULT_VARIANTS)}; graphs: "
                                       f"{','.join(GRAPHS)}; session: {','.join(SESSION_VARIANTS)}; int8-res)")
    ap.add_argument("--int8", action="store_true", help="add int8-res (static int8 residual-unit convs)")
    ap.add_argument("--frames", type=int, default=100, help="frames per round")
    ap.add_argument("--chunk", type=int, default=4, help="frames per decode call (the daemon's chunk_frames)")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (the daemon: 1)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU (the daemon's vocoder CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args(argv)
    if a.frames < a.chunk or a.chunk < 1 or a.rounds < 1 or a.threads < 1:
        ap.error("need --chunk >= 1, --frames >= --chunk, --rounds >= 1, --threads >= 1")

    import numpy as np
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # not the "optimised model is hardware specific" warning per variant
    work = Path(a.work)
    if a.cpu is not None:
        os.sched_setaffinity(0, {a.cpu})
    if a.model_dir:
        names = [n for n in (a.variants.split(",") if a.variants else ["model"] + list(SESSION_VARIANTS))]
        bad = [n for n in names if n != "model" and n not in SESSION_VARIANTS]
        if bad:
            ap.error(f"with --model-dir only session variants apply, not {bad}")
        base = {"model": Path(a.model_dir)}
    else:
        names = a.variants.split(",") if a.variants else list(DEFAULT_VARIANTS)
        if a.int8 and "int8-res" not in names:
            names.append("int8-res")
        bad = [n for n in names if n not in GRAPHS and n not in SESSION_VARIANTS and n != "int8-res"]
        if bad:
            ap.error(f"unknown variants {bad}")
        ck = ensure_checkpoint(work, a.checkpoint)
        graphs = sorted({n for n in names if n in GRAPHS} | ({DEFAULT_GRAPH} if set(names) - set(GRAPHS) else set()))
        base = {g: ensure_graph(ck, work / "vocoder-graphs", g) for g in graphs}
    default_dir = base.get(DEFAULT_GRAPH) or base.get("model")

    variants = {}
    for n in names:
        if n in base:
            variants[n] = (base[n], {})
        elif n == "int8-res":
            variants[n] = (quantize_residual_int8(default_dir, work / "vocoder-graphs" / "int8-res", 24, a.chunk), {})
        else:
            variants[n] = (default_dir, SESSION_VARIANTS[n])

    info = {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(), "cpu": cpu_info(),
            "affinity": sorted(os.sched_getaffinity(0)), "threads": a.threads, "chunk_frames": a.chunk,
            "frames_per_round": a.frames, "rounds": a.rounds, "loadavg_at_start": os.getloadavg()}
    log(json.dumps(info))
    engines, meta = {}, {}
    for n, (d, opts) in variants.items():
        eng, load_s, counts = open_engine(d, a.threads, opts, work, n)
        engines[n] = eng
        meta[n] = {"model": str(d), "options": opts, "load_s": round(load_s, 2), "kernels": counts,
                   "providers": eng.session.get_providers()}
        log(f"{n}: loaded in {load_s:.1f} s; {kernels_summary(counts)}")

    first = next(iter(engines.values()))
    codes = np.random.default_rng(a.seed).integers(0, first.codebook_size, size=(a.frames, first.num_quantizers),
                                                   dtype=np.int64)
    for eng in engines.values():  # warm-up (first-run allocations)
        eng.new_stream().decode(codes[:a.chunk])
    times = {n: [] for n in engines}
    cpu = {n: [] for n in engines}
    outs = {}
    for r in range(a.rounds):
        order = list(engines) if r % 2 == 0 else list(engines)[::-1]
        for n in order:
            ms, cms, wav = one_round(engines[n], codes, a.chunk)
            times[n].append(ms)
            cpu[n].append(cms)
            outs.setdefault(n, wav)
        log(f"round {r + 1}/{a.rounds} (wall/cpu ms per frame): "
            + ", ".join(f"{n} {times[n][-1]:.1f}/{cpu[n][-1]:.1f}" for n in engines))
    ref_name = "c1-pow" if "c1-pow" in outs else next(iter(outs))
    ref = outs[ref_name]
    ref_ms, ref_cpu = statistics.median(times[ref_name]), statistics.median(cpu[ref_name])
    res = {"info": info, "reference": ref_name, "loadavg_at_end": os.getloadavg(), "variants": {}}
    print(f"\nonnxruntime {ort.__version__} {meta[ref_name]['providers']}; {info['cpu'].get('model')} "
          f"{info['cpu'].get('simd')}; {a.threads} thread(s), chunk {a.chunk}, {a.frames} frames x {a.rounds} "
          f"rounds (median of round medians); load {info['loadavg_at_start'][0]:.1f} -> "
          f"{res['loadavg_at_end'][0]:.1f}; ratios and SNR vs {ref_name}")
    print(f"{'variant':<10} {'wall ms':>8} {'x ref':>6} {'cpu ms':>7} {'x ref':>6} {'SNR dB':>7} {'load s':>7}  kernels")
    for n in engines:
        ms, cms = statistics.median(times[n]), statistics.median(cpu[n])
        snr = snr_db(ref, outs[n])
        res["variants"][n] = dict(meta[n], ms_per_frame=round(ms, 2), cpu_ms_per_frame=round(cms, 2),
                                  per_round=[round(x, 2) for x in times[n]], cpu_per_round=[round(x, 2) for x in cpu[n]],
                                  ratio_to_reference=round(ms / ref_ms, 3), cpu_ratio_to_reference=round(cms / ref_cpu, 3),
                                  snr_db=snr, max_abs_diff=float(np.max(np.abs(ref - outs[n]))))
        print(f"{n:<10} {ms:>8.1f} {ms / ref_ms:>6.3f} {cms:>7.1f} {cms / ref_cpu:>6.3f} {snr:>7} "
              f"{meta[n]['load_s']:>7.1f}  {kernels_summary(meta[n]['kernels'])}")
    if a.json:
        bench_util.write_json(a.json, res, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
