#!/usr/bin/env python3
"""One peer engine, in its own venv, driven by scripts/bench_peers.py (not meant to be run by hand).

    <peer venv>/bin/python scripts/peers/peer_worker.py ENGINE JSON_ARGS

ENGINE is `vox` or `qwentts`. Loads the model once, makes an x-vector voice (Base model: the peers need one),
does a short warm-up, then `runs` streaming generations of the same text with the same seed, and prints one line
`PEER_JSON {...}` with the raw figures: per run the wall time, time to first audio, samples and the engine's own
per-stage accounting (vox: `Engine.stats()` before/after; qwentts: the `[Perf]` lines of its log callback).
bench_peers.py normalises them. Only numpy and the engine are imported (the peer venv has nothing else).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

TEXT = "The quick brown fox jumps over the lazy sleeping dog."  # the text of scripts/bench.py
SR = 24000


def synthetic_reference(seconds: float = 3.0) -> np.ndarray:
    """A fixed 3 s voiced-like signal (harmonics + a little noise) for the speaker encoder: the weights are
    random, so any audio does; it only has to be deterministic."""
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 + 20 * np.sin(2 * np.pi * 0.7 * t)
    ph = 2 * np.pi * np.cumsum(f0) / SR
    x = sum(0.2 / k * np.sin(k * ph) for k in range(1, 8)) + 0.005 * np.random.default_rng(0).standard_normal(t.size)
    return (x * (0.6 + 0.4 * np.sin(2 * np.pi * 2.0 * t) ** 2)).astype(np.float32)


def proc_rss_mb() -> dict:
    """This process's resident set now and its high-water mark (/proc/self/status), MB."""
    out = {}
    try:
        for line in open("/proc/self/status"):
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return {"rss_mb": out.get("VmRSS"), "hwm_mb": out.get("VmHWM"), "anon_mb": out.get("RssAnon"),
            "file_mb": out.get("RssFile")}


def timed_stream(chunks) -> dict:
    """Wall time, time to the first non-empty chunk and sample count of one streaming generation."""
    t0 = time.perf_counter()
    first, first_n, n = None, None, 0
    for ch in chunks:
        if isinstance(ch, tuple):  # qwentts yields (samples, sample_rate)
            ch = ch[0]
        if len(ch) and first is None:
            first, first_n = time.perf_counter() - t0, len(ch)
        n += len(ch)
    return {"wall_s": time.perf_counter() - t0, "ttfa_s": first, "first_chunk_samples": first_n, "samples": int(n)}


# ------------------------------------------------------------------------------------------------ vox

def run_vox(a: dict) -> dict:
    import vox

    out = {"version": vox.__version__}
    t0 = time.perf_counter()
    eng = vox.Engine(a["model"], device="cpu", threads=int(a["threads"]))
    out["load_s"] = time.perf_counter() - t0
    out["rss_after_load"] = proc_rss_mb()
    info = eng.info
    plan = info.get("plan", {})
    out["engine_info"] = {k: info.get(k) for k in ("backend", "device", "specialized", "tuned", "fingerprint",
                                                    "version")}
    out["engine_info"]["plan"] = {k: plan.get(k) for k in ("mode", "threads", "spin", "overlap", "backend",
                                                           "release_host_weights")}
    out["engine_info"]["precision"] = info.get("manifest", {}).get("precision")
    out["engine_info"]["generation_defaults"] = info.get("manifest", {}).get("generation")
    t0 = time.perf_counter()
    voice = eng.clone_voice((synthetic_reference(), SR), xvector_only=True)
    out["voice_s"] = time.perf_counter() - t0
    params = dict(seed=int(a["seed"]), temperature=0.9, top_k=50, top_p=1.0, repetition_penalty=1.05,
                  sub_temperature=0.9, sub_top_k=50, sub_top_p=1.0, language="english")
    out["params"] = dict(params, max_frames=int(a["frames"]), VOX_DEBUG_NO_EOS=os.environ.get("VOX_DEBUG_NO_EOS"))
    timed_stream(eng.stream(TEXT, voice, **dict(params, max_frames=int(a["warmup_frames"]))))
    runs = []
    for _ in range(int(a["runs"])):
        before = eng.stats()
        r = timed_stream(eng.stream(TEXT, voice, **dict(params, max_frames=int(a["frames"]))))
        after = eng.stats()
        r["stats_before"] = before.get("backend", {})
        r["stats_after"] = after.get("backend", {})
        r["peak_rss_engine"] = after.get("memory", {}).get("peak_rss")
        runs.append(r)
    out["runs"] = runs
    out["rss_end"] = proc_rss_mb()
    out["sample_rate"] = eng.sample_rate
    out["threads_reported"] = eng.stats().get("threads")
    return out


# ------------------------------------------------------------------------------------------------ qwentts

def cpu_features(lib_dir: str) -> dict:
    """What ggml-cpu of the wheel was compiled for (ggml_cpu_has_*), i.e. which kernels it can run."""
    import ctypes

    try:
        lib = ctypes.CDLL(os.path.join(lib_dir, "libggml-cpu.so.0"))
    except OSError as e:
        return {"error": str(e)}
    feats = {}
    for f in ("sse3", "ssse3", "avx", "avx2", "f16c", "fma", "bmi2", "avx_vnni", "avx512", "avx512_vnni",
              "avx512_bf16", "amx_int8", "neon", "dotprod", "matmul_int8", "sve", "llamafile"):
        fn = getattr(lib, f"ggml_cpu_has_{f}", None)
        if fn is not None:
            fn.restype = ctypes.c_int
            feats[f] = bool(fn())
    return feats


def run_qwentts(a: dict) -> dict:
    import qwentts_cpp_cpu as q
    from qwentts_cpp_cpu import QwenLibrary, QwenTTS

    lib = QwenLibrary()
    out = {"version": q.__version__, "native_version": lib.version(), "cpu_only": lib.cpu_only(),
           "abi": q.QT_ABI_VERSION}
    out["ggml_cpu_features"] = cpu_features(os.path.join(os.path.dirname(q.__file__), "lib"))
    t0 = time.perf_counter()
    tts = QwenTTS(a["talker"], a["codec"], cpu_threads=int(a["threads"]))
    out["load_s"] = time.perf_counter() - t0
    out["rss_after_load"] = proc_rss_mb()
    log: list = []

    def on_log(level, msg):
        msg = msg if isinstance(msg, str) else msg.decode(errors="replace")
        if not msg.startswith("[Sample"):  # per-step sampling traces: hundreds per run, not needed
            log.append(msg.rstrip())

    tts.set_log_callback(on_log)
    spk = np.random.default_rng(int(a["seed"])).standard_normal(1024).astype(np.float32) * 0.05  # an x-vector
    params = dict(text=TEXT, lang="english", ref_spk_emb=spk, seed=int(a["seed"]), do_sample=True, temperature=0.9,
                  top_k=50, top_p=1.0, repetition_penalty=1.05, subtalker_do_sample=True, subtalker_temperature=0.9,
                  subtalker_top_k=50, subtalker_top_p=1.0)
    out["params"] = {k: v for k, v in params.items() if k not in ("ref_spk_emb", "text")}
    out["params"].update(max_new_tokens=int(a["frames"]), voice="random x-vector (ref_spk_emb, 1024 floats)",
                         cpu_codec_threads=0, cpu_stream_frames=0)
    timed_stream(tts.stream(**params, max_new_tokens=int(a["warmup_frames"])))
    out["warmup_log"] = list(log)
    runs = []
    for _ in range(int(a["runs"])):
        log.clear()
        r = timed_stream(tts.stream(**params, max_new_tokens=int(a["frames"])))
        r["log"] = list(log)
        r["profile_first_callback_ms"] = (tts.last_stream_profile or {}).get("first_callback_enter_ms")
        runs.append(r)
    out["runs"] = runs
    out["rss_end"] = proc_rss_mb()
    out["sample_rate"] = SR
    tts.close()
    return out


def main() -> int:
    engine, args = sys.argv[1], json.loads(sys.argv[2])
    res = {"vox": run_vox, "qwentts": run_qwentts}[engine](args)
    sys.stdout.write("PEER_JSON " + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
