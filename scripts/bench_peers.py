#!/usr/bin/env python3
"""The public CPU Qwen3-TTS engines that install from PyPI, on the same full-size random-weight checkpoint as
scripts/bench.py, each in its own venv and its own subprocess.

    python scripts/bench_peers.py [--work DIR] [--checkpoint DIR] [--frames 100] [--runs 3] [--threads 2]
                                  [--peers vox-tts,realtimetts-qwen-native-cpu] [--json FILE]
    python scripts/bench.py ... --peers            # the same, stored under "peers" in bench.py's JSON

Peers (`PEERS` below):
- `vox-tts` (native C++ engine): `python -m vox build` converts the checkpoint to a .tmod (`--vox-quant`, default
  q4: 4-bit talker attention/MLP, 8-bit rest; the closest to our q4_k_m talker); EOS is disabled
  (VOX_DEBUG_NO_EOS=1) and `max_frames` = --frames, so every run makes exactly --frames frames.
- `realtimetts-qwen-native-cpu` (qwentts.cpp CPU wheel, no converter): `scripts/peers/qwentts_convert.py`
  writes its two GGUF files (`--qwentts-quant`, default q4_k for the linear weights; the codec f32) and
  quantizes through the wheel's own ggml. It cannot disable EOS: `max_new_tokens` = --frames and the frames it
  made are reported (figures are per frame).
- `qwen3-tts-mnn`, `qwen3synth`: skipped (they run only pre-exported bundles downloaded from a model hub).

Each peer: a venv `<peers-dir>/<name>/venv` (`python3 -m venv`, pip from PyPI; our project venv is never
touched), the converted model under `<peers-dir>/<name>/models` (reused while the checkpoint's stamp matches),
then `scripts/peers/peer_worker.py` in that venv: load, one x-vector voice (Base model), a warm-up of
--warmup-frames, then --runs streaming generations of the bench text with a fixed seed and the official sampling
(talker and code predictor temperature 0.9, top-k 50, top-p 1.0, repetition penalty 1.05), `--threads` threads.
Reported per peer (medians over the runs): RTF(w/a) = wall / audio seconds, time to first audio (request to the
first audio chunk), generation ms/frame (talker + code predictor, and each, from the engine's own stage
accounting), vocoder ms/frame, prefill ms, peak RSS of the worker process (kernel `ru_maxrss` from wait4, the
whole life of the process: load + runs), threads, frames, the engine version and what it says about its
kernels. A peer that cannot run gets `{"skipped": "<reason>"}`. THE WEIGHTS ARE RANDOM: the audio is noise.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts import bench_util  # noqa: E402 (after the path setup: run as a script too)
from scripts.bench_util import make_log, median, r1  # noqa: E402
WORKER = ROOT / "scripts" / "peers" / "peer_worker.py"
QWENTTS_CONVERT = ROOT / "scripts" / "peers" / "qwentts_convert.py"
SAMPLES_PER_FRAME = 1920  # 80 ms at 24 kHz

PEERS = {
    "vox-tts": {"pip": ["vox-tts"], "import": "vox", "engine": "vox"},
    "realtimetts-qwen-native-cpu": {"pip": ["realtimetts-qwen-native-cpu", "gguf"],
                                    "import": "qwentts_cpp_cpu, gguf", "engine": "qwentts"},
    "qwen3-tts-mnn": {"skipped": "0.3.1 runs only a pre-exported MNN model, by default downloaded from a model hub "
                                 "(yunfengwang/Qwen3-TTS-12Hz-0.6B-Base-MNN, ~1.9 GB), which is not reachable here; "
                                 "the wheel ships no exporter from the official checkpoint (its `export` extra only "
                                 "lists torch/onnx dependencies)"},
    "qwen3synth": {"skipped": "0.1.0 runs only pre-exported ONNX bundles from the onnxvoice catalog, downloaded from "
                              "a model hub that is not reachable here; the wheel has no converter from the official "
                              "checkpoint"},
}
DEFAULT_PEERS = tuple(PEERS)


log = make_log("bench_peers")


# ------------------------------------------------------------------------------- parsing / normalisation (pure)

PERF_RE = {
    "prompt_ms": re.compile(r"\[Perf\] PromptBuild ([\d.]+) ms"),
    "prefill_ms": re.compile(r"\[Perf\] Prefill ([\d.]+) ms"),
    "first_codes_ms": re.compile(r"\[Perf\] TTFA ([\d.]+) ms"),
    "talker_ms": re.compile(r"\[Perf\] TalkerDecode ([\d.]+) ms \((\d+) frames"),
    "predictor_ms": re.compile(r"\[Perf\] CodePredictor ([\d.]+) ms"),
    "host_ms": re.compile(r"\[Perf\] HostCompose ([\d.]+) ms"),
    "codec_ms": re.compile(r"\[Perf\] CodecDecode ([\d.]+) ms"),
    "total_ms": re.compile(r"\[Perf\] Total ([\d.]+) ms \((\d+) frames"),
}
DONE_RE = re.compile(r"Generation done\s*:\s*(\d+) frames")
EOS_RE = re.compile(r"EOS at step (\d+)")


def parse_qwentts_perf(lines) -> dict:
    """The `[Perf]` summary qwentts.cpp logs after one synthesis -> milliseconds and frame counts. The last
    occurrence of each line wins (one synthesis per list); missing lines are absent from the result."""
    out: dict = {}
    for line in lines:
        for key, rx in PERF_RE.items():
            m = rx.search(line)
            if m:
                out[key] = float(m.group(1))
                if key in ("talker_ms", "total_ms"):
                    out["frames"] = int(m.group(2))
        m = DONE_RE.search(line)
        if m:
            out["frames_done"] = int(m.group(1))
        m = EOS_RE.search(line)
        if m:
            out["eos_step"] = int(m.group(1))
    return out


def vox_stage_delta(before: dict, after: dict) -> dict:
    """Seconds per stage and frames of one generation from two `Engine.stats()["backend"]` snapshots (the engine
    accumulates them over its life)."""
    sb, sa = before.get("seconds", {}) or {}, after.get("seconds", {}) or {}
    out = {k: max(0.0, float(sa.get(k, 0.0)) - float(sb.get(k, 0.0))) for k in sa}
    out["frames"] = int(after.get("frames", 0) or 0) - int(before.get("frames", 0) or 0)
    return out


def normalise_run(engine: str, run: dict, sample_rate: int = 24000) -> dict:
    """One raw worker run -> the bench's per-run figures (ms per frame from the engine's own stage accounting,
    RTF and frames from the audio it delivered)."""
    samples = int(run.get("samples") or 0)
    audio_s = samples / sample_rate
    frames = samples / SAMPLES_PER_FRAME
    out = {"wall_s": run["wall_s"], "audio_s": audio_s, "frames": frames,
           "rtf": run["wall_s"] / audio_s if audio_s > 0 else None,
           "ttfa_ms": None if run.get("ttfa_s") is None else 1000.0 * run["ttfa_s"],
           "wall_ms_per_frame": 1000.0 * run["wall_s"] / frames if frames else None}
    talker = predictor = codec = prefill = None
    n = None
    if engine == "vox":
        d = vox_stage_delta(run.get("stats_before", {}), run.get("stats_after", {}))
        n = d["frames"] or frames
        talker, predictor, codec, prefill = (1000.0 * d.get(k, 0.0)
                                             for k in ("talker", "predictor", "codec", "prefill"))
    elif engine == "qwentts":
        p = parse_qwentts_perf(run.get("log", []))
        n = p.get("frames") or p.get("frames_done") or frames
        talker, predictor, codec, prefill = (p.get(k) for k in ("talker_ms", "predictor_ms", "codec_ms", "prefill_ms"))
        if p.get("host_ms") is not None and talker is not None:
            talker += p["host_ms"]  # code-0 sampling and the next input row: part of the talker step
        out["eos_step"] = p.get("eos_step")
    out["engine_frames"] = n
    if n:
        out["talker_ms_per_frame"] = None if talker is None else talker / n
        out["predictor_ms_per_frame"] = None if predictor is None else predictor / n
        out["gen_ms_per_frame"] = (None if talker is None or predictor is None else (talker + predictor) / n)
        out["vocoder_ms_per_frame"] = None if codec is None else codec / n
    out["prefill_ms"] = prefill
    return out


SUMMARY_KEYS = ("rtf", "ttfa_ms", "gen_ms_per_frame", "talker_ms_per_frame", "predictor_ms_per_frame",
                "vocoder_ms_per_frame", "prefill_ms", "wall_ms_per_frame", "frames", "audio_s", "wall_s")


def summarise_runs(runs: list[dict]) -> dict:
    """Medians of the per-run figures (rounded for the report), plus the per-run RTFs."""
    out = {}
    for k in SUMMARY_KEYS:
        v = median([r.get(k) for r in runs])
        out[k] = r1(v, 3 if k in ("rtf", "audio_s", "wall_s") else 1)
    out["frames_per_run"] = [r1(r.get("frames"), 1) for r in runs]
    out["rtf_per_run"] = [r1(r.get("rtf"), 3) for r in runs]
    return out


KERNEL_LINE = re.compile(r"backend|thread|kernel|avx|neon|simd|isa|mode |plan|\[Load\]|\[Talker\] Loaded|"
                         r"\[CodePredictor\] Loaded|\[Pipeline\] Loaded|\[Qwen\] qwentts|fa=", re.I)


def kernel_lines(text: str, limit: int = 20) -> list[str]:
    """The lines of an engine's start-up output that say how it runs (backend, threads, kernels, plan)."""
    seen, out = set(), []
    for line in text.splitlines():
        line = line.strip()
        if line and KERNEL_LINE.search(line) and line not in seen:
            seen.add(line)
            out.append(line)
    return out[:limit]


def format_table(peers: dict) -> str:
    cols = [("rtf", "RTF(w/a)", 3), ("ttfa_ms", "TTFA ms", 0), ("gen_ms_per_frame", "gen ms/f", 1),
            ("talker_ms_per_frame", "talker", 1), ("predictor_ms_per_frame", "CP", 1),
            ("vocoder_ms_per_frame", "vocoder ms/f", 1), ("peak_rss_mb", "peak RSS MB", 0), ("threads", "thr", 0),
            ("frames", "frames", 1)]
    name_w = max([len("peer")] + [len(n) for n in peers])
    head = f"{'peer':<{name_w}}  " + "  ".join(f"{h:>{max(len(h), 7)}}" for _, h, _ in cols)
    lines = [head, "-" * len(head)]
    for name, p in peers.items():
        if "skipped" in p or "error" in p:
            lines.append(f"{name:<{name_w}}  {'skipped' if 'skipped' in p else 'FAILED'}: "
                         f"{p.get('skipped') or p.get('error')}")
            continue
        cells = []
        for k, h, nd in cols:
            v = p.get(k)
            cells.append(f"{'-' if v is None else (f'{v:.{nd}f}' if nd else f'{v:.0f}'):>{max(len(h), 7)}}")
        lines.append(f"{name:<{name_w}}  " + "  ".join(cells) + f"   {p.get('version', '')}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ processes

def run_measured(cmd, *, env=None, cwd=None, timeout=None, stderr_path: Path | None = None) -> dict:
    """Run `cmd`, return its stdout, exit code, wall time and the peak RSS of that process (wait4's ru_maxrss,
    which covers the child and any descendants it waited for)."""
    err = open(stderr_path, "w") if stderr_path else subprocess.DEVNULL
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd, text=True)
    killed = []

    def kill():
        killed.append(True)
        p.kill()

    timer = threading.Timer(timeout, kill) if timeout else None
    if timer:
        timer.start()
    try:
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
    finally:
        if timer:
            timer.cancel()
        if stderr_path:
            err.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"stdout": out, "rc": p.returncode, "wall_s": time.perf_counter() - t0,
            "peak_rss_mb": ru.ru_maxrss / 1024.0, "cpu_s": ru.ru_utime + ru.ru_stime, "timed_out": bool(killed)}


def cpu_busy_s() -> float | None:
    """CPU seconds all CPUs have spent busy since boot (/proc/stat: user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf("SC_CLK_TCK")


def foreign_cores(busy0, busy1, own_cpu_s: float, wall_s: float) -> float | None:
    """Average number of cores other processes kept busy while a worker ran (busy CPU time of the machine minus
    the worker's own, per second of wall time): ~0 on a quiet machine; the figures of a peer measured with
    other work running are pessimistic."""
    if busy0 is None or busy1 is None or wall_s <= 0:
        return None
    return max(0.0, (busy1 - busy0) - own_cpu_s) / wall_s


def wait_for_idle(max_load: float, max_wait_s: float) -> dict:
    return bench_util.wait_for_idle(max_load, max_wait_s, log)


def nice_cmd(cmd, nice: int):
    """`cmd` run at niceness `nice` (absolute: a bench already started with `nice -n 10` adds nothing)."""
    inc = max(0, int(nice) - os.getpriority(os.PRIO_PROCESS, 0))
    return (["nice", "-n", str(inc)] if inc else []) + list(cmd)


def ensure_venv(peer_dir: Path, spec: dict) -> tuple[Path, str]:
    """The peer's venv (made once) with its package installed; returns (python, installed version)."""
    venv = peer_dir / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        log(f"creating {venv}")
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    ok = subprocess.run([str(py), "-c", f"import {spec['import']}"], capture_output=True).returncode == 0
    if not ok:
        log(f"pip install {' '.join(spec['pip'])} into {venv}")
        r = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-q", *spec["pip"]],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"pip install {spec['pip'][0]} failed: {(r.stderr or r.stdout).strip()[-300:]}")
    ver = subprocess.run([str(py), "-c", f"import importlib.metadata as m; print(m.version({spec['pip'][0]!r}))"],
                         capture_output=True, text=True).stdout.strip()
    return py, ver


def checkpoint_stamp(ckpt: Path) -> dict:
    files = [ckpt / "model.safetensors", ckpt / "config.json", ckpt / "speech_tokenizer" / "model.safetensors"]
    return {"checkpoint": str(ckpt.resolve()),
            "files": {f.name if f.parent == ckpt else f"speech_tokenizer/{f.name}":
                      [f.stat().st_size, int(f.stat().st_mtime)] for f in files if f.exists()}}


def cached(out_files: list[Path], stamp_file: Path, want: dict) -> bool:
    if not all(f.is_file() for f in out_files) or not stamp_file.is_file():
        return False
    try:
        return json.loads(stamp_file.read_text()) == want
    except ValueError:
        return False


# ------------------------------------------------------------------------------------------------ peers

def prepare_vox(py: Path, peer_dir: Path, ckpt: Path, a) -> dict:
    models = peer_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    tmod = models / f"ckpt-{a.vox_quant}.tmod"
    stamp = models / f"ckpt-{a.vox_quant}.stamp.json"
    want = {**checkpoint_stamp(ckpt), "quant": a.vox_quant, "dtype": "bf16"}
    if cached([tmod], stamp, want):
        return {"model": str(tmod), "converted": False}
    log(f"vox build {ckpt} -> {tmod} (--quant {a.vox_quant})")
    t0 = time.perf_counter()
    r = subprocess.run(nice_cmd([str(py), "-m", "vox", "build", "--model", str(ckpt), "--dtype", "bf16",
                                 *(["--quant", a.vox_quant] if a.vox_quant != "none" else []), "--no-hash",
                                 "-o", str(tmod)], a.nice), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"vox build failed: {(r.stderr or r.stdout).strip()[-300:]}")
    stamp.write_text(json.dumps(want, indent=1))
    return {"model": str(tmod), "converted": True, "convert_s": r1(time.perf_counter() - t0)}


def prepare_qwentts(py: Path, peer_dir: Path, ckpt: Path, a) -> dict:
    models = peer_dir / "models"
    models.mkdir(parents=True, exist_ok=True)
    talker = models / f"talker-{a.qwentts_quant}-f16.gguf"
    codec = models / "codec-f32.gguf"
    stamp = models / f"talker-{a.qwentts_quant}.stamp.json"
    conv_sig = hashlib.sha256(QWENTTS_CONVERT.read_bytes()).hexdigest()[:16]  # a changed converter converts again
    want = {**checkpoint_stamp(ckpt), "quant": a.qwentts_quant, "emb": "f16", "converter": conv_sig}
    if cached([talker, codec], stamp, want):
        return {"talker": str(talker), "codec": str(codec), "converted": False}
    log(f"converting {ckpt} -> qwentts GGUF ({a.qwentts_quant}) in {models}")
    codec.unlink(missing_ok=True)
    t0 = time.perf_counter()
    r = subprocess.run(nice_cmd([str(py), str(QWENTTS_CONVERT), str(ckpt), str(models), "--quant",
                                 a.qwentts_quant, "--emb", "f16"], a.nice), capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"GGUF conversion failed: {(r.stderr or r.stdout).strip()[-300:]}")
    info = json.loads(r.stdout.strip().splitlines()[-1])
    stamp.write_text(json.dumps(want, indent=1))
    return {"talker": str(talker), "codec": str(codec), "converted": True, "convert_s": r1(time.perf_counter() - t0),
            "tensor_types": info.get("talker_types")}


def bench_peer(name: str, a, ckpt: Path) -> dict:
    spec = PEERS[name]
    if "skipped" in spec:
        return {"skipped": spec["skipped"]}
    peer_dir = Path(a.peers_dir) / name
    peer_dir.mkdir(parents=True, exist_ok=True)
    py, version = ensure_venv(peer_dir, spec)
    engine = spec["engine"]
    prep = (prepare_vox if engine == "vox" else prepare_qwentts)(py, peer_dir, ckpt, a)
    args = {"threads": a.threads, "frames": a.frames, "runs": a.runs, "seed": a.seed,
            "warmup_frames": a.warmup_frames, **{k: v for k, v in prep.items() if k in ("model", "talker", "codec")}}
    env = dict(os.environ)
    for v in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"):
        env.pop(v, None)
    env.update(OMP_NUM_THREADS=str(a.threads), OPENBLAS_NUM_THREADS="1")
    if engine == "vox":
        env.update(VOX_DEBUG_NO_EOS="1", VOX_VERBOSE="1")
    idle = wait_for_idle(a.max_load, a.max_wait)
    la0 = os.getloadavg()
    log(f"{name} {version}: {a.runs} x {a.frames} frames, {a.threads} threads (load average {la0[0]:.2f})")
    stderr_path = peer_dir / "worker.stderr.log"
    busy0 = cpu_busy_s()
    r = run_measured(nice_cmd([str(py), str(WORKER), engine, json.dumps(args)], a.nice), env=env, cwd=str(peer_dir),
                     timeout=a.timeout, stderr_path=stderr_path)
    busy1 = cpu_busy_s()
    stderr = stderr_path.read_text(errors="replace")
    raw = None
    for line in r["stdout"].splitlines():
        if line.startswith("PEER_JSON "):
            raw = json.loads(line[len("PEER_JSON "):])
    if r["rc"] != 0 or raw is None:
        tail = " | ".join(stderr.strip().splitlines()[-3:])[-300:]
        return {"error": f"worker exit {r['rc']}{' (timeout)' if r['timed_out'] else ''}: {tail}",
                "version": version, "stderr_log": str(stderr_path)}
    (peer_dir / "worker.raw.json").write_text(json.dumps(raw, indent=1))
    runs = [normalise_run(engine, x, raw.get("sample_rate", 24000)) for x in raw["runs"]]
    res = {"version": version, **summarise_runs(runs), "peak_rss_mb": r1(r["peak_rss_mb"], 0),
           "threads": a.threads, "runs": len(runs), "load_s": r1(raw.get("load_s"), 2),
           "worker_wall_s": r1(r["wall_s"], 1), "worker_cpu_s": r1(r["cpu_s"], 1),
           "loadavg_1m": [r1(la0[0], 2), r1(os.getloadavg()[0], 2)], "idle_check": idle,
           "foreign_cores": r1(foreign_cores(busy0, busy1, r["cpu_s"], r["wall_s"]), 2),
           "rss_after_load_mb": (raw.get("rss_after_load") or {}).get("rss_mb"),
           "rss_end_mb": (raw.get("rss_end") or {}).get("rss_mb"),
           "rss_end_file_backed_mb": (raw.get("rss_end") or {}).get("file_mb"),
           "first_chunk_frames": r1(median([x.get("first_chunk_samples") for x in raw["runs"]]) / SAMPLES_PER_FRAME
                                     if any(x.get("first_chunk_samples") for x in raw["runs"]) else None, 2),
           "sampling": raw.get("params"), "model": {k: v for k, v in prep.items()}}
    if engine == "vox":
        res["kernels"] = {"engine_info": raw.get("engine_info"), "threads_reported": raw.get("threads_reported"),
                          "startup": kernel_lines(stderr)}
        res["frames_forced"] = True
        res["quant"] = f"vox --quant {a.vox_quant} (talker attention/MLP 4-bit, predictor and heads 8-bit), " \
                       "codec f32" if a.vox_quant == "q4" else f"vox --quant {a.vox_quant}"
    else:
        res["kernels"] = {"native_version": raw.get("native_version"), "abi": raw.get("abi"),
                          "cpu_only": raw.get("cpu_only"), "ggml_cpu_features": raw.get("ggml_cpu_features"),
                          "startup": kernel_lines(stderr)}
        res["frames_forced"] = False
        res["eos_steps"] = [x.get("eos_step") for x in runs]
        res["quant"] = f"talker/code-predictor linear {a.qwentts_quant}, embeddings f16, codec f32 " \
                       "(scripts/peers/qwentts_convert.py)"
    res["stderr_log"] = str(stderr_path)
    return res


def run(work, checkpoint, frames=100, runs=3, threads=None, peers=None, seed=1234, warmup_frames=8,
        vox_quant="q4", qwentts_quant="q4_k", nice=10, timeout=3600.0, peers_dir=None, max_load=0.5,
        max_wait=0.0) -> dict:
    """Benchmark the peers; returns {"peers": {name: {...}}, "settings": {...}} (also used by bench.py --peers)."""
    a = argparse.Namespace(work=str(work), frames=int(frames), runs=int(runs),
                           threads=int(threads or len(os.sched_getaffinity(0))), seed=int(seed),
                           warmup_frames=int(warmup_frames), vox_quant=vox_quant, qwentts_quant=qwentts_quant,
                           nice=int(nice), timeout=timeout, peers_dir=str(peers_dir or Path(work) / "peers"),
                           max_load=float(max_load), max_wait=float(max_wait))
    ckpt = Path(checkpoint)
    if not (ckpt / "model.safetensors").is_file() or not (ckpt / "speech_tokenizer" / "model.safetensors").is_file():
        raise SystemExit(f"error: {ckpt} is not a full checkpoint (model.safetensors + speech_tokenizer/)")
    names = list(peers or DEFAULT_PEERS)
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise SystemExit(f"error: unknown peer(s) {unknown}; known: {', '.join(PEERS)}")
    out: dict = {}
    for name in names:
        try:
            out[name] = bench_peer(name, a, ckpt)
        except Exception as e:  # noqa: BLE001 - one peer failing must not stop the others
            out[name] = {"error": f"{type(e).__name__}: {str(e).strip()[-300:]}"}
        p = out[name]
        if "rtf" in p:
            log(f"{name}: RTF {p['rtf']}, TTFA {p['ttfa_ms']} ms, gen {p['gen_ms_per_frame']} ms/frame, vocoder "
                f"{p['vocoder_ms_per_frame']} ms/frame, peak RSS {p['peak_rss_mb']} MB")
        else:
            log(f"{name}: {p}")
    settings = {"checkpoint": str(ckpt), "frames": a.frames, "runs": a.runs, "threads": a.threads, "seed": a.seed,
                "warmup_frames": a.warmup_frames, "nice": a.nice,
                "random_weights": (ckpt / "RANDOM_WEIGHTS.txt").exists(),
                "text": "The quick brown fox jumps over the lazy sleeping dog.", "logical_cpus": os.cpu_count(),
                "rtf": "wall / audio seconds (lower is better)",
                "peak_rss": "ru_maxrss of the worker process (load + all runs)",
                "foreign_cores": "cores other processes kept busy while each worker ran (0 = quiet machine)"}
    return {"peers": out, "settings": settings}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/qwen3-tts-bench", help="bench work dir (checkpoint, peers/)")
    ap.add_argument("--checkpoint", help="full-size checkpoint (default: <work>/ckpt-full, made if missing)")
    ap.add_argument("--peers-dir", help="default <work>/peers")
    ap.add_argument("--peers", default=",".join(DEFAULT_PEERS), help="comma-separated, default all")
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="default: all usable CPUs")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--warmup-frames", type=int, default=8)
    ap.add_argument("--vox-quant", default="q4", choices=("none", "q8", "q4", "q4mlp", "q4full"))
    ap.add_argument("--qwentts-quant", default="q4_k", choices=("f32", "q8_0", "q4_k", "q4_k_m"))
    ap.add_argument("--nice", type=int, default=10, help="niceness of conversions and workers (absolute; 0: that "
                                                         "of this process)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per peer worker")
    ap.add_argument("--max-load", type=float, default=0.5, help="before each peer, wait for a 1-min load average "
                                                                 "below this ...")
    ap.add_argument("--max-wait", type=float, default=0.0, help="... for at most this many seconds (default: do not "
                                                                "wait; the load and foreign_cores are recorded)")
    ap.add_argument("--json", help="write the result here")
    a = ap.parse_args(argv)
    ckpt = Path(a.checkpoint) if a.checkpoint else Path(a.work) / "ckpt-full"
    if not a.checkpoint and not (ckpt / "model.safetensors").is_file():
        log(f"making a full-size random-weight checkpoint in {ckpt}")
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_checkpoint.py"), str(ckpt), "--size", "full"],
                       check=True, cwd=ROOT)
    res = run(a.work, ckpt, a.frames, a.runs, a.threads, [p for p in a.peers.split(",") if p], a.seed,
              a.warmup_frames, a.vox_quant, a.qwentts_quant, a.nice, a.timeout, a.peers_dir, a.max_load, a.max_wait)
    print(format_table(res["peers"]))
    if a.json:
        bench_util.write_json(a.json, res, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
