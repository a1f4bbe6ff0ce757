"""Code-predictor benchmark: where one `PredictorEngine.predict()` call goes, and variants A/B'd in one run.

    python scripts/bench_predictor.py --model-dir /tmp/cp15/model-q4_k_m \
        [--variant NAME=KEY:VAL,...]... [--rounds 7] [--frames 40] [--profile-frames 60]

Every variant is a worker process holding one `PredictorEngine` (keys: `threads`, `model` = another model
directory (e.g. another predictor quantization), `head_type` = numpy | f32 | f16 | q8_0 | q4_0 (the heads'
implementation; default: the engine's choice for the model), `ref` = a git revision
whose `daemons/` tree is used instead of the working tree, `reuse` = 0 to set LLAMA_GRAPH_REUSE_DISABLE=1,
`heads` = f16w: heads rounded to fp16, fp32 matvec (the precision of fp16 storage), f16wa: also the
hidden state rounded (ggml's F16 mul_mat), shared: one head for all 15 (timing only: shows what streaming
126 MB of heads per frame costs the decodes in cache misses)). The driver runs the variants' rounds interleaved (A B C A B C ...),
each round `--frames` predict() calls on the same seeded inputs (random hidden states of the talker's RMS,
random code 0), and prints per-variant medians of the per-round medians, the ratio to the first variant, and
whether every variant drew the same codes as the first (greedy and sampled, same seed). Then one profiled
pass per variant: the 15 decodes (of which the llama_decode C call and the get_embeddings copy, the rest is
the Python wrapper), heads, sampling, feedback embedding, other.

Default variants: `head` (the working tree at 1 thread) against `base` (git HEAD at 1 thread).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------------------------- worker side
def _inputs(n: int, hidden: int, cb: int, seed: int = 11):
    import numpy as np

    rng = np.random.default_rng(seed)
    hs = rng.standard_normal((n, hidden)).astype(np.float32)
    c0 = rng.integers(0, cb, n)
    return hs, c0


def worker(opts: dict) -> None:
    import hashlib

    import numpy as np

    import llama_cpp as L

    import daemons.engine.predictor as predmod
    from daemons.engine.manifest import ModelDir
    from daemons.engine.predictor import PredictorEngine
    from daemons.engine.sampling import SamplingParams

    md = ModelDir(opts.get("model") or opts["model_dir"])
    kw = {"head_type": opts["head_type"]} if opts.get("head_type") else {}
    eng = PredictorEngine(md, threads=int(opts.get("threads", 1)), **kw)
    heads = opts.get("heads")
    if heads == "f16w":  # fp16 storage, fp32 matvec: the precision of fp16 heads (not their speed)
        eng.heads = eng.heads.astype(np.float16).astype(np.float32)
    elif heads == "f16wa":  # weights and hidden state rounded to fp16: what ggml's F16 mul_mat computes
        eng.heads = eng.heads.astype(np.float16).astype(np.float32)
        if hasattr(eng, "_logits"):
            eng._logits = lambda j, h: eng.heads[j] @ h.astype(np.float16).astype(np.float32)
        else:
            raise SystemExit("heads:f16wa needs the working tree")
    elif heads == "shared":  # timing only (wrong codes): one 8 MB head for all 15, so it stays in cache
        eng.heads = np.broadcast_to(eng.heads[0], eng.heads.shape)
    elif heads:
        raise SystemExit(f"unknown heads variant {heads!r}")
    sampled = SamplingParams.from_generation_config(md.generation)
    greedy = SamplingParams.from_generation_config(md.generation)
    greedy.sub_do_sample = False
    n_in = int(opts.get("n_inputs", 64))
    hs, c0s = _inputs(n_in, md.predictor["hidden_size"], md.predictor["codebook_size"])
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the pipe
    out.write(json.dumps({"ready": True, "system_info": L.llama_print_system_info().decode()}) + "\n")
    out.flush()
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "quit":
            break
        if cmd == "run":  # timing round
            ts, cs = [], []
            for i in range(msg["frames"]):
                k = (msg["start"] + i) % n_in
                c0, t0 = time.process_time(), time.perf_counter()
                eng.predict(hs[k], int(c0s[k]), sampled, msg["seed"], i)
                ts.append((time.perf_counter() - t0) * 1e3)
                cs.append((time.process_time() - c0) * 1e3)
            res = {"ms": ts, "cpu_ms": cs}
        elif cmd == "codes":  # agreement: the codes of n frames, greedy and sampled
            h = hashlib.sha256()
            allc = {}
            for name, p in (("greedy", greedy), ("sampled", sampled)):
                cs = [eng.predict(hs[i % n_in], int(c0s[i % n_in]), p, 5, i)[0] for i in range(msg["frames"])]
                allc[name] = np.stack(cs).tolist()
                h.update(np.stack(cs).tobytes())
            res = {"codes": allc, "sha": h.hexdigest()}
        elif cmd == "profile":
            res = profile(eng, predmod, L, hs, c0s, sampled, msg["frames"])
        else:
            res = {"error": f"unknown command {cmd}"}
        out.write(json.dumps(res) + "\n")
        out.flush()
    eng.close()


def profile(eng, predmod, L, hs, c0s, params, frames: int) -> dict:
    """One pass with wrappers around the pieces of predict(); each wrapper adds ~0.3 µs per call."""
    import numpy as np

    acc: dict[str, float] = {}
    cnt: dict[str, int] = {}

    def timed(fn, key):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0
                cnt[key] = cnt.get(key, 0) + 1
        return wrapper

    patches = [(L, "llama_decode"), (L, "llama_get_embeddings_ith"), (predmod, "sample_sub"),
               (predmod, "frame_embeddings"), (predmod, "frame_rng")]
    inst = [(eng.lm, n) for n in ("decode", "decode_row") if hasattr(eng.lm, n)] \
        + [(eng, n) for n in ("_logits", "_feedback") if hasattr(eng, n)]
    saved = [(o, n, getattr(o, n)) for o, n in patches]
    try:
        for o, n, f in saved:
            setattr(o, n, timed(f, n))
        for o, n in inst:
            setattr(o, n, timed(getattr(o, n), n))
        n_in = len(hs)
        t0 = time.perf_counter()
        for i in range(frames):
            eng.predict(hs[i % n_in], int(c0s[i % n_in]), params, 3, i)
        total = time.perf_counter() - t0
    finally:
        for o, n, f in saved:
            setattr(o, n, f)
        for o, n in inst:
            delattr(o, n)
    per = {k: v * 1e3 / frames for k, v in acc.items()}
    calls = {k: v / frames for k, v in cnt.items()}
    # the heads alone, the way this engine computes them
    h = hs[0]
    t0 = time.perf_counter()
    for _ in range(frames):
        for j in range(15):
            (eng._logits(j, h) if hasattr(eng, "_logits") else eng.heads[j] @ h)
    heads_alone = (time.perf_counter() - t0) * 1e3 / frames
    # one 1-row decode alone, repeated on a short context (the fixed cost of a call at this size)
    lm = eng.lm
    lm.reset()
    lm.decode(np.stack([h, h]), want_logits=False)
    ts = []
    for _ in range(150):
        if lm.pos >= lm.n_ctx:
            lm.reset()
            lm.decode(np.stack([h, h]), want_logits=False)
        t1 = time.perf_counter()
        lm.decode(h, want_logits=False)
        ts.append((time.perf_counter() - t1) * 1e3)
    reused = None
    try:
        reused = L.llama_perf_context(lm.ctx).n_reused
    except Exception:
        pass
    return {"ms_per_frame": per, "calls_per_frame": calls, "total_ms_per_frame": total * 1e3 / frames,
            "heads_alone_ms_per_frame": heads_alone, "one_row_decode_ms": median(ts), "graphs_reused": reused}


# ----------------------------------------------------------------------------------------------- driver side
def parse_variant(s: str) -> tuple[str, dict]:
    name, _, spec = s.partition("=")
    opts = {}
    for kv in filter(None, spec.split(",")):
        k, _, v = kv.partition(":")
        opts[k] = v
    return name, opts


def tree_for(ref: str, tmp: Path) -> Path:
    d = tmp / ref.replace("/", "_")
    if not d.exists():
        d.mkdir(parents=True)
        arch = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "daemons"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(d)], input=arch.stdout, check=True)
    return d


class Worker:
    def __init__(self, name: str, opts: dict, model_dir: str, tmp: Path):
        self.name, self.opts = name, opts
        env = dict(os.environ)
        src = tree_for(opts["ref"], tmp) if opts.get("ref") else ROOT
        env["PYTHONPATH"] = str(src)
        env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"  # numpy heads single-threaded, as in daemons
        if opts.get("reuse") == "0":
            env["LLAMA_GRAPH_REUSE_DISABLE"] = "1"
        wopts = dict(opts, model_dir=model_dir)
        self.p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(wopts)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                  cwd=str(src))
        hello = self.read()
        self.system_info = hello["system_info"]

    def read(self) -> dict:
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} died (rc {self.p.wait()})")
        return json.loads(line)

    def ask(self, **msg) -> dict:
        self.p.stdin.write(json.dumps(msg) + "\n")
        self.p.stdin.flush()
        return self.read()

    def close(self) -> None:
        try:
            self.p.stdin.write('{"cmd": "quit"}\n')
            self.p.stdin.flush()
        except BrokenPipeError:
            pass
        self.p.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help="converted model directory (full size, e.g. q4_k_m)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=KEY:VAL,...",
                    help="e.g. base=ref:HEAD  head=threads:1  t2=threads:2  noreuse=reuse:0  f16=heads:float16")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--frames", type=int, default=40, help="predict() calls per round")
    ap.add_argument("--profile-frames", type=int, default=60)
    ap.add_argument("--agree-frames", type=int, default=100, help="frames compared for code agreement (0: none)")
    ap.add_argument("--json", help="write all results here")
    a = ap.parse_args()
    if a.worker:
        worker(json.loads(a.worker))
        return
    if not a.model_dir:
        ap.error("--model-dir is required")
    variants = [parse_variant(v) for v in a.variant] or [("base", {"ref": "HEAD"}), ("head", {})]
    print("command:", " ".join(shlex.quote(x) for x in [sys.executable, *sys.argv]))
    git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    print("git HEAD:", git.stdout.strip(), "| load average:", os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="bench_predictor-"))
    ws = [Worker(n, o, a.model_dir, tmp) for n, o in variants]
    print("llama.cpp system info:", ws[0].system_info)
    res: dict = {"command": sys.argv, "git": git.stdout.strip(), "system_info": ws[0].system_info,
                 "variants": {w.name: {"opts": w.opts, "rounds": []} for w in ws}}
    try:
        for w in ws:  # warm-up
            w.ask(cmd="run", frames=3, start=0, seed=1)
        for r in range(a.rounds):
            order = ws[r % len(ws):] + ws[:r % len(ws)]  # rotate who goes first
            for w in order:
                got = w.ask(cmd="run", frames=a.frames, start=r * a.frames, seed=100 + r)
                res["variants"][w.name]["rounds"].append(median(got["ms"]))
                res["variants"][w.name].setdefault("cpu_rounds", []).append(median(got["cpu_ms"]))
        print(f"\npredict() ms per frame: median over {a.rounds} interleaved rounds of the per-round medians "
              f"({a.frames} frames each)")
        print("  (cpu = the process's CPU time per frame: on a loaded machine the steadier figure for 1 thread)")
        base = cbase = None
        for w in ws:
            rs, crs = res["variants"][w.name]["rounds"], res["variants"][w.name]["cpu_rounds"]
            m, c = median(rs), median(crs)
            base, cbase = base or m, cbase or c
            res["variants"][w.name]["median_ms"] = m
            res["variants"][w.name]["median_cpu_ms"] = c
            print(f"  {w.name:>12} wall {m:7.2f} ms (x{m / base:.3f})  cpu {c:7.2f} ms (x{c / cbase:.3f} of "
                  f"{ws[0].name}; rounds {', '.join(f'{x:.1f}' for x in crs)})  {w.opts}")
        if a.agree_frames:
            print(f"\ncode agreement with {ws[0].name} over {a.agree_frames} frames (15 codes each), same seeds:")
            ref = ws[0].ask(cmd="codes", frames=a.agree_frames)
            for w in ws[1:]:
                got = w.ask(cmd="codes", frames=a.agree_frames)
                line = []
                for kind in ("greedy", "sampled"):
                    import numpy as np

                    x, y = np.array(ref["codes"][kind])[:, 1:], np.array(got["codes"][kind])[:, 1:]
                    agree = float((x == y).mean())
                    frames_eq = float((x == y).all(1).mean())
                    res["variants"][w.name][f"agree_{kind}"] = {"codes": agree, "frames": frames_eq}
                    line.append(f"{kind} {agree * 100:.2f} % of codes, {frames_eq * 100:.1f} % of frames identical")
                print(f"  {w.name:>12}: " + "; ".join(line))
        print(f"\nprofile ({a.profile_frames} frames, one pass each; ms per frame, calls per frame):")
        for w in ws:
            p = w.ask(cmd="profile", frames=a.profile_frames)
            res["variants"][w.name]["profile"] = p
            ms, calls = p["ms_per_frame"], p["calls_per_frame"]
            dec, c_call = ms.get("decode", 0) + ms.get("decode_row", 0), ms.get("llama_decode", 0)
            calls["decode"] = calls.get("decode", 0) + calls.get("decode_row", 0)
            emb = ms.get("llama_get_embeddings_ith", 0)
            heads = ms.get("_logits")
            known = dec + ms.get("sample_sub", 0) + ms.get("_feedback", ms.get("frame_embeddings", 0)) \
                + (heads or 0) + ms.get("frame_rng", 0)
            print(f"  {w.name}: total {p['total_ms_per_frame']:.2f}")
            print(f"    decode (EmbeddingLM.decode, {calls.get('decode', 0):.0f} calls) {dec:.2f}: llama_decode C "
                  f"{c_call:.2f} ({c_call / max(calls.get('llama_decode', 1), 1):.3f} per call), "
                  f"get_embeddings {emb:.3f}, Python wrapper {dec - c_call - emb:.2f}")
            print(f"    heads {'%.2f' % heads if heads is not None else '(in other)'}"
                  f" (alone: {p['heads_alone_ms_per_frame']:.2f}), sampling {ms.get('sample_sub', 0):.2f}, "
                  f"feedback {ms.get('_feedback', ms.get('frame_embeddings', 0)):.2f}, rng {ms.get('frame_rng', 0):.3f}, "
                  f"other {p['total_ms_per_frame'] - known:.2f}")
            print(f"    one 1-row decode alone {p['one_row_decode_ms']:.3f} ms (x15 = "
                  f"{15 * p['one_row_decode_ms']:.1f}); graphs reused so far: {p['graphs_reused']}")
    finally:
        for w in ws:
            w.close()
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
        print("wrote", a.json)


if __name__ == "__main__":
    main()
