#!/usr/bin/env python3
"""Voice-cloning benchmark on the full-size model: encoding a reference, the talker prefill of an
in-context prompt with and without the prompt-prefix cache, priming the vocoder with the reference, and
time to first audio through the real daemons for the first and the repeated use of a voice.

    python scripts/bench_voice.py [--work /tmp/qwen3-tts-bench] [--checkpoint DIR] [--quant q4_k_m]
                                  [--ref-seconds 10] [--runs 3] [--json FILE]

Uses the checkpoint and converted model of scripts/bench.py (same --work). THE WEIGHTS ARE RANDOM: the
reference is a synthetic tone and the output is noise; only the timings mean something. Medians over --runs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from scripts.bench import (ROLES, ensure_checkpoint, ensure_model, log, machine_info, median, r1,  # noqa: E402
                           tokenizer_fixup)

TEXT = "The quick brown fox jumps over the lazy sleeping dog."
REF_TEXT = ("This is the reference recording of the speaker, a few sentences long, read calmly and clearly "
            "so that the voice can be cloned.")


def ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def reference(seconds: float, sr: int = 44100):
    import numpy as np

    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.8 * t)
    ph = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(0.25 / k * np.sin(k * ph) for k in range(1, 6)) + 0.02 * np.random.default_rng(0).standard_normal(len(t))
    return x.astype(np.float32), sr


def bench_encode(md, wav, sr, runs: int, threads: int) -> tuple[dict, object]:
    from daemons.engine.voice import encode_voice
    from daemons.engine.voice_encoder import VoiceEncoder, resample_24k

    enc = VoiceEncoder(md, threads=threads)
    w24 = resample_24k(wav, sr)
    enc.codes(w24[:24000]), enc.xvector(w24[:24000])  # warm-up
    tot, cod, xv = [], [], []
    voice = None
    for _ in range(runs):
        t0 = time.perf_counter()
        voice = encode_voice(md, (wav, sr), REF_TEXT, "english", encoder=enc)
        tot.append(ms(t0))
        t0 = time.perf_counter()
        enc.codes(w24)
        cod.append(ms(t0))
        t0 = time.perf_counter()
        enc.xvector(w24)
        xv.append(ms(t0))
    secs = len(wav) / sr
    return {"reference_s": secs, "threads": threads, "encode_voice_ms": r1(median(tot)),
            "speech_encoder_ms": r1(median(cod)), "speaker_encoder_ms": r1(median(xv)),
            "ms_per_reference_second": r1(median(tot) / secs), "ref_frames": len(voice.ref_codes)}, voice


def bench_prefill(md, voice, runs: int, threads: int) -> dict:
    from daemons.engine.prompt import PromptBuilder
    from daemons.engine.talker import TalkerEngine

    p = PromptBuilder(md).build(TEXT, "english", xvector=voice.xvector, ref_codes=voice.ref_codes,
                                ref_text=voice.ref_text)
    out = {"prompt_rows": len(p.prefill), "fixed_rows": p.n_fixed, "threads": threads}
    for cached in (False, True):
        eng = TalkerEngine(md, threads=threads, prefix_cache=cached)
        eng.prefill(p.prefill[:8])  # warm-up: compute buffers (no prefix given, so nothing is cached)
        t0 = time.perf_counter()
        eng.prefill(p.prefill, p.n_fixed)
        first = ms(t0)
        again = []
        for _ in range(runs):
            t0 = time.perf_counter()
            eng.prefill(p.prefill, p.n_fixed)
            again.append(ms(t0))
        key = "with_cache" if cached else "without_cache"
        out[key] = {"first_ms": r1(first), "repeat_ms": r1(median(again))}
        if cached:
            out[key]["hits"], out[key]["state_mb"] = eng.cache.hits, r1(eng.cache.memory_bytes / 2 ** 20)
        eng.close()
    return out


def bench_vocoder_context(md, voice, runs: int, threads: int) -> dict:
    import numpy as np

    from daemons.engine.vocoder import VocoderEngine

    eng = VocoderEngine(md.file(md.vocoder["onnx"]), md.vocoder, threads=threads)
    eng.new_stream().decode(np.zeros((2, 16), np.int64))
    from daemons.vocoder_daemon import DECODE_STEP_FRAMES

    prime, whole, clone = [], [], []
    primed = None
    ref = voice.ref_codes
    for _ in range(runs):
        t0 = time.perf_counter()  # as the vocoder daemon primes: head alone, then the last frames whole
        primed, at = eng.new_stream(), 0
        while at < len(ref):
            at = primed.prime(ref, at, DECODE_STEP_FRAMES)
        prime.append(ms(t0))
        t0 = time.perf_counter()  # every frame through the whole graph, in the daemon's steps
        s = eng.new_stream()
        for i in range(0, len(ref), DECODE_STEP_FRAMES):
            s.decode(ref[i:i + DECODE_STEP_FRAMES])
        whole.append(ms(t0))
        t0 = time.perf_counter()
        primed.clone()
        clone.append(ms(t0))
    state_mb = sum(s.nbytes for s in primed.get_state()) / 2 ** 20
    return {"ref_frames": len(ref), "threads": threads, "prime_ms": r1(median(prime)),
            "prime_whole_graph_ms": r1(median(whole)), "head_model": eng.head_path is not None,
            "cached_clone_ms": r1(median(clone), 2), "state_mb": r1(state_mb, 2)}


def bench_daemons(args, md_path: Path, voice) -> dict:
    from client.api import TTSClient
    from daemons.launcher import Launcher

    run = Path(args.work) / "run-voice"
    run.mkdir(parents=True, exist_ok=True)
    cfg = run / "bench.toml"
    cfg.write_text(f'model_dir = "{md_path.resolve()}"\nruntime_dir = "{run.resolve()}"\n[limits]\n'
                   "vocoder_timeout_s = 120.0\nrequest_timeout_s = 3600.0\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TTS_")}
    env.update(QWEN3_TTS_CONFIG=str(cfg), PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    la = Launcher(run, env=env)
    out = {}
    try:
        for r in ROLES:
            la.start(r)
            la.wait_ready(r, 600)
        with TTSClient(f"ipc://{run.resolve()}/talker.sock", idle_timeout_s=600) as c:
            c.synthesize(TEXT, "english", params={"seed": 1}, max_frames=4)  # warm-up
            plain = [c.synthesize(TEXT, "english", params={"seed": 10 + i}, max_frames=12).ttfa_s * 1e3
                     for i in range(args.runs)]
            first = c.synthesize(TEXT, "english", params={"seed": 20}, max_frames=12, voice=voice).ttfa_s * 1e3
            rep = [c.synthesize(TEXT, "english", params={"seed": 30 + i}, max_frames=12, voice=voice).ttfa_s * 1e3
                   for i in range(args.runs)]
            xv = voice.as_xvector_only()
            xv_first = c.synthesize(TEXT, "english", params={"seed": 40}, max_frames=12, voice=xv).ttfa_s * 1e3
            xv_rep = [c.synthesize(TEXT, "english", params={"seed": 50 + i}, max_frames=12, voice=xv).ttfa_s * 1e3
                      for i in range(args.runs)]
        out = {"ttfa_no_voice_ms": r1(median(plain)), "ttfa_icl_first_use_ms": r1(first),
               "ttfa_icl_repeat_ms": r1(median(rep)), "ttfa_xvector_first_use_ms": r1(xv_first),
               "ttfa_xvector_repeat_ms": r1(median(xv_rep))}
    finally:
        for r in ROLES:
            la.stop(r)
        la.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/qwen3-tts-bench")
    ap.add_argument("--checkpoint")
    ap.add_argument("--quant", default="q4_k_m", choices=("f32", "f16", "q8_0", "q4_k_m"))
    ap.add_argument("--predictor-quant", choices=("f32", "f16", "q8_0", "q4_k_m"))
    ap.add_argument("--ref-seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--skip-daemons", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    ckpt, _ = tokenizer_fixup(ensure_checkpoint(args), Path(args.work))
    md_path, _ = ensure_model(args, ckpt)
    from daemons.engine.manifest import ModelDir

    md = ModelDir(md_path)
    wav, sr = reference(args.ref_seconds)
    res = {"machine": machine_info(), "quant": args.quant, "model_dir": str(md_path), "random_weights": True}
    log("encode-voice")
    res["encode"], voice = bench_encode(md, wav, sr, args.runs, args.threads)
    log(f"{res['encode']}")
    log("talker prefill of the in-context prompt, without and with the prefix cache")
    res["prefill"] = bench_prefill(md, voice, args.runs, args.threads)
    log(f"{res['prefill']}")
    log("vocoder: priming with the reference frames vs reusing the primed state")
    res["vocoder_context"] = bench_vocoder_context(md, voice, args.runs, args.threads)
    log(f"{res['vocoder_context']}")
    if not args.skip_daemons:
        log("daemons: time to first audio")
        res["daemons"] = bench_daemons(args, md_path, voice)
        log(f"{res['daemons']}")
    print(json.dumps({k: v for k, v in res.items() if k != "machine"}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
