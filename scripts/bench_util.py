"""Helpers the benchmark scripts share (bench.py, bench_peers.py): a timestamped stderr log, None-tolerant
medians and rounding, and waiting for a quiet machine."""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable


def make_log(tag: str) -> Callable[[str], None]:
    def log(msg: str) -> None:
        print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
    return log


def median(xs):
    xs = [x for x in xs if x is not None]
    return float(statistics.median(xs)) if xs else None


def r1(x, nd=1):
    return None if x is None else round(float(x), nd)


def write_json(path, res: dict, log: Callable[[str], None]) -> None:
    Path(path).write_text(json.dumps(res, indent=2, default=str) + "\n")
    log(f"wrote {path}")


def wait_for_idle(max_load: float, max_wait_s: float, log: Callable[[str], None]) -> dict:
    """Wait until the 1-minute load average is below `max_load` (other work on the machine skews every
    figure); gives up after `max_wait_s` and records that."""
    t0 = time.monotonic()
    while True:
        la = os.getloadavg()[0]
        if la < max_load:
            return {"loadavg_1m": r1(la, 2), "waited_s": r1(time.monotonic() - t0), "idle": True}
        if time.monotonic() - t0 >= max_wait_s:
            log(f"WARNING: load average still {la:.2f} after {max_wait_s:.0f} s; measuring anyway (figures are "
                "pessimistic)")
            return {"loadavg_1m": r1(la, 2), "waited_s": r1(time.monotonic() - t0), "idle": False}
        log(f"load average {la:.2f} >= {max_load}: waiting for the machine to be idle")
        time.sleep(15)
