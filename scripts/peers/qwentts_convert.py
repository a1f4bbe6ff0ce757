#!/usr/bin/env python3
"""Official Qwen3-TTS checkpoint -> the two GGUF files that `realtimetts-qwen-native-cpu` (qwentts.cpp, C ABI v5)
loads: a talker file (architecture `qwen3-tts`: talker, code predictor, speaker encoder, BPE tokenizer) and a codec
file (architecture `qwen3-tts-tokenizer`: speech-tokenizer decoder and encoder).

    <peer venv>/bin/python scripts/peers/qwentts_convert.py CKPT OUT_DIR [--quant q8_0|q4_k|f32] [--emb f16|f32]

Runs in the peer's own venv (it needs `gguf` and the wheel's `libggml-base.so`, whose `ggml_quantize_chunk` does
the quantization). The tensor names and metadata keys are the ones the wheel's `libqwen.so` looks up (its
strings); the metadata the loader reads but the checkpoint may lack gets the official defaults
(`dilation_growth_rate` 2). Weights are written as they are in the checkpoint's layout (numpy row-major, which
gguf stores as ggml's reversed dimensions), linear weights of the two transformers and their heads quantized
(`--quant`), embeddings in `--emb`, codebooks / norms / convolutions / the speaker encoder in f32.
Written for benchmarking only (scripts/bench_peers.py); no claim of parity with upstream's converter.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import re
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from scripts.gguf_export import LAYER_MAP  # noqa: E402 (numpy only at import: fine in the peer's venv)

RVQ_EPS = 1e-5
LM_SUFFIX = {
    **LAYER_MAP,  # the Qwen3 decoder layers: the same llama.cpp names as our own export
    # the codec encoder's transformer (Mimi): LayerNorm with bias, fc1/fc2 MLP, layer scales
    "input_layernorm.bias": "attn_norm.bias",
    "post_attention_layernorm.bias": "ffn_norm.bias",
    "mlp.fc1.weight": "ffn_up.weight",
    "mlp.fc2.weight": "ffn_down.weight",
    "self_attn_layer_scale.scale": "attn_scale",
    "mlp_layer_scale.scale": "ffn_scale",
}

# (regex on the checkpoint name, replacement); the first match wins; None = drop the tensor
TALKER_RULES = [
    (r"^talker\.model\.layers\.(\d+)\.(.+)$", lambda m: f"talker.blk.{m[1]}.{LM_SUFFIX[m[2]]}"),
    (r"^talker\.code_predictor\.model\.layers\.(\d+)\.(.+)$", lambda m: f"code_pred.blk.{m[1]}.{LM_SUFFIX[m[2]]}"),
    (r"^talker\.model\.codec_embedding\.weight$", "talker.codec_embd.weight"),
    (r"^talker\.model\.text_embedding\.weight$", "talker.text_embd.weight"),
    (r"^talker\.model\.norm\.weight$", "talker.output_norm.weight"),
    (r"^talker\.codec_head\.weight$", "talker.codec_head.weight"),
    (r"^talker\.text_projection\.linear_fc([12])\.(weight|bias)$", r"talker.text_proj.fc\1.\2"),
    (r"^talker\.code_predictor\.model\.codec_embedding\.(\d+)\.weight$", r"code_pred.codec_embd.\1.weight"),
    (r"^talker\.code_predictor\.lm_head\.(\d+)\.weight$", r"code_pred.lm_head.\1.weight"),
    (r"^talker\.code_predictor\.model\.norm\.weight$", "code_pred.output_norm.weight"),
    (r"^talker\.code_predictor\.small_to_mtp_projection\.(weight|bias)$", r"code_pred.mtp_proj.\1"),
    (r"^speaker_encoder\.blocks\.0\.conv\.(weight|bias)$", r"spk_enc.conv0.\1"),
    (r"^speaker_encoder\.blocks\.(\d+)\.res2net_block\.blocks\.(\d+)\.conv\.(weight|bias)$",
     r"spk_enc.blk.\1.res2net.\2.\3"),
    (r"^speaker_encoder\.blocks\.(\d+)\.se_block\.(conv[12])\.(weight|bias)$", r"spk_enc.blk.\1.se.\2.\3"),
    (r"^speaker_encoder\.blocks\.(\d+)\.(tdnn[12])\.conv\.(weight|bias)$", r"spk_enc.blk.\1.\2.\3"),
    (r"^speaker_encoder\.asp\.conv\.(weight|bias)$", r"spk_enc.asp.conv.\1"),
    (r"^speaker_encoder\.asp\.tdnn\.conv\.(weight|bias)$", r"spk_enc.asp.tdnn.\1"),
    (r"^speaker_encoder\.mfa\.conv\.(weight|bias)$", r"spk_enc.mfa.\1"),
    (r"^speaker_encoder\.fc\.(weight|bias)$", r"spk_enc.fc.\1"),
]


def _dec_chain(m) -> str:
    i, rest = int(m[1]), m[2]
    if i == 0 or i == 6:  # first / last plain conv
        return f"tok_dec.dec.{i}.conv.{rest.rsplit('.', 1)[-1]}"
    if i == 5:  # final snake
        return f"tok_dec.dec.5.snake.{rest}"
    mm = re.match(r"^block\.(\d+)\.(.+)$", rest)
    j, tail = int(mm[1]), mm[2]
    if j == 0:
        return f"tok_dec.dec.{i}.snake.{tail}"
    if j == 1:
        return f"tok_dec.dec.{i}.conv_t.{tail.rsplit('.', 1)[-1]}"
    part, leaf = tail.split(".", 1)  # act1.alpha | conv1.conv.weight
    return f"tok_dec.dec.{i}.res.{j - 2}.{part}.{leaf.rsplit('.', 1)[-1]}"


CODEC_RULES = [
    (r"^encoder\.encoder\.layers\.(\d+)\.conv\.(weight|bias)$", r"tok_enc.conv.\1.\2"),
    (r"^encoder\.encoder\.layers\.(\d+)\.block\.(\d+)\.conv\.(weight|bias)$", r"tok_enc.res.\1.blk.\2.\3"),
    (r"^encoder\.encoder_transformer\.layers\.(\d+)\.(.+)$", lambda m: f"tok_enc.blk.{m[1]}.{LM_SUFFIX[m[2]]}"),
    (r"^encoder\.downsample\.conv\.(weight|bias)$", r"tok_enc.downsample.\1"),
    (r"^encoder\.quantizer\.(semantic|acoustic)_residual_vector_quantizer\.(input_proj|output_proj)\.weight$",
     r"tok_enc.vq_\1.\2.weight"),
    (r"^decoder\.pre_conv\.conv\.(weight|bias)$", r"tok_dec.pre_conv.\1"),
    (r"^decoder\.pre_transformer\.(input_proj|output_proj)\.(weight|bias)$", r"tok_dec.pre_tfm.\1.\2"),
    (r"^decoder\.pre_transformer\.norm\.weight$", "tok_dec.pre_tfm.norm.weight"),
    (r"^decoder\.pre_transformer\.layers\.(\d+)\.(.+)$", lambda m: f"tok_dec.pre_tfm.blk.{m[1]}.{LM_SUFFIX[m[2]]}"),
    (r"^decoder\.upsample\.(\d+)\.0\.conv\.(weight|bias)$", r"tok_dec.upsample.\1.conv.\2"),
    (r"^decoder\.upsample\.(\d+)\.1\.dwconv\.conv\.(weight|bias)$", r"tok_dec.upsample.\1.dwconv.\2"),
    (r"^decoder\.upsample\.(\d+)\.1\.(norm|pwconv1|pwconv2)\.(weight|bias)$", r"tok_dec.upsample.\1.\2.\3"),
    (r"^decoder\.upsample\.(\d+)\.1\.gamma$", r"tok_dec.upsample.\1.gamma"),
    (r"^decoder\.decoder\.(\d+)\.(.+)$", _dec_chain),
    (r"^decoder\.quantizer\.rvq_(first|rest)\.output_proj\.weight$", r"tok_dec.vq_\1.output_proj.weight"),
    (r"^decoder\.quantizer\.rvq_(first|rest)\.input_proj\.weight$", None),  # unused when decoding
]
# codebooks: embedding_sum / max(cluster_usage, eps), one table per layer
CODEBOOK_RE = [
    (r"^decoder\.quantizer\.rvq_(first|rest)\.vq\.layers\.(\d+)\._codebook\.(embedding_sum|cluster_usage)$",
     "tok_dec.vq_{0}.{1}.codebook"),
    (r"^encoder\.quantizer\.(semantic|acoustic)_residual_vector_quantizer\.layers\.(\d+)\.codebook\."
     r"(embed_sum|cluster_usage)$", "tok_enc.vq_{0}.{1}.codebook"),
]


def rename(name: str, rules) -> str | None:
    """The GGUF name of a checkpoint tensor; KeyError when no rule matches (a layout this converter does not know)."""
    for pat, rep in rules:
        m = re.match(pat, name)
        if m:
            if rep is None:
                return None
            return rep(m) if callable(rep) else m.expand(rep)
    raise KeyError(f"no GGUF name for checkpoint tensor {name!r}")


# ------------------------------------------------------------------------------------------- safetensors

class SafeTensors:
    """Minimal safetensors reader (numpy only; bf16/f16 widened to f32)."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            self.header = json.loads(f.read(n))
        self.header.pop("__metadata__", None)
        self.base = 8 + n
        self.mm = np.memmap(path, dtype=np.uint8, mode="r")

    def keys(self):
        return list(self.header)

    def get(self, name: str) -> np.ndarray:
        t = self.header[name]
        b, e = t["data_offsets"]
        raw = self.mm[self.base + b:self.base + e]
        dt = t["dtype"]
        if dt == "BF16":
            a = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "F16":
            a = raw.view("<f2").astype(np.float32)
        elif dt == "F32":
            a = np.array(raw.view("<f4"))
        elif dt == "BOOL":
            a = raw.view(np.bool_).astype(np.float32)
        elif dt in ("I64", "I32"):
            a = raw.view("<i8" if dt == "I64" else "<i4").astype(np.float32)
        else:
            raise ValueError(f"{name}: dtype {dt}")
        return a.reshape(t["shape"])


# ------------------------------------------------------------------------------------------- quantization

class Quantizer:
    """ggml_quantize_chunk from the wheel's own libggml-base (so the blocks are exactly what its kernels read)."""

    def __init__(self, lib_dir: Path):
        import gguf

        self.gguf = gguf
        self.lib = ctypes.CDLL(str(lib_dir / "libggml-base.so.0"))
        self.lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        self.lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                                 ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        self.lib.ggml_row_size.restype = ctypes.c_size_t
        self.lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]

    def __call__(self, a: np.ndarray, qtype) -> np.ndarray:
        a = np.ascontiguousarray(a, dtype=np.float32)
        rows, cols = a.shape
        row_bytes = self.lib.ggml_row_size(int(qtype), cols)
        out = np.empty((rows, row_bytes), dtype=np.uint8)
        n = self.lib.ggml_quantize_chunk(int(qtype), a.ctypes.data, out.ctypes.data, 0, rows, cols, None)
        if n != out.nbytes:
            raise RuntimeError(f"ggml_quantize_chunk wrote {n} bytes, expected {out.nbytes}")
        return out


QUANT_LINEAR = re.compile(r"^(talker|code_pred)\.blk\.\d+\.(attn_(q|k|v|output)|ffn_(gate|up|down))\.weight$|"
                          r"^talker\.codec_head\.weight$|^code_pred\.lm_head\.\d+\.weight$|"
                          r"^talker\.text_proj\.fc[12]\.weight$|^code_pred\.mtp_proj\.weight$")
EMBEDDING = re.compile(r"^talker\.(codec|text)_embd\.weight$|^code_pred\.codec_embd\.\d+\.weight$")


def tensor_type(name: str, shape, quant: str, emb: str) -> str:
    """Storage type of one GGUF tensor: 'q8_0' / 'q4_k' / 'q6_k' for the linear weights, `emb` for embeddings,
    'f32' for the rest. Q4_K needs rows that are multiples of 256 (else Q8_0; else f16)."""
    if EMBEDDING.match(name):
        return emb
    if quant == "f32" or len(shape) != 2 or not QUANT_LINEAR.match(name):
        return "f32"
    cols = shape[-1]
    if quant in ("q4_k", "q4_k_m"):
        if quant == "q4_k_m" and re.search(r"\.(attn_v|ffn_down)\.weight$", name):
            return "q6_k" if cols % 256 == 0 else ("q8_0" if cols % 32 == 0 else "f16")
        if cols % 256 == 0:
            return "q4_k"
    if cols % 32 == 0:
        return "q8_0"
    return "f16"


def add(writer, q: Quantizer | None, name: str, arr: np.ndarray, kind: str, counts: dict) -> None:
    G = q.gguf.GGMLQuantizationType if q else None
    if kind == "f32":
        writer.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    elif kind == "f16":
        writer.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float16))
    else:
        qt = {"q8_0": G.Q8_0, "q4_k": G.Q4_K, "q6_k": G.Q6_K}[kind]
        data = q(arr, qt)
        writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
    counts[kind] = counts.get(kind, 0) + 1


# ------------------------------------------------------------------------------------------- the two files

def bpe_vocab(ck: Path):
    vocab = json.loads((ck / "vocab.json").read_text(encoding="utf-8"))
    added = json.loads((ck / "tokenizer_config.json").read_text(encoding="utf-8")).get("added_tokens_decoder", {})
    n = max([*vocab.values(), *(int(i) for i in added)]) + 1
    tokens, types = [None] * n, [1] * n
    for t, i in vocab.items():
        tokens[i] = t
    for i, v in added.items():
        tokens[int(i)], types[int(i)] = v["content"], 4
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i], types[i] = f"<|unused-{i}|>", 5
    merges = [l for l in (ck / "merges.txt").read_text(encoding="utf-8").splitlines() if l and not l.startswith("#")]
    return tokens, types, merges


def write_talker(ck: Path, out: Path, q: Quantizer | None, quant: str, emb: str) -> dict:
    import gguf

    cfg = json.loads((ck / "config.json").read_text())
    tc, pc = cfg["talker_config"], cfg["talker_config"]["code_predictor_config"]
    gp = ck / "generation_config.json"
    gen = json.loads(gp.read_text()) if gp.is_file() else {}
    w = gguf.GGUFWriter(str(out), "qwen3-tts")
    u32, f32 = w.add_uint32, w.add_float32
    A = "qwen3-tts."
    w.add_string("general.name", f"Qwen3-TTS-12Hz-{cfg.get('tts_model_size')}-{cfg.get('tts_model_type')} (bench)")
    w.add_string(A + "tokenizer_type", cfg.get("tokenizer_type", "qwen3_tts_tokenizer_12hz"))
    w.add_string(A + "model_size", str(cfg.get("tts_model_size", "0b6")))
    w.add_string(A + "model_type", str(cfg.get("tts_model_type", "base")))
    u32(A + "num_code_groups", tc["num_code_groups"])
    for sect, c in (("talker", tc), ("code_pred", pc)):
        u32(f"{A}{sect}.embedding_length", c["hidden_size"])
        u32(f"{A}{sect}.feed_forward_length", c["intermediate_size"])
        u32(f"{A}{sect}.block_count", c["num_hidden_layers"])
        u32(f"{A}{sect}.attention.head_count", c["num_attention_heads"])
        u32(f"{A}{sect}.attention.head_count_kv", c["num_key_value_heads"])
        u32(f"{A}{sect}.attention.key_length", c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])
        u32(f"{A}{sect}.vocab_size", c["vocab_size"])
        u32(f"{A}{sect}.context_length", c.get("max_position_embeddings", 32768))
        f32(f"{A}{sect}.rope.freq_base", float(c["rope_theta"]))
        f32(f"{A}{sect}.attention.layer_norm_rms_epsilon", float(c["rms_norm_eps"]))
    u32(A + "talker.text_vocab_size", tc["text_vocab_size"])
    u32(A + "talker.text_hidden_size", tc["text_hidden_size"])
    u32(A + "talker.position_id_per_seconds", tc.get("position_id_per_seconds", 13))
    rs = tc.get("rope_scaling") or {}
    if "mrope_section" in rs:
        w.add_array(A + "talker.rope.mrope_section", [int(x) for x in rs["mrope_section"]])
        w.add_bool(A + "talker.rope.mrope_interleaved", bool(rs.get("interleaved", False)))
    sc = cfg.get("speaker_encoder_config")
    if sc:
        u32(A + "spk_enc.embedding_length", sc.get("enc_dim", tc["hidden_size"]))
        u32(A + "spk_enc.sample_rate", sc.get("sample_rate", 24000))
    for key, src in (("pad_id", "codec_pad_id"), ("bos_id", "codec_bos_id"), ("eos_id", "codec_eos_token_id"),
                     ("think_id", "codec_think_id"), ("nothink_id", "codec_nothink_id"),
                     ("think_bos_id", "codec_think_bos_id"), ("think_eos_id", "codec_think_eos_id")):
        u32(f"{A}codec.{key}", tc[src])
    langs = tc.get("codec_language_id") or {}
    w.add_array(A + "codec.language_names", list(langs))
    w.add_array(A + "codec.language_ids", [int(v) for v in langs.values()])
    spk = tc.get("spk_id") or {}
    if spk:
        dia = tc.get("spk_is_dialect") or {}
        w.add_array(A + "codec.speaker_names", list(spk))
        w.add_array(A + "codec.speaker_ids", [int(v) for v in spk.values()])
        w.add_array(A + "codec.speaker_dialects", [d if isinstance(d := dia.get(k), str) else "" for k in spk])
    for key in ("im_start", "im_end", "tts_pad", "tts_bos", "tts_eos"):
        u32(f"{A}text.{key}_id", cfg[f"{key}_token_id"])
    for src, dst, typ in (("do_sample", "do_sample", bool), ("top_k", "top_k", int), ("top_p", "top_p", float),
                          ("temperature", "temperature", float), ("repetition_penalty", "repetition_penalty", float),
                          ("subtalker_dosample", "subtalker_do_sample", bool),
                          ("subtalker_top_k", "subtalker_top_k", int),
                          ("subtalker_top_p", "subtalker_top_p", float),
                          ("subtalker_temperature", "subtalker_temperature", float),
                          ("max_new_tokens", "max_new_tokens", int)):
        if src in gen:
            {bool: w.add_bool, int: w.add_uint32, float: w.add_float32}[typ](f"generation.{dst}", typ(gen[src]))
    tokens, types, merges = bpe_vocab(ck)
    w.add_string("tokenizer.ggml.model", "gpt2")
    w.add_array("tokenizer.ggml.tokens", tokens)
    w.add_array("tokenizer.ggml.token_type", types)
    w.add_array("tokenizer.ggml.merges", merges)
    w.add_uint32("tokenizer.ggml.eos_token_id", 151643)
    st = SafeTensors(ck / "model.safetensors")
    counts: dict = {}
    for k in sorted(st.keys()):
        name = rename(k, TALKER_RULES)
        if name is None:
            continue
        a = st.get(k)
        add(w, q, name, a, tensor_type(name, a.shape, quant, emb), counts)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return counts


def write_codec(st_dir: Path, out: Path) -> dict:
    import gguf

    cfg = json.loads((st_dir / "config.json").read_text())
    dec, enc = cfg["decoder_config"], cfg["encoder_config"]
    w = gguf.GGUFWriter(str(out), "qwen3-tts-tokenizer")
    A = "qwen3-tts-tokenizer."
    w.add_string("general.name", "Qwen3-TTS-Tokenizer-12Hz (bench)")
    for k in ("input_sample_rate", "output_sample_rate", "decode_upsample_rate", "encode_downsample_rate",
              "encoder_valid_num_quantizers"):
        w.add_uint32(A + k, cfg[k])
    for k in ("latent_dim", "codebook_dim", "codebook_size", "decoder_dim", "hidden_size", "intermediate_size",
              "head_dim", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "num_quantizers",
              "num_semantic_quantizers", "sliding_window"):
        w.add_uint32(A + "decoder." + k, dec[k])
    for k in ("rms_norm_eps", "rope_theta", "layer_scale_initial_scale"):
        w.add_float32(A + "decoder." + k, float(dec[k]))
    w.add_array(A + "decoder.upsample_rates", [int(x) for x in dec["upsample_rates"]])
    w.add_array(A + "decoder.upsampling_ratios", [int(x) for x in dec["upsampling_ratios"]])
    w.add_uint32(A + "decoder.vector_quantization_hidden_dim", dec["vector_quantization_hidden_dimension"])
    w.add_uint32(A + "decoder.codebook_dim_internal", 256)  # the codebook vectors' width, before output_proj
    enc_defaults = {"dilation_growth_rate": 2, "num_residual_layers": 1, "compress": 2, "last_kernel_size": 3,
                    "residual_kernel_size": 3, "kernel_size": 7, "num_filters": 64}
    e = {**enc_defaults, **enc}
    for k in ("num_filters", "kernel_size", "last_kernel_size", "residual_kernel_size", "num_residual_layers",
              "dilation_growth_rate", "compress", "hidden_size", "intermediate_size", "head_dim",
              "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "codebook_dim", "codebook_size",
              "num_quantizers", "num_semantic_quantizers"):
        w.add_uint32(A + "encoder." + k, int(e[k]))
    for k in ("norm_eps", "rope_theta", "layer_scale_initial_scale"):
        w.add_float32(A + "encoder." + k, float(e[k]))
    w.add_array(A + "encoder.upsampling_ratios", [int(x) for x in e["upsampling_ratios"]])
    w.add_uint32(A + "encoder.vector_quantization_hidden_dim", e["vector_quantization_hidden_dimension"])
    keep_acoustic = cfg["encoder_valid_num_quantizers"] - e["num_semantic_quantizers"]
    st = SafeTensors(st_dir / "model.safetensors")
    books: dict = {}
    counts: dict = {}
    for k in sorted(st.keys()):
        if k.endswith(".initialized"):
            continue
        for pat, fmt in CODEBOOK_RE:
            m = re.match(pat, k)
            if m:
                side, layer, field = m[1], int(m[2]), m[3]
                if side == "acoustic" and layer >= keep_acoustic:
                    break
                books.setdefault((fmt.format(side, layer)), {})["sum" if "sum" in field else "usage"] = st.get(k)
                break
        else:
            name = rename(k, CODEC_RULES)
            if name is not None:
                add(w, None, name, st.get(k), "f32", counts)
    for name in sorted(books, key=lambda n: (n.split(".")[1], int(n.split(".")[2]))):
        b = books[name]
        add(w, None, name, b["sum"] / np.maximum(b["usage"], RVQ_EPS)[:, None], "f32", counts)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("out_dir")
    ap.add_argument("--quant", default="q4_k", choices=("f32", "q8_0", "q4_k", "q4_k_m"))
    ap.add_argument("--emb", default="f16", choices=("f16", "f32"))
    ap.add_argument("--lib-dir", help="the wheel's lib/ (default: found through the qwentts_cpp_cpu package)")
    a = ap.parse_args(argv)
    ck, out = Path(a.checkpoint), Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if a.lib_dir:
        lib_dir = Path(a.lib_dir)
    else:
        import qwentts_cpp_cpu

        lib_dir = Path(qwentts_cpp_cpu.__file__).parent / "lib"
    t0 = time.time()
    talker = out / f"talker-{a.quant}-{a.emb}.gguf"
    codec = out / "codec-f32.gguf"
    res = {"talker": str(talker), "codec": str(codec)}
    tmp = talker.with_suffix(".tmp")
    res["talker_types"] = write_talker(ck, tmp, Quantizer(lib_dir) if a.quant != "f32" else None, a.quant, a.emb)
    tmp.replace(talker)
    if not codec.is_file():
        tmp = codec.with_suffix(".tmp")
        res["codec_types"] = write_codec(ck / "speech_tokenizer", tmp)
        tmp.replace(codec)
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
