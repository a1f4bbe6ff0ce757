"""Write a stack of Qwen3 decoder layers as a plain `qwen3` GGUF fed input embeddings, and quantize it
with llama.cpp's own quantizer (llama-cpp-python's `llama_model_quantize`)."""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

# HF layer key -> GGUF tensor name (MODEL.md 3.3)
LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}

QUANT_FTYPES = {"q8_0": 7, "q4_k_m": 15}  # LLAMA_FTYPE_MOSTLY_*


def write_qwen3_gguf(path: Path, *, name: str, get, prefix: str, n_layers: int, hidden: int, ffn: int,
                     heads: int, kv_heads: int, head_dim: int, rope_theta: float, eps: float, ctx_len: int,
                     token_embd: np.ndarray, output: np.ndarray, f16: bool,
                     keep_f32: tuple[str, ...] = ()) -> None:
    """`get(key)` returns the float32 numpy array of checkpoint tensor `key`; layers live under `prefix`.
    `token_embd`/`output` define the vocabulary (inputs are always embeddings, so token_embd only has to
    exist; `output` is the head whose logits llama.cpp returns). With `f16`, GGUF tensor names ending in
    one of `keep_f32` stay float32."""
    import gguf

    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_name(name)
    w.add_context_length(ctx_len)
    w.add_embedding_length(hidden)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(float(rope_theta))
    w.add_layer_norm_rms_eps(float(eps))
    w.add_vocab_size(int(output.shape[0]))
    w.add_tokenizer_model("none")  # no tokenizer: rows are fed as embeddings
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)

    def mat(a: np.ndarray, name: str = "") -> np.ndarray:
        a = np.ascontiguousarray(a, dtype=np.float32)
        return a.astype(np.float16) if (f16 and a.ndim == 2 and not name.endswith(keep_f32 or ("\0",))) else a

    w.add_tensor("token_embd.weight", mat(token_embd))
    for i in range(n_layers):
        for hf, gg in LAYER_MAP.items():
            w.add_tensor(f"blk.{i}.{gg}", mat(get(f"{prefix}layers.{i}.{hf}"), gg))
    w.add_tensor("output_norm.weight", mat(get(f"{prefix}norm.weight")))
    w.add_tensor("output.weight", mat(output))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def quantize_gguf(src: Path, dst: Path, quant: str, threads: int = 0) -> None:
    """llama.cpp's quantizer; tensors whose rows do not fit the K-quant block size fall back as llama.cpp
    decides (relevant only for tiny test models)."""
    import llama_cpp as L

    from daemons.engine.llama_backend import _backend_init

    _backend_init()
    params = L.llama_model_quantize_default_params()
    params.ftype = QUANT_FTYPES[quant]
    params.nthread = threads
    rc = L.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({quant}) failed with code {rc}")
