#!/usr/bin/env python3
"""Export the two reference-audio encoders used for voice cloning to ONNX (conversion time; needs torch).

    python scripts/export_encoders.py CHECKPOINT_DIR OUT_DIR [--no-verify]

Writes into OUT_DIR (the runtime model directory):

  speech_encoder.onnx   the 12 Hz speech-tokenizer encoder (Mimi: SEANet convs -> 8-layer causal
                        transformer -> stride-2 downsample -> split RVQ, first 16 codebooks only)
                          input  wav   float32 [S]        mono, 24 kHz, any S >= 1
                          output codes int64   [F, 16]    F = ceil(S / 1920), frame-major
                        = `Qwen3TTSTokenizer.encode(wav, sr=24000).audio_codes[0]` of qwen-tts 0.1.1
  speaker_encoder.onnx  the ECAPA-TDNN speaker encoder (`speaker_encoder.*` of model.safetensors)
                          input  mel   float32 [1, T, 128] the log-mel of section 5.3 (T >= 5)
                          output xvector float32 [enc_dim] (1024 for the release)
                        = `Qwen3TTSForConditionalGeneration.speaker_encoder(mel)[0]`
  mel_filters.npy       librosa's slaney mel filterbank [128, 513] float32 (sr 24000, n_fft 1024, fmin 0,
                        fmax 12000), so that the runtime front end (daemons/engine/voice_encoder.py) needs no librosa
  (+ speech_encoder.onnx.data when the weights exceed 64 MiB, as for the vocoder)

Both graphs are torch modules that reuse the official submodules (and so their weights) with a
trace-friendly restatement of the parts the legacy exporter cannot follow:

  * the official encoder pads the *hidden signal* on the right before every strided conv to a whole number
    of strides (`MimiConv1d._get_extra_padding_for_conv1d`, data-dependent `ceil`). Here the waveform gets a
    fixed tail of zeros and, before each strided conv, everything past that level's valid length
    (ceil(valid / stride), computed in the graph from S) is zeroed (the stride-2 downsample, whose pad mode is
    "replicate", instead repeats the last valid frame). Every conv is causal, so the valid frames see exactly
    the official inputs; the last F = ceil(S/1920) frames are kept, as `Qwen3TTSTokenizerV2Model.encode` does.
  * the encoder transformer is full causal over the whole utterance: the official one-shot `encode` builds a
    plain causal mask (`create_causal_mask`, no KV cache), so the config's sliding_window (250) never applies.
  * the RVQ nearest-code search mirrors `torch.cdist`'s matrix-product form (|x|^2 + |e|^2 - 2 x.e, clamped,
    sqrt) followed by argmin (first index on ties, as torch), codebooks = embed_sum / clamp(cluster_usage).
  * attentive statistics pooling takes T from the tensor instead of building its mask with Python ints.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scripts.official import import_qwen_tts, load_speech_tokenizer  # noqa: E402

FORMAT = "qwen3-tts-voice-encoders"
FORMAT_VERSION = 1
SPEECH_ONNX = "speech_encoder.onnx"
SPEAKER_ONNX = "speaker_encoder.onnx"
MEL_NAME = "mel_filters.npy"
EXTERNAL_DATA_THRESHOLD = 64 << 20  # weights above this size go to `<name>.onnx.data` (as the vocoder)

# log-mel front end of `Qwen3TTSForConditionalGeneration.extract_speaker_embedding` (hard-coded there)
MEL = {"sample_rate": 24000, "n_fft": 1024, "hop": 256, "win": 1024, "n_mels": 128, "fmin": 0, "fmax": 12000,
       "window": "hann_periodic", "pad": (1024 - 256) // 2, "pad_mode": "reflect", "center": False,
       "magnitude_eps": 1e-9, "log_clip": 1e-5, "filters": MEL_NAME, "filters_norm": "slaney"}


# --- speech-tokenizer encoder ------------------------------------------------------------------------
def _build_speech_encoder_module(tok):
    """torch module wav [S] -> codes [ceil(S/1920), n_q] with the math of `Qwen3TTSTokenizerV2Model.encode`
    (batch of one, no padding mask), reusing the official encoder's submodules."""
    import torch
    import torch.nn.functional as F
    from transformers.models.mimi.modeling_mimi import MimiConv1d, MimiResnetBlock

    mimi = tok.encoder
    cfg = mimi.config
    if not cfg.use_causal_conv:
        raise ValueError("only the causal Mimi encoder is supported (use_causal_conv=false in the config)")
    n_q = int(tok.encoder_valid_num_quantizers)
    hop = int(tok.encode_downsample_rate)
    strides = math.prod(int(r) for r in cfg.upsampling_ratios) * int(mimi.downsample.conv.stride[0])
    if strides != hop:
        raise ValueError(f"encoder strides multiply to {strides}, encode_downsample_rate is {hop}")

    for name, m in mimi.named_modules():
        if isinstance(m, MimiConv1d) and m.pad_mode not in ("constant", "replicate"):
            raise ValueError(f"speech encoder conv {name}: pad_mode {m.pad_mode!r} is not supported "
                             "(constant or replicate)")

    def conv_spec(m: MimiConv1d) -> tuple:
        return (int(m.padding_total), m.pad_mode, int(m.conv.stride[0]))

    class SpeechEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = mimi.encoder.layers
            self.tfm = mimi.encoder_transformer.layers
            self.downsample = mimi.downsample
            q = mimi.quantizer
            self.n_sem = int(q.num_semantic_quantizers)
            if not self.n_sem <= n_q <= q.max_num_quantizers:
                raise ValueError(f"encoder_valid_num_quantizers={n_q} outside [{self.n_sem}, {q.max_num_quantizers}]")
            self.proj_sem = q.semantic_residual_vector_quantizer.input_proj
            self.proj_ac = q.acoustic_residual_vector_quantizer.input_proj
            books = list(q.semantic_residual_vector_quantizer.layers[: self.n_sem])
            books += list(q.acoustic_residual_vector_quantizer.layers[: n_q - self.n_sem])
            with torch.no_grad():
                embeds = [b.codebook.embed_sum / b.codebook.cluster_usage.clamp(min=b.codebook.epsilon)[:, None]
                          for b in books]  # == MimiEuclideanCodebook.embed
                # torch.cdist's "mm" form: [e, 1, |e|^2] against [-2x, |x|^2, 1]
                aug = [torch.cat([e, torch.ones_like(e[:, :1]), e.pow(2).sum(-1, keepdim=True)], -1).t()
                       for e in embeds]
            # one table per codebook, [D+2, K]: rows 0..D-1 are the entries themselves (gathered for the
            # residual update), row D is ones, row D+1 is |e|^2
            self.register_buffer("embed_aug_t", torch.stack(aug).contiguous())  # [n_q, D+2, K]
            self.dim = int(embeds[0].shape[1])
            a0 = self.tfm[0].self_attn
            self.n_heads, self.n_kv, self.head_dim = a0.num_heads, a0.num_key_value_heads, a0.head_dim
            self.scaling = float(a0.scaling)
            rot = a0.rotary_emb
            if getattr(rot, "rope_type", "default") != "default":
                raise ValueError(f"unsupported RoPE type {rot.rope_type!r} in the speech encoder")
            self.register_buffer("inv_freq", rot.inv_freq.detach().clone().float())
            self.rope_scaling = float(rot.attention_scaling)

        # conv with the official left padding; `valid` = number of valid input samples (tensor) for
        # strided convs, whose official right padding (zeros, or a repeat of the last valid sample for
        # "replicate") is reproduced by masking the tail.
        def _conv(self, m, h, valid):
            pad, mode, stride = conv_spec(m)
            if stride > 1:
                n = torch.ones_like(h[0, 0], dtype=torch.long).cumsum(0) - 1  # 0..L-1 (traced length)
                keep = (n < valid)[None, None, :]
                if mode == "replicate":
                    last = h.index_select(2, (valid - 1).reshape(1))
                    h = torch.where(keep, h, last)
                else:  # "constant" (zeros)
                    h = torch.where(keep, h, torch.zeros_like(h))
                valid = torch.div(valid + (stride - 1), stride, rounding_mode="floor")
            if pad > 0:
                if mode == "constant":
                    h = F.pad(h, (pad, 0), mode="constant", value=0.0)
                else:
                    h = F.pad(h, (pad, 0), mode=mode)
            return m.conv(h), valid

        def _attention(self, lay, x, cos, sin, mask):
            a = lay.self_attn
            q = a.q_proj(x).view(1, -1, self.n_heads, self.head_dim).transpose(1, 2)
            k = a.k_proj(x).view(1, -1, self.n_kv, self.head_dim).transpose(1, 2)
            v = a.v_proj(x).view(1, -1, self.n_kv, self.head_dim).transpose(1, 2)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            if self.n_heads != self.n_kv:
                k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
                v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            w = torch.matmul(q, k.transpose(2, 3)) * self.scaling + mask
            w = torch.softmax(w, dim=-1)
            o = torch.matmul(w, v).transpose(1, 2).reshape(1, -1, self.n_heads * self.head_dim)
            return a.o_proj(o)

        def _rvq(self, x, books, codes):
            # x [N, D] residual; books = range of codebook indices
            for i in books:
                xa = torch.cat([x * -2.0, x.pow(2).sum(-1, keepdim=True), torch.ones_like(x[:, :1])], -1)
                d = torch.matmul(xa, self.embed_aug_t[i]).clamp_min(0).sqrt()  # [N, K]
                idx = torch.argmin(d, dim=-1)
                # gather whole columns, then drop the 2 extra rows (slicing the table first would be
                # constant-folded into a second copy of every codebook)
                x = x - self.embed_aug_t[i].index_select(1, idx)[: self.dim].t()
                codes.append(idx)

        def forward(self, wav):
            S = torch.ones_like(wav, dtype=torch.long).sum()  # valid samples (traced)
            # a tail of `hop` zeros: at every level the array then covers ceil(valid / stride) * stride
            h = torch.cat([wav, torch.zeros_like(wav[:1]).expand(hop)])[None, None, :]
            valid = S
            for layer in self.layers:
                if isinstance(layer, MimiConv1d):
                    h, valid = self._conv(layer, h, valid)
                elif isinstance(layer, MimiResnetBlock):
                    res = h
                    for sub in layer.block:
                        h = self._conv(sub, h, valid)[0] if isinstance(sub, MimiConv1d) else sub(h)
                    if isinstance(layer.shortcut, MimiConv1d):
                        res = self._conv(layer.shortcut, res, valid)[0]
                    h = res + h
                else:
                    h = layer(h)
            # transformer at 25 Hz: full causal attention, RoPE positions 0..T-1
            x = h.transpose(1, 2)  # [1, T, C]
            pos = (torch.ones_like(x[0, :, 0]).cumsum(0) - 1.0)  # float positions 0..T-1
            freqs = pos[:, None] * self.inv_freq[None, :]
            emb = torch.cat([freqs, freqs], dim=-1)[None, None]  # [1, 1, T, hd]
            cos, sin = emb.cos() * self.rope_scaling, emb.sin() * self.rope_scaling
            mask = torch.where(pos[None, :] > pos[:, None], float("-inf"), 0.0)  # [T, T] causal
            for lay in self.tfm:
                res = x
                y = self._attention(lay, lay.input_layernorm(x), cos, sin, mask)
                x = res + lay.self_attn_layer_scale(y)
                res = x
                x = res + lay.mlp_layer_scale(lay.mlp(lay.post_attention_layernorm(x)))
            h = x.transpose(1, 2)
            h, valid = self._conv(self.downsample, h, valid)  # 12.5 Hz; valid = ceil(ceil(S/960)/2)
            # split RVQ
            codes = []
            self._rvq(self.proj_sem(h)[0].t(), range(self.n_sem), codes)
            self._rvq(self.proj_ac(h)[0].t(), range(self.n_sem, n_q), codes)
            codes = torch.stack(codes, dim=1)  # [N, n_q]
            frames = torch.div(S + (hop - 1), hop, rounding_mode="floor")  # ceil(S / 1920)
            keep = torch.ones_like(codes[:, 0]).cumsum(0) - 1
            return codes.index_select(0, keep[keep < frames])

    return SpeechEncoder().eval()


def _rotate_half(x):
    import torch

    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


# --- speaker encoder ---------------------------------------------------------------------------------
def load_speaker_encoder(checkpoint_dir: str | Path):
    """The official `Qwen3TTSSpeakerEncoder` with the checkpoint's `speaker_encoder.*` weights (float32),
    without building the rest of the model."""
    import_qwen_tts()
    import torch
    from qwen_tts.core.models import Qwen3TTSConfig
    from qwen_tts.core.models.modeling_qwen3_tts import Qwen3TTSSpeakerEncoder
    from safetensors import safe_open

    ckpt = Path(checkpoint_dir)
    cfg = Qwen3TTSConfig(**json.loads((ckpt / "config.json").read_text()))
    enc = Qwen3TTSSpeakerEncoder(cfg.speaker_encoder_config)
    sd = {}
    with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
        for k in f.keys():
            if k.startswith("speaker_encoder."):
                sd[k[len("speaker_encoder."):]] = f.get_tensor(k).float()
    if not sd:
        raise ValueError(f"{ckpt}/model.safetensors has no speaker_encoder.* tensors (not a Base checkpoint?)")
    missing, unexpected = enc.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ValueError(f"speaker encoder weights do not match the config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return enc.to(torch.float32).eval(), cfg.speaker_encoder_config


def _build_speaker_encoder_module(spk):
    """mel [1, T, mel_dim] -> x-vector [enc_dim]: `Qwen3TTSSpeakerEncoder.forward(mel)[0]`, official blocks;
    attentive statistics pooling restated without Python-int lengths (batch of one: the mask is all ones)."""
    import torch
    import torch.nn.functional as F

    class SpeakerEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks, self.mfa, self.asp, self.fc = spk.blocks, spk.mfa, spk.asp, spk.fc
            self.eps = float(spk.asp.eps)

        def _stats(self, x, m):
            mean = (m * x).sum(2)
            std = torch.sqrt((m * (x - mean.unsqueeze(2)).pow(2)).sum(2).clamp(self.eps))
            return mean, std

        def forward(self, mel):
            h = mel.transpose(1, 2)
            hs = []
            for layer in self.blocks:
                h = layer(h)
                hs.append(h)
            h = self.mfa(torch.cat(hs[1:], dim=1))
            # attentive statistics pooling (AttentiveStatisticsPooling.forward with lengths = [T])
            total = torch.ones_like(h[:, :1, :]).sum(2, keepdim=True)  # [1, 1, 1] = T
            m = torch.ones_like(h[:, :1, :]) / total
            mean, std = self._stats(h, m)
            att = torch.cat([h, mean.unsqueeze(2).expand_as(h), std.unsqueeze(2).expand_as(h)], dim=1)
            att = self.asp.conv(self.asp.tanh(self.asp.tdnn(att)))
            att = F.softmax(att, dim=2)
            mean, std = self._stats(h, att)
            pooled = torch.cat((mean, std), dim=1).unsqueeze(2)
            return self.fc(pooled)[0, :, 0]

    return SpeakerEncoder().eval()


def mel_filters():
    """librosa.filters.mel exactly as `modeling_qwen3_tts.mel_spectrogram` calls it (float32 [n_mels, n_fft/2+1])."""
    import numpy as np
    from librosa.filters import mel as librosa_mel_fn

    return np.asarray(librosa_mel_fn(sr=MEL["sample_rate"], n_fft=MEL["n_fft"], n_mels=MEL["n_mels"],
                                     fmin=MEL["fmin"], fmax=MEL["fmax"]), dtype=np.float32)


# --- export ------------------------------------------------------------------------------------------
def _export(module, args, path: Path, in_names, out_names, dynamic_axes, opset: int) -> tuple[list[str], int]:
    """Legacy (TorchScript) export into `path`; weights above the threshold go to `<name>.data`.
    Returns (files written, weight bytes)."""
    import numpy as np
    import onnx
    import torch

    data_name = path.name + ".data"
    for stale in (path, path.parent / data_name):
        if stale.exists():
            stale.unlink()
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        tmp_path = Path(tmp) / path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, args, str(tmp_path), input_names=in_names, output_names=out_names,
                              dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
                              do_constant_folding=True)
        model = onnx.load(str(tmp_path), load_external_data=True)
    weight_bytes = sum(int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                       for t in model.graph.initializer)
    if weight_bytes > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(path.parent / data_name, 0o666 & ~umask)  # onnx writes it 0600
        return [path.name, data_name], weight_bytes
    onnx.save_model(model, str(path))
    return [path.name], weight_bytes


def export_encoders(ckpt: str | Path, out: str | Path, log=print, *, opset: int = 18, verify: bool = True,
                    seed: int = 0) -> dict:
    """Write speech_encoder.onnx, speaker_encoder.onnx and mel_filters.npy into `out`.
    Returns {"files": [names written], "speech_encoder": {...}, "speaker_encoder": {...}, "mel": {...}}
    (the three specs go to the manifest's "voice" entry). Same checkpoint -> same bytes."""
    import numpy as np
    import torch

    import_qwen_tts()
    ckpt, out = Path(ckpt), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: list[str] = []

    # speech-tokenizer encoder
    t0 = time.time()
    tok = load_speech_tokenizer(ckpt)
    se = _build_speech_encoder_module(tok)
    hop = int(tok.encode_downsample_rate)
    n_q = int(tok.encoder_valid_num_quantizers)
    ecfg = tok.encoder.config
    ex = torch.from_numpy(np.random.default_rng(seed).standard_normal(3 * hop + 123).astype(np.float32) * 0.1)
    f_se, wb_se = _export(se, (ex,), out / SPEECH_ONNX, ["wav"], ["codes"],
                          {"wav": {0: "S"}, "codes": {0: "F"}}, opset)
    files += f_se
    speech = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "onnx": SPEECH_ONNX, "files": f_se, "external_data": f_se[1] if len(f_se) > 1 else None,
        "exporter": "legacy", "opset": opset,
        "sample_rate": int(tok.get_input_sample_rate()), "samples_per_frame": hop, "num_quantizers": n_q,
        "codebook_size": int(ecfg.codebook_size),
        "inputs": {"wav": {"shape": ["S"], "dtype": "float32"}},
        "outputs": {"codes": {"shape": [f"ceil(S/{hop})", n_q], "dtype": "int64"}},
        "weights_bytes": int(wb_se),
        "encoder_config": {k: getattr(ecfg, k) for k in (
            "num_filters", "upsampling_ratios", "hidden_size", "num_hidden_layers", "num_attention_heads",
            "num_quantizers", "num_semantic_quantizers", "codebook_dim", "sliding_window")},
        "attention": "full causal (the official one-shot encode ignores sliding_window)",
    }
    log(f"speech encoder: {n_q} of {ecfg.num_quantizers} codebooks -> {', '.join(f_se)} "
        f"({wb_se / 2**20:.1f} MiB, {time.time() - t0:.1f} s)")

    # speaker encoder
    t1 = time.time()
    spk, scfg = load_speaker_encoder(ckpt)
    sm = _build_speaker_encoder_module(spk)
    mel_ex = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal((1, 57, scfg.mel_dim))
                              .astype(np.float32))
    f_sp, wb_sp = _export(sm, (mel_ex,), out / SPEAKER_ONNX, ["mel"], ["xvector"], {"mel": {1: "T"}}, opset)
    files += f_sp
    min_frames = 1 + max((k - 1) * d // 2 for k, d in zip(scfg.enc_kernel_sizes, scfg.enc_dilations))
    speaker = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "onnx": SPEAKER_ONNX, "files": f_sp, "external_data": f_sp[1] if len(f_sp) > 1 else None,
        "exporter": "legacy", "opset": opset, "sample_rate": int(scfg.sample_rate),
        "mel_dim": int(scfg.mel_dim), "enc_dim": int(scfg.enc_dim), "min_frames": int(min_frames),
        "inputs": {"mel": {"shape": [1, "T", int(scfg.mel_dim)], "dtype": "float32"}},
        "outputs": {"xvector": {"shape": [int(scfg.enc_dim)], "dtype": "float32"}},
        "weights_bytes": int(wb_sp),
    }
    if int(scfg.mel_dim) != MEL["n_mels"]:
        raise ValueError(f"speaker encoder mel_dim {scfg.mel_dim} != the front end's {MEL['n_mels']} mels")
    np.save(out / MEL_NAME, mel_filters())
    files.append(MEL_NAME)
    mel = dict(MEL)
    log(f"speaker encoder: enc_dim {scfg.enc_dim} -> {', '.join(f_sp)}, {MEL_NAME} "
        f"({wb_sp / 2**20:.1f} MiB, {time.time() - t1:.1f} s)")

    res = {"files": files, "speech_encoder": speech, "speaker_encoder": speaker, "mel": mel}
    if verify:
        res["verify"] = _verify(tok, spk, out, res, seed)
    return res


def _verify(tok, spk, out: Path, spec: dict, seed: int) -> dict:
    """Cheap self-check on a 2.3 s chirp + noise: onnxruntime codes vs the official encode (>= 99 % identical;
    exactly identical on the random checkpoints tested), x-vector cosine on a random log-mel >= 0.9999.
    Raises RuntimeError otherwise."""
    import numpy as np
    import onnxruntime as ort
    import torch

    sr = spec["speech_encoder"]["sample_rate"]
    n = int(2.3 * sr) + 77
    t = np.arange(n) / sr
    g = np.random.default_rng(seed + 2)
    wav = (0.3 * np.sin(2 * np.pi * (150 * t + 400 * t * t)) + 0.05 * g.standard_normal(n)).astype(np.float32)
    with torch.no_grad():
        ref = tok.encode(torch.from_numpy(wav)[None], torch.ones(1, n, dtype=torch.long))
    ref = ref.audio_codes[0].numpy()
    so = ort.SessionOptions()
    so.intra_op_num_threads = min(2, os.cpu_count() or 1)
    s1 = ort.InferenceSession(str(out / SPEECH_ONNX), so, providers=["CPUExecutionProvider"])
    got = s1.run(None, {"wav": wav})[0]
    if got.shape != ref.shape:
        raise RuntimeError(f"voice encoder export self-check failed: codes {got.shape}, official {ref.shape}")
    same = float(np.mean(got == ref))
    res = {"samples": n, "frames": int(got.shape[0]), "codes_equal": bool(same == 1.0),
           "codes_identical_fraction": round(same, 4)}
    g2 = np.random.default_rng(seed + 3)
    mel = (g2.standard_normal((1, 93, spec["speaker_encoder"]["mel_dim"])) - 4.0).astype(np.float32)
    with torch.no_grad():
        xr = spk(torch.from_numpy(mel))[0].numpy()
    s2 = ort.InferenceSession(str(out / SPEAKER_ONNX), so, providers=["CPUExecutionProvider"])
    xg = s2.run(None, {"mel": mel})[0]
    xr, xg = xr.astype(np.float64), xg.astype(np.float64)
    cos = float(np.dot(xr, xg) / (np.linalg.norm(xr) * np.linalg.norm(xg) + 1e-300))
    res["xvector_cosine"] = round(cos, 7)
    # codes: a nearest-code search flips on an exact near-tie when the float rounding differs (onnxruntime
    # vs torch kernels), so one odd code is tolerated here; a real export error changes most of them
    if same < 0.99 or cos < 0.9999:
        raise RuntimeError(f"voice encoder export self-check failed: {res}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="checkpoint directory (config.json, model.safetensors, speech_tokenizer/)")
    ap.add_argument("out", help="output directory")
    ap.add_argument("--opset", type=int, default=18)
    ap.add_argument("--no-verify", action="store_true", help="skip the short ORT-vs-official self-check")
    a = ap.parse_args(argv)
    t0 = time.time()
    spec = export_encoders(a.checkpoint, a.out, opset=a.opset, verify=not a.no_verify)
    print(json.dumps({"seconds": round(time.time() - t0, 2), "files": spec["files"],
                      **({"verify": spec["verify"]} if "verify" in spec else {})}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
