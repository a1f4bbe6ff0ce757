"""q4_0 / q8_0 matvec throughput in ggml (daemons.engine.ggml_heads) vs working-set size, one thread, CPU time:
shows whether the predictor's decodes are bound by the dot kernel or by memory. Usage: python scripts/bench_matvec.py"""
import sys
import time
from pathlib import Path

import numpy as np

import llama_cpp as L

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from daemons.engine.ggml_heads import GgmlHeads
print(L.llama_print_system_info().decode())
rng = np.random.default_rng(0)
h = rng.standard_normal(1024).astype(np.float32)
for wt in ("q4_0", "q8_0"):
    for g, v in ((1, 512), (4, 2048), (12, 2048), (40, 2048), (80, 2048)):
        W = (rng.standard_normal((g, v, 1024)) * 0.02).astype(np.float32)
        gh = GgmlHeads(W, wt); del W
        for j in range(g): gh.logits(j, h)
        reps = max(1, 400 // g)
        res = []
        for r in range(5):
            c = time.process_time()
            for _ in range(reps):
                for j in range(g): gh.logits(j, h)
            res.append((time.process_time() - c) / (reps * g))
        t = np.median(res)
        print(f"{wt} working set {gh.nbytes/1e6:7.1f} MB: {t*1e6:8.1f} us per {v}x1024 matvec, "
              f"{gh.nbytes/g/t/1e9:5.1f} GB/s, {v*1024/t/1e9:5.1f} GMAC/s")
        gh.close()
# plain streaming read bandwidth, one thread
a = np.ones(128 * 2**20, dtype=np.float32)  # 537 MB, far past the L3
res = []
for r in range(5):
    c = time.process_time(); a.sum(); res.append(time.process_time() - c)
print(f"numpy sum over {a.nbytes/1e6:.0f} MB: {a.nbytes/np.median(res)/1e9:.1f} GB/s")
