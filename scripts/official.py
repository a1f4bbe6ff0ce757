"""Access to the official implementation (`qwen-tts` 0.1.1): import it on a CPU-only torch,
load a checkpoint directory with its own classes. Conversion-time and test-time only (needs torch)."""
from __future__ import annotations

import importlib.machinery
import sys
import types
from pathlib import Path


def install_torchaudio_standin() -> None:
    """`qwen_tts/__init__` imports torchaudio, whose PyPI wheel is CUDA-linked and cannot load on a
    CPU torch. Only the 25 Hz tokenizer uses it (kaldi fbank), so a stand-in module is enough.
    Must run after `import transformers` (which then records torchaudio as absent) and before qwen_tts."""
    import transformers  # noqa: F401

    if "torchaudio" in sys.modules:
        return
    try:  # a working torchaudio (e.g. a CPU build on the board) is preferred
        import torchaudio  # noqa: F401
        return
    except Exception:
        sys.modules.pop("torchaudio", None)
    ta = types.ModuleType("torchaudio")
    comp = types.ModuleType("torchaudio.compliance")
    kaldi = types.ModuleType("torchaudio.compliance.kaldi")

    def _missing(*_a, **_k):
        raise RuntimeError("torchaudio stand-in: kaldi fbank is only used by the 25 Hz tokenizer")

    kaldi.fbank = _missing
    for m in (ta, comp, kaldi):
        m.__spec__ = importlib.machinery.ModuleSpec(m.__name__, None)
    ta.compliance = comp
    comp.kaldi = kaldi
    sys.modules.update({"torchaudio": ta, "torchaudio.compliance": comp, "torchaudio.compliance.kaldi": kaldi})


def import_qwen_tts():
    install_torchaudio_standin()
    import qwen_tts  # noqa: F401

    return qwen_tts


def load_official(checkpoint_dir: str | Path):
    """The official wrapper (`Qwen3TTSModel`: model + speech tokenizer + processor), fp32 on CPU, eval."""
    import_qwen_tts()
    import torch
    from qwen_tts import Qwen3TTSModel

    m = Qwen3TTSModel.from_pretrained(str(checkpoint_dir), dtype=torch.float32, attn_implementation="eager")
    m.model.eval()
    return m


def load_speech_tokenizer(checkpoint_dir: str | Path):
    """The official speech tokenizer model (`Qwen3TTSTokenizerV2Model`) from `<ckpt>/speech_tokenizer`."""
    import_qwen_tts()
    import torch
    from qwen_tts.core.tokenizer_12hz.configuration_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Config
    from qwen_tts.core.tokenizer_12hz.modeling_qwen3_tts_tokenizer_v2 import Qwen3TTSTokenizerV2Model

    d = Path(checkpoint_dir) / "speech_tokenizer"
    cfg = Qwen3TTSTokenizerV2Config.from_pretrained(str(d))
    return Qwen3TTSTokenizerV2Model.from_pretrained(str(d), config=cfg, dtype=torch.float32).eval()
