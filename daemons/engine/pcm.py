"""The one float -> 16-bit PCM conversion (tts-client --output-raw, the gateway's formats, the tests)."""
from __future__ import annotations

import numpy as np

SAMPLE_RATE = 24000


def to_int16(x) -> np.ndarray:
    """float32 samples in [-1, 1] -> int16 (clipped, x 32767, rounded half to even)."""
    return (np.clip(np.asarray(x, np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")


def pcm16_bytes(x) -> bytes:
    """-> raw s16le bytes."""
    return to_int16(x).tobytes()
