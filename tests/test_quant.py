"""Quantized conversions load, synthesize and stay close to f32 on the same weights.

Free-running greedy codes cannot measure closeness: one flipped code changes every later frame (q8_0 already
differs in frame 0 on the tiny model). So closeness is measured *teacher-forced*: the quantized talker and
code predictor are fed exactly the rows and codes of the f32 model's greedy run, and their logits are compared
with f32's, step by step (talker: the 33 code-0 candidates incl. EOS; predictor: the 15 heads):
SNR of the logits in dB and the fraction of steps whose argmax agrees. f16 is asserted to give the very same
greedy codes as f32.

Block sizes: llama.cpp's K-quants (Q4_K, Q6_K) need rows that are a multiple of 256. The tiny test model's
rows are 64/128 wide, so its "q4_k_m" is in fact llama.cpp's fallback (Q5_0, Q8_0 for the Q6_K tensors);
this is asserted, and the real K-quant kernels of the shipped default are checked on a second checkpoint,
the same tiny depth with 256-wide talker/predictor rows (256 hidden, 512 ffn), where every block fits.

Floors sit just under the figures measured here (x86_64, llama.cpp CPU, 2 threads), quoted per bound."""
from __future__ import annotations

import json

import numpy as np
import pytest

from daemons.engine.prompt import frame_embeddings
from daemons.engine.synth import Synthesizer

FRAMES = 40
TEXT = "Hello, this is a test of the text to speech system."
FORCED = [(TEXT, "english"), ("你好，这是一个语音合成系统的测试。", "chinese")]

# (talker logit SNR dB, predictor logit SNR dB, talker argmax agreement, predictor argmax agreement), worst
# of the two FORCED texts. Measured: english / chinese.
FLOORS = {
    # talker 62.4 / 63.4 dB, predictor 60.4 / 60.7 dB, argmax 100 % / 100 %
    "f16": (60.0, 58.0, 1.0, 1.0),
    # talker 32.6 / 32.8 dB, predictor 28.9 / 29.1 dB, argmax talker 97.5 / 100 %, predictor 97.3 / 96.5 %
    "q8_0": (31.5, 28.0, 0.95, 0.95),
    # tiny model = fallback Q5_0/Q8_0: talker 18.1 / 18.8 dB, predictor 14.2 / 14.7 dB,
    # argmax talker 77.5 / 87.5 %, predictor 77.0 / 80.7 %
    "q4_k_m": (17.0, 13.5, 0.75, 0.75),
}
# 256-wide checkpoint, real Q4_K/Q6_K: measured talker 13.5 / 14.3 dB, predictor 10.2 / 10.3 dB,
# argmax talker 70.0 / 85.0 %, predictor 68.2 / 69.5 % (4-bit blocks on Gaussian random weights lose more
# than the tiny model's 5-bit fallback; the floor is what the shipped kernels give, not a wish)
KQ_FLOORS = (13.0, 9.7, 0.65, 0.66)


def greedy(s: Synthesizer, text: str = TEXT, language: str = "english") -> np.ndarray:
    p = s.sampling(do_sample=False, sub_do_sample=False)
    return np.stack(list(s.frames(text, language, params=p, max_frames=FRAMES)))


def gguf_types(path) -> dict[str, str]:
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def layer_matrix_types(md) -> set[str]:
    """Types of the 2-D layer weights (blk.*, not the norms) of both GGUFs."""
    out = set()
    for f in ("talker.gguf", "predictor.gguf"):
        out |= {t for n, t in gguf_types(md / f).items() if n.startswith("blk.") and not n.endswith("norm.weight")}
    return out


def _predictor_logits(s: Synthesizer, hidden: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """The 15 head logits of the code predictor for one frame, fed the given codes (teacher-forced; the same
    decodes PredictorEngine.predict runs, with its sampled codes replaced by `codes`)."""
    pe = s.predictor
    pe.lm.reset()
    h, _ = pe.lm.decode(pe._in(np.stack([hidden, pe.codec[codes[0]]])), want_logits=False)
    out = []
    for j in range(len(codes) - 1):
        out.append(np.array(pe._logits(j, h)))
        if j < len(codes) - 2:
            h, _ = pe.lm.decode(pe._in(pe.tables[j][codes[j + 1]]), want_logits=False)
    return np.stack(out)


def forced_logits(s: Synthesizer, text: str, language: str, codes: np.ndarray):
    """Talker logits over the code-0 candidates (+EOS) and predictor logits at every frame of `codes`, each
    model fed its own prompt rows and the feedback of `codes` (the teacher's)."""
    p = s.prompts.build(text, language)
    fb = frame_embeddings(s.md.codec_embedding, s.md.predictor_embeddings, codes)
    vocab, eos = s.md.talker["codec_vocab"], s.md.special["codec_eos"]
    cand = np.r_[np.arange(vocab - 1024), eos]
    hidden, logits = s.talker.prefill(p.prefill, p.n_fixed)
    talker, pred = [], []
    for i in range(len(codes)):
        talker.append(np.asarray(logits, np.float64)[cand])
        pred.append(_predictor_logits(s, hidden, codes[i]))
        hidden, logits = s.talker.step(fb[i] + p.text_row(i))
    return np.stack(talker), np.stack(pred).astype(np.float64)


def _snr(ref, x) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum((ref - x) ** 2), 1e-300)))


def closeness(s: Synthesizer, ref: Synthesizer) -> dict:
    """Teacher-forced figures of `s` against `ref` (worst over FORCED), and the f32 greedy codes."""
    worst = dict(talker_snr=np.inf, pred_snr=np.inf, talker_top1=1.0, pred_top1=1.0)
    for text, lang in FORCED:
        codes = greedy(ref, text, lang)
        assert len(codes) == FRAMES, "the f32 run ended early: teacher-forcing would compare too few steps"
        rt, rp = forced_logits(ref, text, lang, codes)
        # self-check of the teacher-forced predictor path: on the f32 model's own run it gives its greedy codes
        assert (rp.argmax(-1) == codes[:, 1:]).all()
        qt, qp = forced_logits(s, text, lang, codes)
        fig = dict(talker_snr=_snr(rt, qt), pred_snr=_snr(rp, qp),
                   talker_top1=float(np.mean(rt.argmax(-1) == qt.argmax(-1))),
                   pred_top1=float(np.mean(rp.argmax(-1) == qp.argmax(-1))))
        print(f"  {lang}: talker {fig['talker_snr']:.1f} dB / argmax {fig['talker_top1']:.1%}, "
              f"predictor {fig['pred_snr']:.1f} dB / argmax {fig['pred_top1']:.1%}")
        worst = {k: min(worst[k], v) for k, v in fig.items()}
    return worst


def assert_floors(fig: dict, floors: tuple, what: str) -> None:
    names = ("talker_snr", "pred_snr", "talker_top1", "pred_top1")
    low = {n: (round(fig[n], 3), f) for n, f in zip(names, floors) if not fig[n] >= f}
    assert not low, f"{what}: below the floor (measured, floor): {low}"


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_k_m"])
def test_quantized_model_synthesizes(quant, tiny_ckpt, synth, tmp_path, record_property):
    from scripts.convert import convert

    md = convert(tiny_ckpt, tmp_path / quant, quant, log=lambda *_: None)
    manifest = json.loads((md / "manifest.json").read_text())
    assert manifest["quant"] == quant
    types = layer_matrix_types(md)
    if quant == "f16":  # the predictor's ffn_down input exceeds the f16 range on the released weights
        pred = gguf_types(md / "predictor.gguf")
        assert pred["blk.0.ffn_down.weight"] == "F32" and pred["blk.0.ffn_up.weight"] == "F16"
        assert types == {"F16", "F32"}
    elif quant == "q8_0":
        assert types == {"Q8_0"}, types
    else:  # rows of 64/128 do not fit QK_K = 256: llama.cpp falls back (Q4_K -> Q5_0, Q6_K -> Q8_0)
        assert types == {"Q5_0", "Q8_0"}, types
    s = Synthesizer(md, threads=2)
    try:
        codes = greedy(s)
        ref = greedy(synth)
        cb = s.md.predictor["codebook_size"]
        assert codes.shape == (FRAMES, 16) and codes.min() >= 0 and codes.max() < cb
        agree_c0 = float(np.mean(codes[:, 0] == ref[:, 0]))
        agree_all = float(np.mean(codes == ref))
        first = int(np.argmax(np.any(codes != ref, axis=1))) if np.any(codes != ref) else FRAMES
        record_property(f"{quant}_agreement", dict(code0=agree_c0, all=agree_all, first_diverging_frame=first))
        print(f"\n[{quant}] free-running greedy agreement with f32 over {FRAMES} frames: code0 {agree_c0:.1%}, "
              f"all codes {agree_all:.1%}, first diverging frame {first}; teacher-forced:")
        if quant == "f16":  # measured: identical over all 40 frames
            assert first == FRAMES, f"f16 greedy codes differ from f32 from frame {first}"
        fig = closeness(s, synth)
        record_property(f"{quant}_teacher_forced", fig)
        assert_floors(fig, FLOORS[quant], quant)
        codes2, wav, gen = s.synthesize(TEXT, "english", params=s.sampling(seed=3), max_frames=8)
        assert wav.shape == (len(codes2) * 1920,) and np.isfinite(wav).all()
    finally:
        s.close()


@pytest.fixture(scope="module")
def wide_ckpt(tmp_path_factory):
    """The tiny checkpoint's structure and depth with 256-wide talker/predictor rows (hidden 256, ffn 512,
    head_dim 64; x-vector 256), so that every llama.cpp quant block fits. Built with make_checkpoint by
    widening its tiny configuration for this fixture only."""
    import scripts.make_checkpoint as mc

    base = mc.tiny_configs

    def wide():
        cfg, st = base()
        t = cfg["talker_config"]
        t.update(hidden_size=256, intermediate_size=512, head_dim=64,
                 rope_scaling={**t["rope_scaling"], "mrope_section": [16, 8, 8]})  # sums to head_dim / 2
        t["code_predictor_config"].update(hidden_size=256, intermediate_size=512, head_dim=64)
        cfg["speaker_encoder_config"]["enc_dim"] = 256
        return cfg, st

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mc, "tiny_configs", wide)
        return mc.make_checkpoint(tmp_path_factory.mktemp("ckpt") / "wide", "tiny", seed=1234)


def test_k_quants_where_blocks_fit(wide_ckpt, tmp_path, record_property):
    """q4_k_m (the shipped default) with real Q4_K/Q6_K tensors stays above its floor against f32."""
    from scripts.convert import convert

    ref = Synthesizer(convert(wide_ckpt, tmp_path / "f32", "f32", log=lambda *_: None), threads=2)
    md = convert(wide_ckpt, tmp_path / "q4_k_m", "q4_k_m", log=lambda *_: None)
    assert ref.md.talker["hidden_size"] == 256 and ref.md.predictor["hidden_size"] == 256
    types = layer_matrix_types(md)
    assert types == {"Q4_K", "Q6_K"}, types  # no fallback: the K-quant kernels are what is measured
    s = Synthesizer(md, threads=2)
    try:
        print("\n[q4_k_m, 256-wide] teacher-forced:")
        fig = closeness(s, ref)
        record_property("q4_k_m_wide_teacher_forced", fig)
        assert_floors(fig, KQ_FLOORS, "q4_k_m (256-wide, Q4_K/Q6_K)")
        codes, wav, _ = s.synthesize(TEXT, "english", params=s.sampling(seed=3), max_frames=8)
        assert wav.shape == (len(codes) * 1920,) and np.isfinite(wav).all()
    finally:
        s.close()
        ref.close()
