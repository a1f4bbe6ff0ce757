"""Shared fixtures: one tiny random-weight checkpoint (official classes) and its f32 conversion per session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from scripts.make_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", seed=1234)


@pytest.fixture(scope="session")
def eos_ckpt(tmp_path_factory) -> Path:
    """Plain init of the EOS row: this tiny model stops on EOS within a few dozen frames."""
    from scripts.make_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "eos", "tiny", seed=99, eos_scale=1.0)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt, tmp_path_factory) -> Path:
    from scripts.convert import convert

    return convert(tiny_ckpt, tmp_path_factory.mktemp("model") / "f32", "f32", log=lambda *_: None)


@pytest.fixture(scope="session")
def official(tiny_ckpt):
    from scripts.official import load_official

    return load_official(tiny_ckpt)


@pytest.fixture(scope="session")
def synth(tiny_model):
    from daemons.engine.synth import Synthesizer

    s = Synthesizer(tiny_model, threads=2)
    yield s
    s.close()


def snr_db(ref, x) -> float:
    import numpy as np

    ref = np.asarray(ref, dtype=np.float64)
    err = ref - np.asarray(x, dtype=np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum(err ** 2), 1e-300)))
