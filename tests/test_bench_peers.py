"""The pure parts of scripts/bench_peers.py (log parsing, per-frame normalisation, medians, the table) and of
scripts/peers/qwentts_convert.py (checkpoint -> GGUF names and storage types). No peer is installed or run."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts import bench_peers as bp  # noqa: E402


def _load_converter():
    spec = importlib.util.spec_from_file_location("qwentts_convert", ROOT / "scripts" / "peers" / "qwentts_convert.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


QWENTTS_LOG = """[Pipeline] Latent speaker embedding: 1024 values
[Prompt] Built: 34 ids, N_text=26, N_instruct=0, T_ctx=37, hidden=1024, lang=english (id=2050)
[Pipeline] Generated 8 frames (slot 0)
[Pipeline] EOS at step 41, stopping (slot 0)
[Pipeline] Generation done : 41 frames
[Perf] PromptBuild 113.4 ms
[Perf] Prefill 3668.6 ms (T_ctx prefill)
[Perf] TTFA 4493.0 ms (first frame codes)
[Perf] TalkerDecode 4100.0 ms (41 frames, 100.00 ms/frame)
[Perf] CodePredictor 2050.0 ms (50.00 ms/frame)
[Perf] HostCompose 41.0 ms (c0 sample + next emb)
[Perf] CodecDecode 1230.0 ms
[Perf] Total 11200.0 ms (41 frames, 150.00 ms/frame AR, audio 3.28 s, RTF 3.415)""".splitlines()


def test_parse_qwentts_perf():
    p = bp.parse_qwentts_perf(QWENTTS_LOG)
    assert p["talker_ms"] == 4100.0 and p["predictor_ms"] == 2050.0 and p["codec_ms"] == 1230.0
    assert p["prefill_ms"] == 3668.6 and p["first_codes_ms"] == 4493.0 and p["host_ms"] == 41.0
    assert p["frames"] == 41 and p["frames_done"] == 41 and p["eos_step"] == 41
    assert bp.parse_qwentts_perf(["nothing here"]) == {}


def test_normalise_qwentts_run_per_frame():
    # 41 frames of audio (EOS before the 100 asked for): figures are per produced frame
    run = {"wall_s": 12.3, "ttfa_s": 4.5, "samples": 41 * 1920, "log": QWENTTS_LOG}
    r = bp.normalise_run("qwentts", run)
    assert r["frames"] == 41 and r["engine_frames"] == 41
    assert r["audio_s"] == pytest.approx(3.28)
    assert r["rtf"] == pytest.approx(12.3 / 3.28)
    assert r["ttfa_ms"] == pytest.approx(4500.0)
    assert r["talker_ms_per_frame"] == pytest.approx((4100.0 + 41.0) / 41)  # host compose counted in the talker
    assert r["predictor_ms_per_frame"] == pytest.approx(50.0)
    assert r["gen_ms_per_frame"] == pytest.approx((4100.0 + 41.0 + 2050.0) / 41)
    assert r["vocoder_ms_per_frame"] == pytest.approx(30.0)
    assert r["prefill_ms"] == 3668.6 and r["eos_step"] == 41


def test_vox_stage_delta_and_normalise():
    before = {"frames": 8, "seconds": {"talker": 0.5, "predictor": 1.0, "codec": 0.4, "prefill": 0.2}}
    after = {"frames": 108, "seconds": {"talker": 6.5, "predictor": 21.0, "codec": 10.4, "prefill": 0.45}}
    d = bp.vox_stage_delta(before, after)
    assert d["frames"] == 100
    assert d["talker"] == pytest.approx(6.0) and d["predictor"] == pytest.approx(20.0)
    assert d["codec"] == pytest.approx(10.0) and d["prefill"] == pytest.approx(0.25)
    r = bp.normalise_run("vox", {"wall_s": 40.0, "ttfa_s": 1.2, "samples": 100 * 1920,
                                 "stats_before": before, "stats_after": after})
    assert r["frames"] == 100 and r["rtf"] == pytest.approx(40.0 / 8.0)
    assert r["talker_ms_per_frame"] == pytest.approx(60.0) and r["predictor_ms_per_frame"] == pytest.approx(200.0)
    assert r["gen_ms_per_frame"] == pytest.approx(260.0) and r["vocoder_ms_per_frame"] == pytest.approx(100.0)
    assert r["prefill_ms"] == pytest.approx(250.0) and r["wall_ms_per_frame"] == pytest.approx(400.0)


def test_no_audio_gives_no_rtf():
    r = bp.normalise_run("vox", {"wall_s": 1.0, "ttfa_s": None, "samples": 0, "stats_before": {}, "stats_after": {}})
    assert r["rtf"] is None and r["ttfa_ms"] is None and r["frames"] == 0


def test_summarise_runs_medians():
    runs = [{"rtf": 3.0, "ttfa_ms": 900.0, "frames": 100}, {"rtf": 1.0, "ttfa_ms": 700.0, "frames": 100},
            {"rtf": 2.0, "ttfa_ms": None, "frames": 90}]
    s = bp.summarise_runs(runs)
    assert s["rtf"] == 2.0 and s["ttfa_ms"] == 800.0 and s["frames"] == 100
    assert s["rtf_per_run"] == [3.0, 1.0, 2.0] and s["gen_ms_per_frame"] is None


def test_kernel_lines_and_table():
    text = "noise\n[Load] Talker backend: CPU (CPU threads: 2)\nmode balanced, 2 CPU thread(s)\n" \
           "[Load] Talker backend: CPU (CPU threads: 2)\nrandom line\n"
    assert bp.kernel_lines(text) == ["[Load] Talker backend: CPU (CPU threads: 2)", "mode balanced, 2 CPU thread(s)"]
    t = bp.format_table({"a-peer": {"rtf": 2.5, "ttfa_ms": 812.4, "gen_ms_per_frame": 150.0, "peak_rss_mb": 900,
                                    "threads": 2, "frames": 100, "version": "1.0"},
                         "other": {"skipped": "needs a hub"}})
    lines = t.splitlines()
    assert lines[0].startswith("peer") and "RTF(w/a)" in lines[0]
    assert "2.500" in lines[2] and "812" in lines[2] and "150.0" in lines[2] and lines[2].rstrip().endswith("1.0")
    assert lines[3].startswith("other") and "skipped: needs a hub" in lines[3]


def test_every_peer_is_runnable_or_skipped_with_a_reason():
    for name, spec in bp.PEERS.items():
        assert ("skipped" in spec and spec["skipped"].strip()) or {"pip", "import", "engine"} <= set(spec), name


CKPT_TO_GGUF = {
    "talker.model.layers.3.self_attn.q_proj.weight": "talker.blk.3.attn_q.weight",
    "talker.model.layers.27.mlp.down_proj.weight": "talker.blk.27.ffn_down.weight",
    "talker.model.layers.0.self_attn.k_norm.weight": "talker.blk.0.attn_k_norm.weight",
    "talker.code_predictor.model.layers.4.post_attention_layernorm.weight": "code_pred.blk.4.ffn_norm.weight",
    "talker.code_predictor.lm_head.14.weight": "code_pred.lm_head.14.weight",
    "talker.code_predictor.model.codec_embedding.0.weight": "code_pred.codec_embd.0.weight",
    "talker.model.text_embedding.weight": "talker.text_embd.weight",
    "talker.text_projection.linear_fc2.bias": "talker.text_proj.fc2.bias",
    "speaker_encoder.blocks.0.conv.weight": "spk_enc.conv0.weight",
    "speaker_encoder.blocks.2.res2net_block.blocks.6.conv.bias": "spk_enc.blk.2.res2net.6.bias",
    "speaker_encoder.blocks.3.se_block.conv2.weight": "spk_enc.blk.3.se.conv2.weight",
    "speaker_encoder.blocks.1.tdnn2.conv.weight": "spk_enc.blk.1.tdnn2.weight",
    "speaker_encoder.asp.tdnn.conv.bias": "spk_enc.asp.tdnn.bias",
}
CODEC_TO_GGUF = {
    "decoder.decoder.0.conv.weight": "tok_dec.dec.0.conv.weight",
    "decoder.decoder.6.conv.bias": "tok_dec.dec.6.conv.bias",
    "decoder.decoder.5.alpha": "tok_dec.dec.5.snake.alpha",
    "decoder.decoder.2.block.0.beta": "tok_dec.dec.2.snake.beta",
    "decoder.decoder.1.block.1.conv.weight": "tok_dec.dec.1.conv_t.weight",
    "decoder.decoder.4.block.3.act2.alpha": "tok_dec.dec.4.res.1.act2.alpha",
    "decoder.decoder.3.block.4.conv1.conv.bias": "tok_dec.dec.3.res.2.conv1.bias",
    "decoder.pre_transformer.layers.7.self_attn_layer_scale.scale": "tok_dec.pre_tfm.blk.7.attn_scale",
    "decoder.pre_transformer.input_proj.bias": "tok_dec.pre_tfm.input_proj.bias",
    "decoder.upsample.1.1.dwconv.conv.weight": "tok_dec.upsample.1.dwconv.weight",
    "decoder.upsample.0.0.conv.bias": "tok_dec.upsample.0.conv.bias",
    "decoder.upsample.1.1.gamma": "tok_dec.upsample.1.gamma",
    "encoder.encoder.layers.3.block.1.conv.weight": "tok_enc.res.3.blk.1.weight",
    "encoder.encoder_transformer.layers.2.mlp.fc1.weight": "tok_enc.blk.2.ffn_up.weight",
    "encoder.encoder_transformer.layers.2.input_layernorm.bias": "tok_enc.blk.2.attn_norm.bias",
    "encoder.quantizer.acoustic_residual_vector_quantizer.output_proj.weight": "tok_enc.vq_acoustic.output_proj.weight",
    "decoder.quantizer.rvq_rest.output_proj.weight": "tok_dec.vq_rest.output_proj.weight",
    "decoder.quantizer.rvq_first.input_proj.weight": None,
}


def test_converter_names():
    conv = _load_converter()
    for src, want in CKPT_TO_GGUF.items():
        assert conv.rename(src, conv.TALKER_RULES) == want, src
    for src, want in CODEC_TO_GGUF.items():
        assert conv.rename(src, conv.CODEC_RULES) == want, src
    with pytest.raises(KeyError):
        conv.rename("talker.something.new.weight", conv.TALKER_RULES)


def test_converter_storage_types():
    conv = _load_converter()
    t = conv.tensor_type
    assert t("talker.blk.0.attn_q.weight", (2048, 1024), "q4_k", "f16") == "q4_k"
    assert t("talker.blk.0.attn_v.weight", (1024, 1024), "q4_k_m", "f16") == "q6_k"
    assert t("code_pred.lm_head.3.weight", (2048, 1024), "q8_0", "f16") == "q8_0"
    assert t("talker.blk.0.ffn_down.weight", (1024, 3072), "q4_k", "f16") == "q4_k"  # 3072 = 12 x 256
    assert t("talker.text_proj.fc1.weight", (2048, 100), "q4_k", "f16") == "f16"  # rows not a multiple of 32
    assert t("talker.text_embd.weight", (151936, 2048), "q4_k", "f16") == "f16"
    assert t("talker.blk.0.attn_norm.weight", (1024,), "q4_k", "f16") == "f32"
    assert t("spk_enc.fc.weight", (1024, 3072), "q4_k", "f32") == "f32"
    assert t("talker.blk.0.attn_q.weight", (2048, 1024), "f32", "f16") == "f32"


def test_foreign_cores():
    # 30 busy CPU-seconds on the machine in 10 s, 12 of them the worker's: others kept 1.8 cores busy
    assert bp.foreign_cores(100.0, 130.0, 12.0, 10.0) == pytest.approx(1.8)
    assert bp.foreign_cores(100.0, 105.0, 12.0, 10.0) == 0.0  # never negative (sampling skew)
    assert bp.foreign_cores(None, 105.0, 1.0, 10.0) is None
