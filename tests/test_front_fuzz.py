"""scripts/fuzz_fronts.py for real, one round: every hostile case on HTTP, Wyoming and WebSocket (the ZeroMQ
sockets have tests/test_hostile.py) against a real gateway in front of the three daemons on the tiny model,
while normal requests keep going through every front. Each case ends in a clear error or a closed
connection within its timeout, nothing is a 500, no process dies, and every normal request gets its audio.
Also the regressions the fuzz found (daemons/gateway/hostile.py): a byte-a-second request head, body and
upload get 408; a body announced or streamed beyond the limit 413 at once; deep JSON and lone surrogates
400 (were 500); Wyoming events with lying or giant data_length/payload_length an error and a close (were a
connection held forever / buffered up to 1 GiB); a WebSocket frame that never ends is closed by the ping
timeout. Nothing here asserts a latency (the script reports the ratio)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT

EXPECT = {  # (front, case) -> outcome
    ("http", "slow_headers"): "error:408", ("http", "slow_body"): "error:408",
    ("http", "slow_voice_upload"): "error:408", ("http", "request_line_binary"): "error:408",
    ("http", "huge_body_announced_1GB"): "error:413", ("http", "huge_body_chunked"): "error:413",
    ("http", "huge_body_64MB"): "error:413", ("http", "multipart_file_30MB"): "error:413",
    ("http", "json_deep_nesting"): "error:400", ("http", "json_lone_surrogate"): "error:400",
    ("http", "header_flood_5000"): "error:400", ("http", "path_voice_traversal"): "error:404",
    ("wyoming", "data_length_lies_more"): "error:bad_request", ("wyoming", "payload_length_1GB"): "error:bad_request",
    ("wyoming", "data_length_1GB"): "error:bad_request", ("wyoming", "header_slow"): "error:bad_request",
    ("wyoming", "synthesize_lone_surrogate"): "error:bad_request", ("wyoming", "header_type_number"): "error:bad_request",
    ("ws", "oversized_text_20MB"): "closed", ("ws", "binary_instead_of_text"): "error:INVALID_TEXT",
    ("ws", "json_deep_nesting"): "error:INVALID_TEXT", ("ws", "frame_length_lies"): "closed",
    ("ws", "frame_unmasked"): "closed",
}


def test_fuzz_every_front(tiny_model, tmp_path):
    out = tmp_path / "fuzz.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TTS_")}
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_fronts.py"), "--rounds", "1", "--base-s", "3",
                        "--case-timeout", "25", "--model", str(tiny_model), "--json", str(out)],
                       env=env, capture_output=True, text=True, timeout=240)
    assert out.is_file(), p.stdout[-3000:] + p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["failures"] == [], r["failures"]
    assert set(r["counts"]) == {"http", "wyoming", "ws"} and r["cases"] >= 90
    got = {(x["front"], x["case"]): x["outcome"] for x in r["results"]}
    assert {k: got.get(k) for k in EXPECT} == EXPECT
    for x in r["results"]:  # an answer that is not an error is allowed only where the case says so
        assert x["outcome"].startswith(("error:", "closed")) or x["case"] in (
            "json_nul_in_text", "json_wrong_ctype", "request_line_http_9", "path_unicode"), x
        assert x["outcome"] not in ("error:500",), x
    assert r["processes_alive_at_end"] == {"predictor": True, "vocoder": True, "talker": True, "gateway": True}
    assert r["exits"] == []
    nt = r["normal_traffic"]
    assert nt["not_audio"] == [] and nt["n"]["fuzz"] > 0 and nt["n"]["base"] > 0, nt
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
