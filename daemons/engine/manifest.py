"""The runtime model directory written by `scripts/convert.py`: `manifest.json` plus the files it names."""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import ModelError

FORMAT = "qwen3-tts-model"
FORMAT_VERSION = 1
SAMPLE_RATE = 24000
SAMPLES_PER_FRAME = 1920


class ModelDir:
    """Read-only view of a converted model directory. Tables are memory-mapped, loaded on first use."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        mf = self.path / "manifest.json"
        if not self.path.is_dir():
            raise ModelError(f"model directory not found: {self.path}")
        if not mf.is_file():
            raise ModelError(f"{self.path} has no manifest.json: convert a checkpoint with scripts/convert.py")
        try:
            self.manifest = json.loads(mf.read_text())
        except (OSError, ValueError) as e:
            raise ModelError(f"unreadable manifest {mf}: {e}") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"{mf}: not a {FORMAT} v{FORMAT_VERSION} manifest "
                             f"(format={self.manifest.get('format')!r}, "
                             f"version={self.manifest.get('format_version')!r}); re-run scripts/convert.py")
        for name in self.manifest["files"]:
            if not (self.path / name).is_file():
                raise ModelError(f"model directory {self.path} is incomplete: {name} is missing")
        self.talker = self.manifest["talker"]
        self.predictor = self.manifest["predictor"]
        self.special = self.manifest["special"]
        self.languages: dict[str, int] = self.manifest["languages"]
        self.generation = self.manifest["generation"]
        self.vocoder = self.manifest["vocoder"]

    def file(self, name: str) -> Path:
        return self.path / name

    def table(self, key: str) -> np.ndarray:
        return np.load(self.path / self.manifest["tables"][key], mmap_mode="r")

    @cached_property
    def text_table(self) -> np.ndarray:
        """text_projection(text_embedding) for every text token id: [text_vocab, hidden]."""
        return self.table("text_embeddings")

    @cached_property
    def codec_embedding(self) -> np.ndarray:
        """The talker's codec table C: [codec_vocab, hidden] (control tokens and codebook 0)."""
        return np.ascontiguousarray(self.table("codec_embedding"), dtype=np.float32)

    @cached_property
    def predictor_embeddings(self) -> np.ndarray:
        """E_1..E_15: [15, codebook_size, hidden], memory-mapped (fp32, or fp16 in quantized conversions);
        rows are looked up and summed in fp32."""
        return self.table("predictor_embeddings")

    @cached_property
    def predictor_heads(self) -> np.ndarray:
        """lm_head[0..14]: [15, codebook_size, predictor_hidden]."""
        return np.ascontiguousarray(self.table("predictor_heads"), dtype=np.float32)

    def mtp_projection(self) -> tuple[np.ndarray, np.ndarray] | None:
        """small_to_mtp_projection (talker hidden -> predictor hidden); None where it is the identity."""
        if not self.manifest["tables"].get("mtp_proj_w"):
            return None
        return (np.asarray(self.table("mtp_proj_w"), dtype=np.float32),
                np.asarray(self.table("mtp_proj_b"), dtype=np.float32))
