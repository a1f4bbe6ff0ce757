#!/usr/bin/env python3
"""Write a random-weight Qwen3-TTS-12Hz-Base checkpoint in the exact layout of the released one,
built with the official `qwen-tts` classes. THE WEIGHTS ARE RANDOM: any audio made from them is noise.

    python scripts/make_checkpoint.py OUT [--size tiny|full] [--seed N]

`tiny` (seconds, a few MB) is for tests; `full` has the real 0.6B-Base dimensions (for benchmarks).
Layout: config.json, generation_config.json, model.safetensors, tokenizer files (Qwen2 byte-level BPE),
speech_tokenizer/{config.json, model.safetensors, preprocessor_config.json}.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.official import import_qwen_tts  # noqa: E402

# --- The released 0.6B-Base configuration (../shared/MODEL.md section 1) ------------------------
FULL_TTS = {
    "architectures": ["Qwen3TTSForConditionalGeneration"],
    "model_type": "qwen3_tts",
    "tokenizer_type": "qwen3_tts_tokenizer_12hz",
    "tts_model_size": "0b6",
    "tts_model_type": "base",
    "im_start_token_id": 151644,
    "im_end_token_id": 151645,
    "tts_pad_token_id": 151671,
    "tts_bos_token_id": 151672,
    "tts_eos_token_id": 151673,
    "assistant_token_id": 77091,
    "speaker_encoder_config": {"enc_dim": 1024, "sample_rate": 24000},
    "talker_config": {
        "attention_bias": False, "attention_dropout": 0.0, "head_dim": 128, "hidden_act": "silu",
        "hidden_size": 1024, "intermediate_size": 3072, "max_position_embeddings": 32768,
        "num_attention_heads": 16, "num_hidden_layers": 28, "num_key_value_heads": 8,
        "num_code_groups": 16, "position_id_per_seconds": 13, "rms_norm_eps": 1e-06,
        "rope_theta": 1000000,
        "rope_scaling": {"interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default",
                         "type": "default"},
        "use_sliding_window": False, "sliding_window": None,
        "text_hidden_size": 2048, "text_vocab_size": 151936, "vocab_size": 3072,
        "codec_bos_id": 2149, "codec_eos_token_id": 2150, "codec_pad_id": 2148,
        "codec_think_id": 2154, "codec_nothink_id": 2155, "codec_think_bos_id": 2156,
        "codec_think_eos_id": 2157,
        "codec_language_id": {"chinese": 2055, "english": 2050, "german": 2053, "italian": 2070,
                              "portuguese": 2071, "spanish": 2054, "japanese": 2058, "korean": 2064,
                              "french": 2061, "russian": 2069},
        "spk_id": {}, "spk_is_dialect": {},
        "code_predictor_config": {
            "attention_bias": False, "head_dim": 128, "hidden_act": "silu", "hidden_size": 1024,
            "intermediate_size": 3072, "max_position_embeddings": 65536, "num_attention_heads": 16,
            "num_code_groups": 16, "num_hidden_layers": 5, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-06, "rope_theta": 1000000, "rope_scaling": None, "vocab_size": 2048,
            "use_sliding_window": False,
        },
    },
}

FULL_SPEECH_TOKENIZER = {
    "architectures": ["Qwen3TTSTokenizerV2Model"],
    "model_type": "qwen3_tts_tokenizer_12hz",
    "encoder_valid_num_quantizers": 16,
    "input_sample_rate": 24000, "output_sample_rate": 24000,
    "decode_upsample_rate": 1920, "encode_downsample_rate": 1920,
    "encoder_config": {
        "audio_channels": 1, "num_filters": 64, "kernel_size": 7, "residual_kernel_size": 3,
        "last_kernel_size": 3, "num_residual_layers": 1, "compress": 2,
        "upsampling_ratios": [8, 6, 5, 4], "hidden_size": 512, "num_hidden_layers": 8,
        "num_attention_heads": 8, "num_key_value_heads": 8, "head_dim": 64,
        "intermediate_size": 2048, "hidden_act": "gelu", "norm_eps": 1e-5,
        "layer_scale_initial_scale": 0.01, "rope_theta": 10000, "max_position_embeddings": 8000,
        "sliding_window": 250, "num_quantizers": 32, "num_semantic_quantizers": 1,
        "codebook_size": 2048, "codebook_dim": 256, "vector_quantization_hidden_dimension": 256,
        "pad_mode": "constant", "use_causal_conv": True, "frame_rate": 12.5, "sampling_rate": 24000,
    },
    "decoder_config": {
        "attention_bias": False, "latent_dim": 1024, "codebook_dim": 512, "codebook_size": 2048,
        "decoder_dim": 1536, "hidden_act": "silu", "hidden_size": 512, "intermediate_size": 1024,
        "layer_scale_initial_scale": 0.01, "max_position_embeddings": 8000, "head_dim": 64,
        "num_attention_heads": 16, "num_hidden_layers": 8, "num_key_value_heads": 16,
        "num_quantizers": 16, "num_semantic_quantizers": 1, "rms_norm_eps": 1e-05,
        "rope_theta": 10000, "semantic_codebook_size": 4096, "sliding_window": 72,
        "upsample_rates": [8, 5, 4, 3], "upsampling_ratios": [2, 2],
        "vector_quantization_hidden_dimension": 512,
    },
}

GENERATION_CONFIG = {
    "do_sample": True, "top_k": 50, "top_p": 1.0, "temperature": 0.9, "repetition_penalty": 1.05,
    "subtalker_dosample": True, "subtalker_top_k": 50, "subtalker_top_p": 1.0,
    "subtalker_temperature": 0.9, "max_new_tokens": 8192,
}

# Qwen2 special tokens, in Qwen2 order, starting at the first id after the BPE vocabulary.
QWEN2_FIRST_SPECIAL = 151643
SPECIAL_TOKENS = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2,
                  "<tts_pad>": 28, "<tts_text_bos>": 29, "<tts_text_eod>": 30}
TINY_FIRST_SPECIAL = 480
TINY_TEXT_VOCAB = 512  # 480 BPE ids + specials at 480..510 (same offsets as Qwen2)

# The pre-tokenizer regex of the Qwen2 tokenizer.
QWEN2_PRETOKENIZE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                     r"|\s*[\r\n]+|\s+(?!\S)|\s+")

_CORPUS = [
    "assistant", "Hello, this is a test of the text to speech system.",
    "The quick brown fox jumps over the lazy dog. It was a bright cold day in April.",
    "Привет! Это проверка системы синтеза речи. Съешь же ещё этих мягких французских булок.",
    "你好，这是一个语音合成系统的测试。今天天气很好，我们去公园散步吧。",
    "こんにちは、これは音声合成のテストです。", "안녕하세요, 음성 합성 테스트입니다.",
    "Bonjour, ceci est un test. Hallo, das ist ein Test. Hola, esto es una prueba.",
    "Ciao, questo è un test. Olá, isto é um teste. 1234567890 3.14 $5, 10%.",
]


def build_text_tokenizer(first_special: int):
    """A Qwen2-style byte-level BPE (same pre-tokenizer, special tokens at Qwen2's relative offsets).
    Real checkpoints ship Qwen's own 151k vocabulary; this one only has to tokenise any UTF-8 text."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TINY_FIRST_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 20 + ["assistant\n"] * 50, trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    if len(vocab) > first_special:
        raise RuntimeError("BPE vocabulary larger than the special-token offset")
    # Unreachable filler entries (no merge produces them) keep the ids dense up to the specials.
    for i in range(len(vocab), first_special):
        vocab[f"<|unused_{i}|>"] = i
    # Added tokens get consecutive ids, so the offsets between the ones Qwen3-TTS uses are filled with
    # reserved specials (Qwen2 has its vision/FIM tokens there).
    by_offset = {off: s for s, off in SPECIAL_TOKENS.items()}
    spec["added_tokens"] = [
        {"id": first_special + off, "content": by_offset.get(off, f"<|reserved_special_{off}|>"),
         "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for off in range(max(by_offset) + 1)
    ]
    return Tokenizer.from_str(json.dumps(spec))


def tiny_configs() -> tuple[dict, dict]:
    """Same structure as the released configs, shrunk (cf. ../shared/reference/common.py):
    16 code groups, 32-entry codebooks, codec vocab 1024+32 with control ids in the suppressed range."""
    cfg = copy.deepcopy(FULL_TTS)
    s = TINY_FIRST_SPECIAL
    cfg.update(im_start_token_id=s + 1, im_end_token_id=s + 2, tts_pad_token_id=s + 28,
               tts_bos_token_id=s + 29, tts_eos_token_id=s + 30, assistant_token_id=-1)  # set later
    cfg["speaker_encoder_config"] = {
        "mel_dim": 128, "enc_dim": 64, "enc_channels": [16, 16, 16, 16, 48],
        "enc_kernel_sizes": [5, 3, 3, 3, 1], "enc_dilations": [1, 2, 3, 4, 1],
        "enc_attention_channels": 8, "enc_res2net_scale": 8, "enc_se_channels": 8, "sample_rate": 24000}
    t = cfg["talker_config"]
    t.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16,
             rope_scaling={"interleaved": True, "mrope_section": [4, 2, 2], "rope_type": "default",
                           "type": "default"},
             text_hidden_size=48, text_vocab_size=TINY_TEXT_VOCAB, vocab_size=1024 + 32,
             codec_pad_id=1040, codec_bos_id=1041, codec_eos_token_id=1042, codec_think_id=1046,
             codec_nothink_id=1047, codec_think_bos_id=1048, codec_think_eos_id=1049,
             codec_language_id={"english": 1034, "chinese": 1039, "russian": 1053, "german": 1037})
    t["code_predictor_config"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                      vocab_size=32)
    st = copy.deepcopy(FULL_SPEECH_TOKENIZER)
    st["decoder_config"].update(latent_dim=64, codebook_dim=32, codebook_size=32, decoder_dim=96,
                                hidden_size=32, intermediate_size=64, head_dim=8, num_attention_heads=4,
                                num_key_value_heads=4, num_hidden_layers=2)
    st["encoder_config"].update(num_filters=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                num_key_value_heads=4, head_dim=8, intermediate_size=64, codebook_size=32,
                                codebook_dim=16, vector_quantization_hidden_dimension=16, upsample_groups=32)
    return cfg, st


def randomize_(module, gen, gain: float) -> None:
    """Replace the (near-identity / near-zero) HF init by a fan-in scaled Gaussian, so that greedy decoding
    does not collapse onto one code and the vocoder makes a non-trivial waveform."""
    import torch

    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("cluster_usage"):
                p.copy_(torch.rand(p.shape, generator=gen) * 2 + 0.5)
            elif p.dim() >= 2:
                fan_in = p.shape[1] * (math.prod(p.shape[2:]) if p.dim() > 2 else 1)
                if "embedding" in name or "embed_tokens" in name:
                    fan_in = p.shape[1] / 4
                p.normal_(0.0, gain / math.sqrt(fan_in), generator=gen)
            elif name.endswith((".alpha", ".beta")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif name.endswith(("gamma", ".scale")):
                p.fill_(0.3)


def init_encoder_codebooks_(st, gen, seconds: float = 4.0, alpha: float = 0.25) -> None:
    """The speech-tokenizer *encoder*'s codebooks (Mimi `embed_sum`, `cluster_usage`) are buffers, which
    `randomize_` (parameters only) leaves at their init: all-zero codebooks, so every code would be 0.
    Give them Gaussian entries at the scale of the data: run the encoder on a random chirp + noise and, level
    by level, draw entries with `alpha` x the rms of that level's residual (the residual then shrinks a few
    per cent per level and the nearest-code margins stay far above float noise at every level, as for trained
    codebooks); cluster_usage in [0.5, 2.5]. Draws from `gen` after everything else, so no other weight
    changes."""
    import torch

    mimi = st.encoder
    sr = int(st.config.input_sample_rate)
    n = int(seconds * sr)
    t = torch.arange(n, dtype=torch.float64) / sr
    f0 = 100 + 300 * torch.rand(1, generator=gen, dtype=torch.float64)
    wav = 0.3 * torch.sin(2 * math.pi * (f0 * t + 250 * t * t)) + 0.05 * torch.randn(n, generator=gen,
                                                                                          dtype=torch.float64)
    with torch.no_grad():
        h = mimi.encoder(wav.float()[None, None])
        h = mimi.encoder_transformer(h.transpose(1, 2), return_dict=True).last_hidden_state.transpose(1, 2)
        h = mimi.downsample(h)
        q = mimi.quantizer
        for rvq in (q.semantic_residual_vector_quantizer, q.acoustic_residual_vector_quantizer):
            r = rvq.input_proj(h)[0].t() if rvq.input_proj is not None else h[0].t()  # [N, D]
            for layer in rvq.layers:
                cb = layer.codebook
                k, d = cb.embed_sum.shape
                e = alpha * r.pow(2).mean().sqrt() * torch.randn(k, d, generator=gen)
                usage = torch.rand(k, generator=gen) * 2 + 0.5
                cb.embed_sum.copy_(e * usage[:, None])
                cb.cluster_usage.copy_(usage)
                cb._embed = None
                r = r - e[torch.cdist(r[None], e[None])[0].argmin(-1)]


def make_checkpoint(out: str | Path, size: str = "tiny", seed: int = 0, eos_scale: float = 0.25) -> Path:
    """`eos_scale` shrinks the codec-head row of EOS: with random weights and a 32-code tiny codebook EOS
    would otherwise win every ~30 frames, too early for long comparisons (1.0 keeps the plain init)."""
    import_qwen_tts()
    import torch
    from transformers import EncodecFeatureExtractor, Qwen2TokenizerFast
    from qwen_tts.core.models import Qwen3TTSConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSForConditionalGeneration
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if size == "tiny":
        tts_cfg, st_cfg = tiny_configs()
        first_special = TINY_FIRST_SPECIAL
    elif size == "full":
        tts_cfg, st_cfg = copy.deepcopy(FULL_TTS), copy.deepcopy(FULL_SPEECH_TOKENIZER)
        first_special = QWEN2_FIRST_SPECIAL
    else:
        raise ValueError(f"unknown size {size!r} (tiny|full)")

    # Text tokenizer (Qwen2 format: tokenizer.json, vocab.json, merges.txt, tokenizer_config.json).
    tok = build_text_tokenizer(first_special)
    fast = Qwen2TokenizerFast(tokenizer_object=tok, unk_token=None, bos_token=None,
                              eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.save_pretrained(str(out))
    # config.json must agree with its tokenizer (the released one: 77091); ours has its own id for it
    ids = tok.encode("<|im_start|>assistant\n").ids
    if len(ids) != 3:
        raise RuntimeError(f"tokenizer splits 'assistant': {ids}")
    tts_cfg["assistant_token_id"] = ids[1]

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Qwen3TTSForConditionalGeneration(Qwen3TTSConfig(**tts_cfg)).eval()
    randomize_(model, gen, gain=1.6)
    with torch.no_grad():
        model.talker.codec_head.weight[tts_cfg["talker_config"]["codec_eos_token_id"]] *= eos_scale
    # The release stores the main model in bfloat16 (the speech tokenizer in float32).
    model.to(torch.bfloat16).save_pretrained(str(out), safe_serialization=True)
    # config.json as released: the plain dict (save_pretrained would expand every sub-config).
    (out / "config.json").write_text(json.dumps({**tts_cfg, "torch_dtype": "bfloat16"}, indent=2) + "\n")
    (out / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
    del model

    st_dir = out / "speech_tokenizer"
    st = Qwen3TTSTokenizerV2Model(Qwen3TTSTokenizerV2Config(**st_cfg)).eval()
    randomize_(st, gen, gain=1.0)
    with torch.no_grad():
        # A random decoder is loud (pre-clamp rms ~17, ~95 % of samples at the +-1 clamp), which would hide
        # vocoder errors: scale the last conv so the waveform is unclipped (rms ~0.3).
        for p in st.decoder.decoder[-1].parameters():
            p.mul_(1 / 50)
    init_encoder_codebooks_(st, gen)  # last use of `gen`: every weight drawn above is unchanged
    st.save_pretrained(str(st_dir), safe_serialization=True)
    (st_dir / "config.json").write_text(json.dumps(st_cfg, indent=2) + "\n")
    EncodecFeatureExtractor(feature_size=1, sampling_rate=24000, padding_side="right", padding_value=0.0,
                            return_attention_mask=True).save_pretrained(str(st_dir))
    (out / "RANDOM_WEIGHTS.txt").write_text(
        f"Random-weight checkpoint made by scripts/make_checkpoint.py (size={size}, seed={seed}).\n"
        "It is NOT the released model: any audio synthesized from it is noise, not speech.\n")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="output checkpoint directory")
    ap.add_argument("--size", choices=["tiny", "full"], default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eos-scale", type=float, default=0.25, help="scale of the EOS row of codec_head")
    a = ap.parse_args(argv)
    p = make_checkpoint(a.out, a.size, a.seed, a.eos_scale)
    print(f"wrote random-weight {a.size} checkpoint to {p} (weights are random: audio from it is noise)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
