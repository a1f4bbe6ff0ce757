"""scripts/soak.py for real, briefly: the four processes on the tiny model under the mixed load of every front
(ZeroMQ, HTTP whole/streamed/SSE, Wyoming, WebSocket; cancels, vanishing clients, bursts beyond the queue)
while one fault hits each process (seed 1: SIGSTOP vocoder, kill -9 talker, kill -9 gateway, SIGSTOP
predictor), restarted by the soak's supervisor. Every request is accounted for, none is lost, every fault is
followed by service again, no process dies because another did. Requests are capped at a few frames
(max_frames, cap_base_frames), so nothing depends on the random weights emitting EOS."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_soak_with_faults(tiny_model, tmp_path):
    out = tmp_path / "soak.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TTS_")}
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--minutes", "0.4", "--faults", "4",
                        "--seed", "1", "--sample-s", "1", "--model", str(tiny_model), "--json", str(out)],
                       env=env, capture_output=True, text=True, timeout=240)
    assert out.is_file(), p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["lost"] == 0, r["lost_requests"]
    assert sum(r["outcomes"].values()) == r["requests"] > 20
    assert sum(sum(f.values()) for f in r["by_front"].values()) == r["requests"]
    assert set(r["by_front"]) == {"zmq", "http", "wyoming", "ws"}
    assert all(f.get("audio", 0) > 0 for f in r["by_front"].values()), r["by_front"]
    assert r["faults_by_kind_target"] == {"kill:gateway": 1, "kill:talker": 1, "stop:predictor": 1,
                                          "stop:vocoder": 1}, r["faults_by_kind_target"]
    assert r["faults_not_recovered"] == 0 and r["unexpected_exits"] == [], (r["faults"], r["unexpected_exits"])
    assert {k: v["restarts"] for k, v in r["processes"].items()} == \
        {"predictor": 0, "vocoder": 0, "talker": 1, "gateway": 1}
    assert r["final_probe_ok"], r["final_probe"]
    assert all(s[role] for s in r["samples"][:2] for role in ("predictor", "vocoder", "talker", "gateway"))
    assert (tmp_path / "soak.png").stat().st_size > 10000
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
