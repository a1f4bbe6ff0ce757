#!/usr/bin/env python3
"""Convert an official Qwen3-TTS-12Hz Base checkpoint into the runtime model directory.

    python scripts/convert.py CHECKPOINT_DIR MODEL_DIR [--quant f32|f16|q8_0|q4_k_m]

Writes: talker.gguf (`qwen3`, 3072-row codec vocabulary, codec_head as output), predictor.gguf (the 5
predictor layers only), text_embeddings.npy (text_projection(text_embedding), memory-mapped),
codec/predictor embedding tables and heads (.npy), the streaming vocoder (ONNX), the voice-cloning encoders
(ONNX: speech-tokenizer encoder, speaker encoder; scripts/export_encoders.py), tokenizer.json and
manifest.json (dimensions, special ids, languages, file hashes, converter version). Deterministic.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemons.engine.manifest import FORMAT, FORMAT_VERSION  # noqa: E402

CONVERTER_VERSION = "0.4.0"  # 0.2: voice-cloning encoders; 0.3: fp16 predictor embeddings (quantized); 0.4: vocoder_head.onnx
QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
REPO_ID = "Qwen/Qwen3-TTS-12Hz-0.6B-Base"


class ConversionError(Exception):
    pass


# --- checkpoint validation ---------------------------------------------------------------------------
def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConversionError(f"not a Qwen3-TTS checkpoint: {what} missing ({path})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConversionError(f"{path} is not valid JSON: {e}") from None


def check_checkpoint(ckpt: Path) -> tuple[dict, dict]:
    """Refuse anything that is not a 12 Hz Base checkpoint in the released layout."""
    if not ckpt.is_dir():
        raise ConversionError(f"checkpoint directory not found: {ckpt}")
    cfg = _read_json(ckpt / "config.json", "config.json")
    if cfg.get("model_type") != "qwen3_tts":
        raise ConversionError(f"{ckpt}/config.json: model_type is {cfg.get('model_type')!r}, expected 'qwen3_tts'")
    if cfg.get("tokenizer_type") != "qwen3_tts_tokenizer_12hz":
        raise ConversionError(f"only the 12 Hz speech tokenizer is supported (tokenizer_type="
                              f"{cfg.get('tokenizer_type')!r})")
    if cfg.get("tts_model_type") != "base":
        raise ConversionError(f"only Base models are supported (tts_model_type={cfg.get('tts_model_type')!r})")
    t = cfg.get("talker_config")
    if not isinstance(t, dict) or not isinstance(t.get("code_predictor_config"), dict):
        raise ConversionError("config.json has no talker_config/code_predictor_config")
    if t.get("num_code_groups") != 16:
        raise ConversionError(f"expected 16 code groups, config says {t.get('num_code_groups')}")
    need = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "intermediate_size", "rms_norm_eps", "rope_theta", "vocab_size", "text_vocab_size",
            "codec_pad_id", "codec_bos_id", "codec_eos_token_id", "codec_think_id", "codec_nothink_id",
            "codec_think_bos_id", "codec_think_eos_id", "codec_language_id"]
    missing = [k for k in need if k not in t]
    if missing:
        raise ConversionError(f"talker_config lacks {', '.join(missing)}")
    rs = t.get("rope_scaling") or {}
    sec = rs.get("mrope_section")
    if sec is not None and sum(sec) * 2 != t["head_dim"]:
        raise ConversionError(f"unexpected mrope_section {sec} for head_dim {t['head_dim']}")
    for k in ("im_start_token_id", "im_end_token_id", "tts_pad_token_id", "tts_bos_token_id",
              "tts_eos_token_id", "assistant_token_id"):
        if k not in cfg:
            raise ConversionError(f"config.json lacks {k}")
    if not (ckpt / "model.safetensors").is_file():
        raise ConversionError(f"not a Qwen3-TTS checkpoint: model.safetensors missing in {ckpt}")
    st = _read_json(ckpt / "speech_tokenizer" / "config.json", "speech_tokenizer/config.json")
    if st.get("model_type") != "qwen3_tts_tokenizer_12hz":
        raise ConversionError(f"speech_tokenizer/config.json: model_type {st.get('model_type')!r} is not "
                              "'qwen3_tts_tokenizer_12hz'")
    if not (ckpt / "speech_tokenizer" / "model.safetensors").is_file():
        raise ConversionError("speech_tokenizer/model.safetensors missing")
    if not any((ckpt / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        raise ConversionError("text tokenizer files missing (tokenizer.json or vocab.json + merges.txt)")
    return cfg, st


class Tensors:
    """Lazy float32 numpy access to model.safetensors (any stored dtype, bf16 included)."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self._f = safe_open(str(path), framework="pt")
        self.keys = set(self._f.keys())

    def __contains__(self, k):
        return k in self.keys

    def torch(self, key: str):
        if key not in self.keys:
            raise ConversionError(f"model.safetensors lacks tensor {key}")
        return self._f.get_tensor(key).float()

    def __call__(self, key: str, shape: tuple | None = None) -> np.ndarray:
        a = self.torch(key).numpy()
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ConversionError(f"tensor {key} has shape {tuple(a.shape)}, expected {tuple(shape)}")
        return a


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def text_table(W: Tensors, t: dict, rows_per_chunk: int = 8192) -> np.ndarray:
    """text_projection(text_embedding[id]) for every id, with the official torch ops (fp32)."""
    import torch
    import torch.nn.functional as F

    from transformers.activations import ACT2FN

    act = ACT2FN[t.get("hidden_act", "silu")]
    emb = W.torch("talker.model.text_embedding.weight")
    if tuple(emb.shape) != (t["text_vocab_size"], t["text_hidden_size"]):
        raise ConversionError(f"text_embedding has shape {tuple(emb.shape)}")
    p = "talker.text_projection."
    w1, w2 = W.torch(p + "linear_fc1.weight"), W.torch(p + "linear_fc2.weight")
    b1 = W.torch(p + "linear_fc1.bias") if p + "linear_fc1.bias" in W else None
    b2 = W.torch(p + "linear_fc2.bias") if p + "linear_fc2.bias" in W else None
    out = np.empty((emb.shape[0], w2.shape[0]), dtype=np.float32)
    with torch.no_grad():
        for s in range(0, emb.shape[0], rows_per_chunk):
            x = emb[s:s + rows_per_chunk][None]
            out[s:s + rows_per_chunk] = F.linear(act(F.linear(x, w1, b1)), w2, b2)[0].numpy()
    return out


def convert(checkpoint_dir: str | Path, model_dir: str | Path, quant: str = "f32",
            predictor_quant: str | None = None, threads: int = 0, log=print) -> Path:
    from scripts.gguf_export import quantize_gguf, write_qwen3_gguf

    if quant not in QUANTS:
        raise ConversionError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANTS)}")
    predictor_quant = predictor_quant or quant
    if predictor_quant not in QUANTS:
        raise ConversionError(f"unknown predictor quantization {predictor_quant!r}")
    ckpt, out = Path(checkpoint_dir), Path(model_dir)
    cfg, st_cfg = check_checkpoint(ckpt)
    t = cfg["talker_config"]
    cp = t["code_predictor_config"]
    D, V, CB, G = t["hidden_size"], t["vocab_size"], cp["vocab_size"], t["num_code_groups"]
    Dp = cp["hidden_size"]
    W = Tensors(ckpt / "model.safetensors")
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # the manifest is written last: no manifest, no model
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out))
    try:
        files: list[str] = []

        def save_npy(name: str, arr: np.ndarray) -> None:
            np.save(out / name, arr)
            files.append(name)

        # --- talker ---
        codec = W("talker.model.codec_embedding.weight", (V, D))
        head = W("talker.codec_head.weight", (V, D))
        for i in range(t["num_hidden_layers"]):
            W(f"talker.model.layers.{i}.self_attn.q_proj.weight",
              (t["num_attention_heads"] * t["head_dim"], D))

        def gguf(stem: str, q: str, **kw) -> None:
            base = tmp / f"{stem}.base.gguf"
            write_qwen3_gguf(base, f16=(q == "f16"), **kw)
            if q in ("f32", "f16"):
                shutil.move(base, out / f"{stem}.gguf")
            else:
                quantize_gguf(base, out / f"{stem}.gguf", q, threads)
                base.unlink()
            files.append(f"{stem}.gguf")

        log(f"talker: {t['num_hidden_layers']} layers, hidden {D}, codec vocab {V} -> talker.gguf ({quant})")
        gguf("talker", quant, name="qwen3-tts talker", get=W, prefix="talker.model.",
             n_layers=t["num_hidden_layers"], hidden=D, ffn=t["intermediate_size"],
             heads=t["num_attention_heads"], kv_heads=t["num_key_value_heads"], head_dim=t["head_dim"],
             rope_theta=t["rope_theta"], eps=t["rms_norm_eps"],
             ctx_len=t.get("max_position_embeddings", 32768), token_embd=codec, output=head)

        # --- code predictor: layers only; inputs are embeddings, heads are applied outside ---
        log(f"predictor: {cp['num_hidden_layers']} layers, hidden {Dp} -> predictor.gguf ({predictor_quant})")
        dummy = np.zeros((1, Dp), dtype=np.float32)  # a 1-row vocabulary keeps llama.cpp's own head free
        gguf("predictor", predictor_quant, name="qwen3-tts code predictor", get=W,
             prefix="talker.code_predictor.model.", n_layers=cp["num_hidden_layers"], hidden=Dp,
             ffn=cp["intermediate_size"], heads=cp["num_attention_heads"], kv_heads=cp["num_key_value_heads"],
             head_dim=cp["head_dim"], rope_theta=cp["rope_theta"], eps=cp["rms_norm_eps"], ctx_len=64,
             token_embd=dummy, output=dummy,
             # the predictor's FFN intermediate reaches ~1.5e5 on the released weights (vendored llama.cpp
             # converter note): past the f16 range, and an f16 matmul casts its input to f16
             keep_f32=("ffn_down.weight",))

        # --- tables ---
        table_dtype = np.float32 if quant == "f32" else np.float16
        log(f"text table: {t['text_vocab_size']} x {D} ({np.dtype(table_dtype).name})")
        save_npy("text_embeddings.npy", text_table(W, t).astype(table_dtype))
        save_npy("codec_embedding.npy", codec)
        save_npy("predictor_embeddings.npy", np.stack(  # only looked up: fp16 halves it in quantized models
            [W(f"talker.code_predictor.model.codec_embedding.{k}.weight", (CB, D)) for k in range(G - 1)]
        ).astype(table_dtype))
        save_npy("predictor_heads.npy", np.stack(
            [W(f"talker.code_predictor.lm_head.{k}.weight", (CB, Dp)) for k in range(G - 1)]))
        tables = {"text_embeddings": "text_embeddings.npy", "codec_embedding": "codec_embedding.npy",
                  "predictor_embeddings": "predictor_embeddings.npy", "predictor_heads": "predictor_heads.npy",
                  "mtp_proj_w": None, "mtp_proj_b": None}
        proj = "talker.code_predictor.small_to_mtp_projection."
        if proj + "weight" in W:
            save_npy("mtp_proj_w.npy", W(proj + "weight", (Dp, D)))
            save_npy("mtp_proj_b.npy", W(proj + "bias", (Dp,)))
            tables.update(mtp_proj_w="mtp_proj_w.npy", mtp_proj_b="mtp_proj_b.npy")

        # --- text tokenizer ---
        special = save_tokenizer(ckpt, out, cfg)
        files.append("tokenizer.json")
        special.update(codec_pad=t["codec_pad_id"], codec_bos=t["codec_bos_id"], codec_eos=t["codec_eos_token_id"],
                       think=t["codec_think_id"], nothink=t["codec_nothink_id"],
                       think_bos=t["codec_think_bos_id"], think_eos=t["codec_think_eos_id"])

        # --- vocoder ---
        from scripts.export_vocoder import export_vocoder

        log("vocoder: streaming ONNX export")
        voc = export_vocoder(ckpt, out)
        files += voc["files"]

        # --- voice cloning: reference-audio encoders (speech tokenizer encoder, speaker encoder) ---
        from scripts.export_encoders import export_encoders

        log("voice encoders: ONNX export")
        enc = export_encoders(ckpt, out, log=log)
        files += enc["files"]

        gen = {}
        if (ckpt / "generation_config.json").is_file():
            gen = json.loads((ckpt / "generation_config.json").read_text())
        manifest = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "converter_version": CONVERTER_VERSION,
            "quant": quant, "predictor_quant": predictor_quant,
            "source": {"config_sha256": _sha256(ckpt / "config.json"), "tts_model_size": cfg.get("tts_model_size"),
                       "tts_model_type": cfg.get("tts_model_type"),
                       "random_weights": (ckpt / "RANDOM_WEIGHTS.txt").is_file()},
            "talker": {"gguf": "talker.gguf", "hidden_size": D, "num_layers": t["num_hidden_layers"],
                       "codec_vocab": V, "num_code_groups": G,
                       "max_positions": t.get("max_position_embeddings", 32768)},
            "predictor": {"gguf": "predictor.gguf", "hidden_size": Dp, "num_layers": cp["num_hidden_layers"],
                          "codebook_size": CB},
            "text": {"tokenizer": "tokenizer.json", "vocab_size": t["text_vocab_size"],
                     "table_dtype": np.dtype(table_dtype).name},
            "tables": tables,
            "special": special,
            "languages": {k.lower(): v for k, v in sorted(t["codec_language_id"].items())},
            "generation": {k: gen[k] for k in sorted(gen)},
            "vocoder": {k: v for k, v in voc.items() if k != "files"},
            "voice": {k: v for k, v in enc.items() if k != "files"},
            "files": {f: _sha256(out / f) for f in sorted(files)},
        }
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def save_tokenizer(ckpt: Path, out: Path, cfg: dict) -> dict:
    """tokenizer.json for the `tokenizers` runtime (converted by transformers from the checkpoint's Qwen2
    files), checked against the special ids of config.json."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(ckpt), use_fast=True)
    tok.backend_tokenizer.save(str(out / "tokenizer.json"))
    from tokenizers import Tokenizer

    rt = Tokenizer.from_file(str(out / "tokenizer.json"))
    special = {"im_start": cfg["im_start_token_id"], "im_end": cfg["im_end_token_id"],
               "tts_pad": cfg["tts_pad_token_id"], "tts_bos": cfg["tts_bos_token_id"],
               "tts_eos": cfg["tts_eos_token_id"], "assistant": cfg["assistant_token_id"]}
    for name, s in (("im_start", "<|im_start|>"), ("im_end", "<|im_end|>"), ("tts_pad", "<tts_pad>"),
                    ("tts_bos", "<tts_text_bos>"), ("tts_eos", "<tts_text_eod>")):
        if rt.token_to_id(s) != special[name]:
            raise ConversionError(f"tokenizer maps {s} to {rt.token_to_id(s)}, config.json says {special[name]}")
    role = rt.encode("<|im_start|>assistant\n", add_special_tokens=False).ids
    if len(role) != 3 or role[1] != special["assistant"]:
        raise ConversionError(f"tokenizer encodes the role header as {role}; expected [im_start, "
                              f"{special['assistant']}, newline]")
    special["newline"] = role[2]
    return special


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Convert a Qwen3-TTS-12Hz Base checkpoint to the runtime model dir")
    ap.add_argument("checkpoint_dir")
    ap.add_argument("model_dir")
    ap.add_argument("--quant", default="f32", choices=QUANTS, help="talker (and predictor) weights")
    ap.add_argument("--predictor-quant", choices=QUANTS, help="override for the code predictor")
    ap.add_argument("--threads", type=int, default=0, help="quantizer threads (0: all)")
    a = ap.parse_args(argv)
    try:
        p = convert(a.checkpoint_dir, a.model_dir, a.quant, a.predictor_quant, a.threads)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
