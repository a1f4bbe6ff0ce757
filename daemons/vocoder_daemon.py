"""Vocoder daemon: one stateful decoder stream per request id; frames in, 24 kHz PCM out."""
from __future__ import annotations

from collections import OrderedDict

from . import protocol
from .manifest import ModelDir
from .service import WorkerService
from .vocoder import VocoderEngine

MAX_STREAMS = 32  # least recently used streams beyond this are dropped


class VocoderDaemon(WorkerService):
    role = "vocoder"

    def load(self) -> None:
        self.md = ModelDir(self.cfg.model_dir)
        self.engine = VocoderEngine(self.md.file(self.md.vocoder["onnx"]), self.md.vocoder, threads=self.threads)
        self.streams: OrderedDict[str, tuple] = OrderedDict()  # id -> (stream, next seq)
        self.sock = self.bind_router(self.cfg.endpoints["vocoder"])

    def warmup(self) -> None:
        import numpy as np

        self.engine.new_stream().decode(np.zeros((2, 16), dtype=np.int64))

    def pong(self) -> dict:
        return {"streams": len(self.streams)}

    def handle_close(self, ident: bytes, msg: protocol.Message) -> None:
        self.streams.pop(msg.id, None)

    def handle_frames(self, ident: bytes, msg: protocol.Message) -> None:
        rid, seq = msg.id, msg.header.get("seq")
        if rid is None or not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            self.reply(self.sock, ident, protocol.error(rid, "bad_request", "frames needs an id and a seq >= 0"))
            return
        if seq == 0:
            self.streams[rid] = (self.engine.new_stream(), 0)
        entry = self.streams.get(rid)
        if entry is None or entry[1] != seq:
            # a restarted vocoder (or a lost chunk) must not continue a stream from the wrong state
            self.reply(self.sock, ident, protocol.error(rid, "unknown_stream",
                                                        f"no stream state for {rid!r} at seq {seq}"))
            self.streams.pop(rid, None)
            return
        stream, _ = entry
        try:
            pcm = stream.decode(msg.arrays.get("codes"))
        except (ValueError, TypeError) as e:
            self.streams.pop(rid, None)
            self.reply(self.sock, ident, protocol.error(rid, "bad_request", str(e)))
            return
        self.streams[rid] = (stream, seq + 1)
        self.streams.move_to_end(rid)
        while len(self.streams) > MAX_STREAMS:
            self.streams.popitem(last=False)
        self.reply(self.sock, ident, protocol.encode("audio", {"pcm": pcm}, id=rid, seq=seq))
