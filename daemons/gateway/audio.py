"""Incremental encoders for the OpenAI `response_format`s (PyAV, no ffmpeg subprocess).

    enc = open_encoder("mp3", speed=1.0)
    body = enc.feed(int16_samples)   # whatever the muxer produced so far (may be b"")
    body += enc.finish()             # the rest

mp3 (LAME, no Xing header), opus (Ogg/Opus), aac (ADTS), flac, wav, pcm (raw s16le 24 kHz mono). Every
format streams: bytes are handed out as the muxer writes them (`flush_packets`). A muxer that seeks
back to patch a header it already handed out (FLAC's STREAMINFO totals) leaves that header as written
at the start, which decoders read as "length unknown". wav starts with a 44-byte header whose RIFF and
data sizes are 0xFFFFFFFF (length unknown, as ffmpeg writes to a pipe). `speed` != 1.0 goes through
FFmpeg's `atempo` filter (time-stretch without pitch change); 1.0 leaves the samples untouched.
"""
from __future__ import annotations

import struct
from fractions import Fraction

import numpy as np

RATE = 24000
FORMATS = {  # response_format -> (Content-Type, container, codec)
    "mp3": ("audio/mpeg", "mp3", "libmp3lame"),
    "opus": ("audio/ogg", "ogg", "libopus"),
    "aac": ("audio/aac", "adts", "aac"),
    "flac": ("audio/flac", "flac", "flac"),
    "wav": ("audio/wav", None, None),
    "pcm": ("audio/pcm", None, None),
}


_MUX_OPTIONS = {"mp3": {"write_xing": "0"}, "opus": {"page_duration": "20000"}}  # Ogg: a page per 20 ms


def wav_header(data_bytes: int = 0xFFFFFFFF) -> bytes:
    riff = 0xFFFFFFFF if data_bytes == 0xFFFFFFFF else 36 + data_bytes
    return (b"RIFF" + struct.pack("<I", riff) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, RATE, RATE * 2, 2, 16)
            + b"data" + struct.pack("<I", data_bytes))


class _Sink:
    """A write-only file for the muxer that hands out what was written; seeks back into bytes already
    handed out are dropped."""

    def __init__(self):
        self.base = 0          # stream offset of buf[0]
        self.pos = 0
        self.buf = bytearray()

    def write(self, b) -> int:
        b = bytes(b)
        n = len(b)
        start = self.pos
        if start < self.base:
            b = b[self.base - start:]
            start = self.base
        off = start - self.base
        if b:
            if off > len(self.buf):
                self.buf.extend(b"\0" * (off - len(self.buf)))
            self.buf[off:off + len(b)] = b
        self.pos += n
        return n

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self.pos = offset
        elif whence == 1:
            self.pos += offset
        else:
            self.pos = self.base + len(self.buf) + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return True

    def take(self) -> bytes:
        out = bytes(self.buf)
        self.base += len(out)
        self.buf.clear()
        return out


class _Tempo:
    """atempo through a PyAV filter graph: int16 mono in, int16 mono out."""

    def __init__(self, speed: float):
        import av.filter

        self.g = av.filter.Graph()
        src = self.g.add_abuffer(format="s16", sample_rate=RATE, layout="mono", time_base=f"1/{RATE}")
        chain = [src]
        s = speed
        while s < 0.5:          # atempo takes 0.5..100 per instance
            chain.append(self.g.add("atempo", "0.5"))
            s /= 0.5
        chain.append(self.g.add("atempo", f"{s:.6f}"))
        chain.append(self.g.add("aformat", "sample_fmts=s16:channel_layouts=mono:sample_rates=24000"))
        chain.append(self.g.add("abuffersink"))
        for a, b in zip(chain, chain[1:]):
            a.link_to(b)
        self.g.configure()
        self.pts = 0

    def _pull(self) -> np.ndarray:
        import av

        out = []
        while True:
            try:
                f = self.g.pull()
            except (BlockingIOError, av.error.EAGAIN if hasattr(av.error, "EAGAIN") else BlockingIOError):
                break
            except (EOFError, av.error.EOFError):
                break
            out.append(f.to_ndarray().reshape(-1))
        return np.concatenate(out).astype(np.int16) if out else np.zeros(0, np.int16)

    def feed(self, x: np.ndarray) -> np.ndarray:
        import av

        if not len(x):
            return np.zeros(0, np.int16)
        f = av.AudioFrame.from_ndarray(x.reshape(1, -1), format="s16", layout="mono")
        f.sample_rate, f.pts = RATE, self.pts
        self.pts += len(x)
        self.g.push(f)
        return self._pull()

    def finish(self) -> np.ndarray:
        self.g.push(None)
        return self._pull()


class Encoder:
    def __init__(self, fmt: str, speed: float = 1.0):
        if fmt not in FORMATS:
            raise ValueError(f"unknown response_format {fmt!r}")
        self.fmt = fmt
        self.content_type = FORMATS[fmt][0]
        self.tempo = _Tempo(speed) if speed != 1.0 else None
        self.started = False
        self.container = None
        if FORMATS[fmt][1] is not None:
            import av

            self.sink = _Sink()
            self.container = av.open(self.sink, "w", format=FORMATS[fmt][1],
                                     options=_MUX_OPTIONS.get(fmt, {}),
                                     container_options={"flush_packets": "1"})
            kw = {"rate": RATE}
            if fmt != "flac":
                kw["bit_rate"] = 64000 if fmt in ("opus", "aac") else 128000
            self.stream = self.container.add_stream(FORMATS[fmt][2], **kw)
            self.stream.layout = "mono"
            cc = self.stream.codec_context
            self.resampler = av.AudioResampler(format=cc.format.name, layout="mono", rate=RATE)
            self.pending = np.zeros(0, np.int16)
            self.pts = 0

    def _encode(self, x: np.ndarray, final: bool) -> bytes:
        import av

        self.pending = np.concatenate([self.pending, x]) if len(x) else self.pending
        n = self.stream.codec_context.frame_size or 1024
        while len(self.pending) >= n or (final and len(self.pending)):
            chunk, self.pending = self.pending[:n], self.pending[n:]
            f = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk).reshape(1, -1), format="s16", layout="mono")
            f.sample_rate, f.pts, f.time_base = RATE, self.pts, Fraction(1, RATE)
            self.pts += len(chunk)
            for rf in self.resampler.resample(f):
                for p in self.stream.encode(rf):
                    self.container.mux(p)
        if final:
            for p in self.stream.encode(None):
                self.container.mux(p)
            self.container.close()
        return self.sink.take()

    def feed(self, x: np.ndarray) -> bytes:
        """int16 samples -> the bytes of the format that are ready."""
        x = np.asarray(x, np.int16)
        if self.tempo is not None:
            x = self.tempo.feed(x)
        return self._out(x, False)

    def finish(self) -> bytes:
        x = self.tempo.finish() if self.tempo is not None else np.zeros(0, np.int16)
        return self._out(x, True)

    def _out(self, x: np.ndarray, final: bool) -> bytes:
        if self.container is not None:
            return self._encode(x, final)
        head = b""
        if self.fmt == "wav" and not self.started:
            head = wav_header()
        self.started = True
        return head + x.astype("<i2").tobytes()


def open_encoder(fmt: str, speed: float = 1.0) -> Encoder:
    return Encoder(fmt, speed)
