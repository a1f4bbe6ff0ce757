"""Predictor daemon: codes 1..15 and the feedback embedding for one frame per `predict` request."""
from __future__ import annotations

import numpy as np

from . import protocol
from .engine.manifest import ModelDir
from .engine.predictor import PredictorEngine
from .engine.sampling import SamplingParams
from .service import WorkerService

SUB_PARAMS = ("sub_do_sample", "sub_temperature", "sub_top_k", "sub_top_p")


def sub_params(d) -> SamplingParams:
    """The predictor's share of the sampling parameters, validated (ValueError on nonsense)."""
    if not isinstance(d, dict) or set(d) - set(SUB_PARAMS):
        raise ValueError(f"params must be an object with keys among {', '.join(SUB_PARAMS)}")
    p = SamplingParams()
    for k, v in d.items():
        if k == "sub_do_sample":
            if not isinstance(v, bool):
                raise ValueError("sub_do_sample must be a boolean")
        elif not isinstance(v, (int, float)) or isinstance(v, bool):
            raise ValueError(f"{k} must be a number")
        setattr(p, k, int(v) if k == "sub_top_k" else v)
    p.validate()
    return p


class PredictorDaemon(WorkerService):
    role = "predictor"

    def load(self) -> None:
        self.md = ModelDir(self.cfg.model_dir)
        self.engine = PredictorEngine(self.md, threads=self.threads)
        self.hidden = self.md.talker["hidden_size"]
        self.sock = self.bind_router(self.cfg.endpoints["predictor"])

    def warmup(self) -> None:
        self.engine.predict(np.zeros(self.hidden, np.float32), 0, SamplingParams(), 0, 0)

    def handle_predict(self, ident: bytes, msg: protocol.Message) -> None:
        rid = msg.id
        h = msg.header
        try:
            hidden = msg.arrays.get("hidden")
            if hidden is None or hidden.dtype != np.float32 or hidden.shape != (self.hidden,) \
                    or not np.isfinite(hidden).all():
                raise ValueError(f"hidden must be {self.hidden} finite float32 values")
            c0, seed, frame = h.get("c0"), h.get("seed"), h.get("frame")
            for name, v in (("c0", c0), ("seed", seed), ("frame", frame)):
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    raise ValueError(f"{name} must be a non-negative integer")
            if c0 >= self.engine.codebook_size:
                raise ValueError(f"c0 must be < {self.engine.codebook_size}")
            params = sub_params(h.get("params", {}))
        except ValueError as e:
            self.reply(self.sock, ident, protocol.error(rid, "bad_request", str(e)))
            return
        codes, feedback = self.engine.predict(hidden, c0, params, seed, frame)
        self.reply(self.sock, ident, protocol.encode("codes", {"codes": codes, "feedback": feedback},
                                                     id=rid, frame=frame))
