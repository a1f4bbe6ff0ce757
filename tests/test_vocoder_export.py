"""The vocoder export's graph forms (scripts/export_vocoder.py, issue 15) and scripts/bench_vocoder.py.

The default export writes Conv1d as 1 x k Conv2d, SnakeBeta's square as Mul and the conv decoder's
transposed convs as polyphase pointwise convs: exact restructurings (same products, sums in another
order). Checked against the pre-session-7 form (Conv1d, Pow, ConvTranspose) on the tiny checkpoint:
the same interface and state layout, the same audio to float noise in streaming chunks, each graph's
state continuing the other's stream, and the RKNN cut points (scripts/rknn_graph.py) still exact.
Measured here (tiny, seed 1234, 120 frames): default vs old form 84-86 dB, both vs official ~90 dB
(test_vocoder.py); a wrong tap order or state costs tens of dB.
"""
from __future__ import annotations

import collections
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import onnx  # noqa: E402

from daemons.engine.vocoder import VocoderEngine  # noqa: E402
from scripts import export_vocoder as EV  # noqa: E402

FRAMES = 120  # > one 72-frame sliding window
MIN_SNR_DB = 75.0  # default vs old graph: measured 84-86 dB (float reassociation only)
OLD = {"conv2d": False, "snake": "pow", "tconv": "convtranspose"}


def snr_db(ref, x) -> float:
    ref = np.asarray(ref, dtype=np.float64).ravel()
    x = np.asarray(x, dtype=np.float64).ravel()
    err = float(np.sum((ref - x) ** 2))
    return math.inf if err == 0 else 10 * math.log10(float(np.sum(ref ** 2)) / err)


@pytest.fixture(scope="module")
def graphs(tiny_model, tiny_ckpt, tmp_path_factory):
    """(default model dir = the converted tiny model's vocoder, old-form model dir)."""
    old = tmp_path_factory.mktemp("vocoder-old")
    EV.export_vocoder(tiny_ckpt, old, verify=False, **OLD)
    return tiny_model, old


@pytest.fixture(scope="module")
def codes(graphs):
    spec = json.loads((graphs[0] / "vocoder.json").read_text())
    return np.random.default_rng(1234).integers(0, spec["codebook_size"], size=(FRAMES, spec["num_quantizers"]),
                                                dtype=np.int64)


def _ops(d: Path) -> collections.Counter:
    """Op counts of the exported graph; convolutions keyed by their spatial rank (Conv1 / Conv2)."""
    m = onnx.load(str(d / "vocoder.onnx"), load_external_data=False)
    rank = {n.name: len(next((a.ints for a in n.attribute if a.name == "kernel_shape"), [])) for n in m.graph.node}
    prod = {o: n.op_type for n in m.graph.node for o in n.output}
    c = collections.Counter(n.op_type + (str(rank[n.name]) if "Conv" in n.op_type else "") for n in m.graph.node)
    c["square_of_sin"] = sum(n.op_type == "Pow" and prod.get(n.input[0]) == "Sin" for n in m.graph.node)
    return c


def test_default_graph_form(graphs):
    new, old = graphs
    spec = json.loads((new / "vocoder.json").read_text())
    assert spec["graph"] == {"conv2d": EV.CONV2D_DEFAULT, "snake": EV.SNAKE_DEFAULT, "tconv": EV.TCONV_DEFAULT}
    n, o = _ops(new), _ops(old)
    assert o["Conv2"] == 0 and o["Conv1"] > 0 and n["Sin"] == o["Sin"] > 0
    n_tconv = len(spec["decoder_config"]["upsample_rates"])  # the conv decoder's overlapping transposed convs
    if EV.CONV2D_DEFAULT:
        assert n["Conv1"] == 0 and n["Conv2"] >= o["Conv1"]
    if EV.SNAKE_DEFAULT == "mul":
        assert o["square_of_sin"] > 20 and n["square_of_sin"] == 0  # every SnakeBeta square is a Mul
    if EV.TCONV_DEFAULT == "polyphase":
        assert n["ConvTranspose1"] == o["ConvTranspose1"] - n_tconv  # the upsampling ones (kernel == stride) stay
    # the interface is the same: an old vocoder.json describes the new model and vice versa
    old_spec = json.loads((old / "vocoder.json").read_text())
    for k in ("states", "inputs", "outputs", "samples_per_frame", "state_bytes"):
        assert spec[k] == old_spec[k], k


@pytest.mark.parametrize("chunks", [(4,), (1, 3, 4, 7)])
def test_default_graph_streams_like_the_old_one(graphs, codes, chunks):
    new, old = (VocoderEngine(d, threads=1) for d in graphs)
    ref = old.decode_all(codes)
    s, outs, n, i = new.new_stream(), [], 0, 0
    while n < len(codes):
        c = chunks[i % len(chunks)]
        outs.append(s.decode(codes[n:n + c]))
        n, i = n + c, i + 1
    got = np.concatenate(outs)
    assert got.shape == ref.shape == (FRAMES * new.samples_per_frame,)
    assert float(np.sqrt(np.mean(ref.astype(np.float64) ** 2))) > 0.05  # not silence: the SNR means something
    assert snr_db(ref, got) >= MIN_SNR_DB


def test_states_are_interchangeable(graphs, codes):
    """The state tensors mean the same in both forms (polyphase keeps the ConvTranspose overlap tail)."""
    new, old = (VocoderEngine(d, threads=1) for d in graphs)
    ref = old.decode_all(codes)
    a = old.new_stream()
    head = a.decode(codes[:50])
    b = new.new_stream()
    b.set_state(a.get_state())
    got = np.concatenate([head, b.decode(codes[50:])])
    assert snr_db(ref, got) >= MIN_SNR_DB
    # negative control: the same hand-over without the state is a seam
    c = new.new_stream()
    assert snr_db(ref, np.concatenate([head, c.decode(codes[50:])])) < 20


@pytest.mark.parametrize("at", ["dac", "upsample"])
def test_rknn_cut_points_stay_exact(graphs, codes, at, tmp_path):
    """scripts/rknn_graph.py cuts the default graph at both split points; head + tail == vocoder.onnx."""
    from scripts import rknn_graph as G

    d = graphs[0]
    spec = json.loads((d / "vocoder.json").read_text())
    head, tail, info = G.split_vocoder(G.load_model(d / "vocoder.onnx"), spec, at)
    assert info["latent_shape_per_frame"][0] == 1 and len(info["latent_shape_per_frame"]) == 3
    import onnxruntime as ort

    hs = ort.InferenceSession(head.SerializeToString(), providers=["CPUExecutionProvider"])
    ts = ort.InferenceSession(tail.SerializeToString(), providers=["CPUExecutionProvider"])
    full = VocoderEngine(d, threads=1)
    st = {s["name"]: np.zeros(s["shape"], s["dtype"]) for s in spec["states"]}
    outs = []
    for n in range(0, 12, 4):
        h = hs.run(None, {"codes": codes[n:n + 4], **{"state_in_" + k: st[k] for k in info["head_states"]}})
        t = ts.run(None, {G.LATENT: h[0], **{"state_in_" + k: st[k] for k in info["tail_states"]}})
        st.update(zip(info["head_states"], h[1:]))
        st.update(zip(info["tail_states"], t[1:]))
        outs.append(t[0].reshape(-1))
    np.testing.assert_array_equal(np.concatenate(outs), full.decode_all(codes[:12]))


def test_bad_graph_options_are_clear_errors(tiny_ckpt, tmp_path):
    with pytest.raises(ValueError, match="snake must be one of"):
        EV.export_vocoder(tiny_ckpt, tmp_path, snake="cos", verify=False)
    with pytest.raises(ValueError, match="tconv must be one of"):
        EV.export_vocoder(tiny_ckpt, tmp_path, tconv="fft", verify=False)


def test_bench_vocoder_runs_and_reports(tiny_model, tmp_path):
    """The bench as a board runs it (a converted model, no torch): session variants, JSON with wall and CPU
    timings, SNR against the first variant, the optimised graph's kernels."""
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_vocoder.py"), "--model-dir", str(tiny_model),
                        "--work", str(tmp_path / "w"), "--variants", "model,nomempat,offline", "--frames", "8",
                        "--rounds", "2", "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["reference"] == "model" and res["info"]["onnxruntime"] and res["info"]["cpu"]
    v = res["variants"]
    assert set(v) == {"model", "nomempat", "offline"}
    assert v["model"]["snr_db"] == math.inf  # the reference itself
    assert v["nomempat"]["snr_db"] >= MIN_SNR_DB and v["offline"]["snr_db"] >= MIN_SNR_DB
    assert v["model"]["kernels"].get("NchwcConv", 0) > 0  # the default graph's convs take onnxruntime's NCHWc path
    assert all(x["cpu_ms_per_frame"] > 0 and x["ms_per_frame"] > 0 and len(x["per_round"]) == 2 for x in v.values())
    assert "wall ms" in r.stdout and "nomempat" in r.stdout
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_vocoder.py"), "--model-dir", str(tiny_model),
                          "--variants", "c1-pow"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 2 and "only session variants apply" in bad.stderr
