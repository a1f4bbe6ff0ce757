"""Predictor daemon: codes 1..15 and the feedback embedding for one frame per `predict` request."""
from __future__ import annotations

import math
import os
import time

import numpy as np

from . import protocol
from .cpu import format_cpu_list
from .engine.manifest import ModelDir
from .engine.predictor import PredictorEngine
from .engine.sampling import SamplingParams
from .service import WORKER_RCVHWM, WorkerService

SUB_PARAMS = ("sub_do_sample", "sub_temperature", "sub_top_k", "sub_top_p")
MAX_SEED = 1 << 63   # seed in [0, 2**63), like the talker's
MAX_FRAME = 1 << 31  # frame index in [0, 2**31)


def sub_params(d) -> SamplingParams:
    """The predictor's share of the sampling parameters, validated (ValueError on nonsense): sub_do_sample a
    boolean; sub_temperature, sub_top_p finite numbers; sub_top_k an integer; ranges as in
    SamplingParams.validate (sub_temperature >= 1e-5, sub_top_p in (0, 1], sub_top_k in 0..2**20)."""
    if not isinstance(d, dict) or set(d) - set(SUB_PARAMS):
        raise ValueError(f"params must be an object with keys among {', '.join(SUB_PARAMS)}")
    p = SamplingParams()
    for k, v in d.items():
        if k == "sub_do_sample":
            if not isinstance(v, bool):
                raise ValueError("sub_do_sample must be a boolean")
        elif isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{k} must be a finite number")
        elif k == "sub_top_k":
            if v != int(v):
                raise ValueError("sub_top_k must be an integer")
            v = int(v)
        setattr(p, k, v)
    p.validate()
    return p


def _int_in(name: str, v, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < hi:
        raise ValueError(f"{name} must be an integer in [0, {hi})")
    return v


class PredictorDaemon(WorkerService):
    role = "predictor"

    def load(self) -> None:
        self.md = ModelDir(self.cfg.model_dir)
        self.engine = PredictorEngine(self.md, threads=self.threads)
        self.hidden = self.md.talker["hidden_size"]
        self.sock = self.bind_router(self.cfg.endpoints["predictor"], private=True, rcvhwm=WORKER_RCVHWM)

    def status_line(self) -> str:
        burst = f"{self.burst_threads}@{format_cpu_list(self.burst_cpus)}" if self.burst_threads else "off"
        return super().status_line() + f" burst={burst}"

    def warmup(self) -> None:
        zeros = np.zeros(self.hidden, np.float32)
        if self.burst_threads:
            # the OpenMP workers start now, inheriting the process's burst CPUs; then the calling thread (the
            # one that decodes alone) goes back to the predictor's own CPUs, off the vocoder's
            self.engine.set_threads(self.burst_threads)
            self.engine.predict(zeros, 0, SamplingParams(), 0, 0)
            os.sched_setaffinity(0, self.cpus)
            self.engine.set_threads(self.threads)
        self.engine.predict(zeros, 0, SamplingParams(), 0, 0)

    def handle_predict(self, ident: bytes, msg: protocol.Message) -> None:
        rid = msg.id
        h = msg.header
        try:
            hidden = msg.arrays.get("hidden")
            if hidden is None or hidden.dtype != np.float32 or hidden.shape != (self.hidden,) \
                    or not np.isfinite(hidden).all():
                raise ValueError(f"hidden must be {self.hidden} finite float32 values")
            c0 = _int_in("c0", h.get("c0"), self.engine.codebook_size)
            seed = _int_in("seed", h.get("seed"), MAX_SEED)
            frame = _int_in("frame", h.get("frame"), MAX_FRAME)
            params = sub_params(h.get("params", {}))
            burst = h.get("burst", False)
            if not isinstance(burst, bool):
                raise ValueError("burst must be a boolean")
        except ValueError as e:
            self.reply(self.sock, ident, protocol.error(rid, "bad_request", str(e)))
            return
        # burst: the talker says the vocoder is idle, so its CPUs are free for this frame
        burst = burst and self.burst_threads > 0
        threads = self.burst_threads if burst else self.threads
        try:
            t0 = time.perf_counter()
            self.engine.set_threads(threads)
            codes, feedback = self.engine.predict(hidden, c0, params, seed, frame)
            compute_ms = (time.perf_counter() - t0) * 1000
        except ValueError as e:  # e.g. logits that are not finite (no sampling from NaN probabilities)
            self.log.warning("predict %r (frame %d): %r", rid, frame, str(e)[:300])
            self.reply(self.sock, ident, protocol.error(rid, "bad_request", f"predict: {e}"))
            return
        # anything else escapes to WorkerService.serve_once: one log line, error `internal`, the loop goes on
        self.reply(self.sock, ident, protocol.encode("codes", {"codes": codes, "feedback": feedback},
                                                     id=rid, frame=frame, ms=round(compute_ms, 3),
                                                     threads=threads, burst=burst))
