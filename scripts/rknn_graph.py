"""ONNX graph surgery for the RKNN vocoder (used by scripts/convert_rknn.py; onnx + onnxruntime, no rknn).

`split_vocoder()` cuts the stateful streaming `vocoder.onnx` (scripts/export_vocoder.py) into

  head  codes + head states -> latent + head states   onnxruntime FP32 on the CPU (dynamic N)
  tail  latent + tail states -> wav + tail states      the RKNN model on the NPU (fixed chunk)

at one of two tensors:

  "dac"       after the two upsampling ConvNeXt stages: the 50 Hz latent [1, C, 4N] that enters the
              conv decoder (head = RVQ + pre_conv + transformer + upsampling; tail = the SnakeBeta/conv
              DAC stack, ~90 % of the vocoder's FLOPs at full size)
  "upsample"  after the transformer: the 12.5 Hz latent [1, C, N] (the upsampling runs on the NPU too)

Why (measured, docs/RKNN.md): everything that depends on the stream position (RoPE angles
pos * inv_freq, the sliding-window mask, the KV cache) cannot be calibrated for int16/int8 and loses
precision in float16 as the position grows, and the transformer's float16 error is amplified ~30 dB by
the DAC stack. The head is ~1-10 % of the vocoder's FLOPs, so it stays FP32 on the CPU.

Both parts are taken from the original graph node for node: head followed by tail computes exactly
what `vocoder.onnx` computes (`check_split` measures it on onnxruntime). The default `vocoder.onnx` is
never modified.

`square_by_mul()` rewrites Pow(x, 2) (SnakeBeta's sin^2, the norms' x^2) as Mul(x, x): bit-identical in
fp32, and rknn-toolkit2 keeps Mul on the NPU where an int16 Pow falls back to the CPU (29 CPU ops less
per chunk in the tiny model's conv decoder).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

SPLIT_POINTS = ("dac", "upsample")
LATENT = "latent"  # the cut tensor's name in both parts


def load_model(path: str | Path):
    import onnx

    return onnx.load(str(path), load_external_data=True)


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for n in graph.node:
        for x in n.input:
            out.setdefault(x, []).append(n)
    return out


def find_cut(model, at: str, state_input_prefix: str = "state_in_") -> str:
    """Name of the tensor where the graph is cut (see the module docstring)."""
    g = model.graph
    if at == "dac":
        # the decoder's entry conv concatenates its left context (state dac_entry) with the latent
        name = state_input_prefix + "dac_entry"
        cats = [n for n in _consumers(g).get(name, []) if n.op_type == "Concat"]
        if len(cats) != 1 or len(cats[0].input) != 2:
            raise ValueError(f"cannot find the decoder entry (Concat of {name}) in the graph")
        return next(x for x in cats[0].input if x != name)
    if at == "upsample":
        tconv = next((n for n in g.node if n.op_type == "ConvTranspose"), None)
        if tconv is None:
            raise ValueError("no ConvTranspose (upsampling) in the graph")
        return tconv.input[0]
    raise ValueError(f"split point must be one of {SPLIT_POINTS}, got {at!r}")


def _ancestors(graph, tensor: str) -> set[str]:
    prod = {o: n for n in graph.node for o in n.output}
    seen, todo = set(), [tensor]
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        n = prod.get(t)
        if n is not None:
            todo.extend(x for x in n.input if x)
    return seen


def _rename(model, old: str, new: str) -> None:
    g = model.graph
    for n in g.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
        for i, x in enumerate(n.output):
            if x == old:
                n.output[i] = new
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.name == old:
            vi.name = new


def _extract(model, inputs: list[str], outputs: list[str], value_infos: dict, name: str):
    """The sub-model computing `outputs` from `inputs` (+ initializers): the original nodes, in order."""
    import onnx
    from onnx import helper

    g = model.graph
    prod = {o: i for i, n in enumerate(g.node) for o in n.output}
    stop = set(inputs)
    keep, todo, seen = set(), list(outputs), set()
    while todo:
        t = todo.pop()
        if t in seen or t in stop:
            continue
        seen.add(t)
        i = prod.get(t)
        if i is not None and i not in keep:
            keep.add(i)
            todo.extend(x for x in g.node[i].input if x)
    nodes = [g.node[i] for i in sorted(keep)]
    used = {x for n in nodes for x in n.input}
    inits = [t for t in g.initializer if t.name in used]
    have = stop | {t.name for t in inits} | {o for n in nodes for o in n.output}
    missing = sorted(used - have - {""})
    if missing:
        raise ValueError(f"{name}: the cut is not clean, the part also needs {missing[:5]}")
    gin = {v.name: v for v in g.input}
    gout = {v.name: v for v in g.output}
    graph = helper.make_graph(nodes, name, [gin.get(x) or value_infos[x] for x in inputs],
                              [gout.get(x) or value_infos[x] for x in outputs], inits)
    part = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version,
                             producer_name="qwen3-tts scripts/rknn_graph.py")
    onnx.checker.check_model(part)
    return part


def _probe(model, spec: dict, tensor: str) -> tuple:
    """(shape, elem_type) of `tensor` for a 1-frame chunk (onnxruntime on the original graph)."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.append(helper.make_tensor_value_info(tensor, TensorProto.FLOAT, None))
    feeds = {"codes": np.zeros((1, int(spec["num_quantizers"])), dtype=np.int64)}
    pin = spec.get("state_input_prefix", "state_in_")
    feeds.update({pin + s["name"]: np.zeros(s["shape"], dtype=s["dtype"]) for s in spec["states"]})
    a = _session(m).run([tensor], feeds)[0]
    if a.dtype != np.float32:
        raise ValueError(f"cut tensor {tensor} is {a.dtype}, expected float32")
    return a.shape, onnx.TensorProto.FLOAT


def split_vocoder(model, spec: dict, at: str = "dac"):
    """(head, tail, info) ModelProtos cut from `model` (the loaded vocoder.onnx) at `at`.
    info: {"at", "cut_tensor", "latent", "latent_shape_per_frame", "head_states", "tail_states"}
    (state names in spec order; latent_shape_per_frame = [1, C, frames of the latent per codec frame])."""
    from onnx import helper

    pin = spec.get("state_input_prefix", "state_in_")
    pout = spec.get("state_output_prefix", "state_out_")
    states = [s["name"] for s in spec["states"]]
    g = model.graph
    cut = find_cut(model, at, pin)
    anc = _ancestors(g, cut)
    head_states = [s for s in states if pin + s in anc]
    tail_states = [s for s in states if s not in head_states]
    if "codes" not in anc or not head_states:
        raise ValueError(f"unexpected graph: the cut tensor {cut} does not depend on the codes")
    shape, et = _probe(model, spec, cut)
    if len(shape) != 3 or shape[0] != 1:
        raise ValueError(f"cut tensor {cut} has shape {shape}, expected [1, C, T]")
    vi = {cut: helper.make_tensor_value_info(cut, et, [1, int(shape[1]), "T"])}
    head = _extract(model, ["codes"] + [pin + s for s in head_states], [cut] + [pout + s for s in head_states],
                    vi, "vocoder_head")
    tail = _extract(model, [cut] + [pin + s for s in tail_states], ["wav"] + [pout + s for s in tail_states],
                    vi, "vocoder_tail")
    _rename(head, cut, LATENT)
    _rename(tail, cut, LATENT)
    return head, tail, {"at": at, "cut_tensor": cut, "latent": LATENT,
                        "latent_shape_per_frame": [1, int(shape[1]), int(shape[2])],
                        "head_states": head_states, "tail_states": tail_states}


def _const_value(model, name: str):
    from onnx import numpy_helper

    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def square_by_mul(model) -> int:
    """Pow(x, c) with a constant c == 2 -> Mul(x, x), in place; returns how many were rewritten.
    Exact: IEEE x*x is the correctly rounded square, which is what Pow(x, 2) computes."""
    from onnx import helper

    g = model.graph
    n_done = 0
    for i, n in enumerate(list(g.node)):
        if n.op_type != "Pow" or len(n.input) != 2:
            continue
        c = _const_value(model, n.input[1])
        if c is None or c.size != 1 or float(c.reshape(-1)[0]) != 2.0:
            continue
        g.node.remove(n)
        sq = helper.make_node("Mul", [n.input[0], n.input[0]], list(n.output), name=(n.name or "pow") + "_sq")
        g.node.insert(i, sq)
        n_done += 1
    used = {x for n in g.node for x in n.input}
    for n in list(g.node):  # drop Constant nodes nothing reads any more (the exponents)
        if n.op_type == "Constant" and n.output[0] not in used:
            g.node.remove(n)
    return n_done


def _snr_db(ref, x) -> float:
    ref = np.asarray(ref, dtype=np.float64).ravel()
    x = np.asarray(x, dtype=np.float64).ravel()
    err = float(np.sum((ref - x) ** 2))
    return float("inf") if err == 0 else 10 * math.log10(float(np.sum(ref ** 2)) / err)


def _session(model_or_path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    src = model_or_path if isinstance(model_or_path, (str, Path)) else model_or_path.SerializeToString()
    return ort.InferenceSession(str(src) if isinstance(src, Path) else src, so, providers=["CPUExecutionProvider"])


def check_split(onnx_path: str | Path, spec: dict, head, tail, info: dict, *, chunks=(4, 4, 3, 4),
                seed: int = 0) -> dict:
    """head -> tail vs the original vocoder.onnx on onnxruntime FP32, a few chunks of random codes
    (closed loop). Returns {"snr_db_wav", "snr_db_states_min", "max_abs_diff"}; an exact split gives
    inf / 0.0 (the same nodes in the same order)."""
    pin = spec.get("state_input_prefix", "state_in_")
    pout = spec.get("state_output_prefix", "state_out_")
    names = [s["name"] for s in spec["states"]]
    full, sh, st = _session(Path(onnx_path)), _session(head), _session(tail)
    rng = np.random.default_rng(seed)
    s_ref = {s["name"]: np.zeros(s["shape"], dtype=s["dtype"]) for s in spec["states"]}
    s_new = dict(s_ref)
    wr, wn, worst = [], [], float("inf")
    for n in chunks:
        codes = rng.integers(0, int(spec["codebook_size"]), (n, int(spec["num_quantizers"])), dtype=np.int64)
        o = full.run(["wav"] + [pout + k for k in names], {"codes": codes, **{pin + k: v for k, v in s_ref.items()}})
        wr.append(o[0].ravel())
        s_ref = dict(zip(names, o[1:]))
        h = sh.run([LATENT] + [pout + k for k in info["head_states"]],
                   {"codes": codes, **{pin + k: s_new[k] for k in info["head_states"]}})
        t = st.run(["wav"] + [pout + k for k in info["tail_states"]],
                   {LATENT: h[0], **{pin + k: s_new[k] for k in info["tail_states"]}})
        wn.append(t[0].ravel())
        s_new.update(zip(info["head_states"], h[1:]))
        s_new.update(zip(info["tail_states"], t[1:]))
        for k in names:
            if s_ref[k].dtype.kind == "f" and np.any(s_ref[k]):
                worst = min(worst, _snr_db(s_ref[k], s_new[k]))
            elif not np.array_equal(s_ref[k], s_new[k]):
                worst = min(worst, _snr_db(s_ref[k], s_new[k]))
    a, b = np.concatenate(wr), np.concatenate(wn)
    return {"snr_db_wav": _snr_db(a, b), "snr_db_states_min": worst,
            "max_abs_diff": float(np.max(np.abs(a.astype(np.float64) - b)))}
