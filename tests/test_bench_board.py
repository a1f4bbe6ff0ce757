"""`scripts/bench.py --board` (docs/BOARD.md, "Run it on a board") on the tiny model: a short real run (stages,
every vocoder backend, the three daemons end to end) in a process where torch, qwen-tts, transformers and gguf
cannot be imported, as on a board; the JSON has the anchors' row with positive figures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# runs scripts/bench.py with the conversion-only packages made unimportable
NO_TORCH = r"""
import runpy, sys
BLOCKED = {"torch", "qwen_tts", "transformers", "gguf"}
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name}: not installed on the board")
        return None
sys.meta_path.insert(0, Block())
if sys.argv[1] == "--sysfs":  # a fake CPU topology for the bench process (not for the daemons it starts)
    import daemons.cpu
    daemons.cpu.detect_clusters.__defaults__ = daemons.cpu.online_cpus.__defaults__ = (sys.argv[2],)
    del sys.argv[1:3]
sys.argv = ["scripts/bench.py", *sys.argv[1:]]
runpy.run_path("scripts/bench.py", run_name="__main__")
"""


def test_board_run_writes_the_anchor_row(tiny_model, tmp_path):
    out = tmp_path / "board.json"
    cmd = [sys.executable, "-c", NO_TORCH, "--board", "--model-dir", str(tiny_model), "--work", str(tmp_path / "w"),
           "--frames", "6", "--runs", "2", "--official-frames", "2", "--max-wait", "0", "--json", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    # printed before measuring: llama.cpp's system info, the topology, the NPU answer and the plan
    assert "llama.cpp system info: CPU :" in p.stdout
    assert "CPU topology:" in p.stdout and "cpu0:" in p.stdout
    assert "vocoder on the NPU: no (no RKNN model" in p.stdout
    for role in ("talker", "predictor", "vocoder"):
        assert f"plan {role}: cpus [" in p.stdout
    r = json.loads(out.read_text())
    assert r["mode"] == "board" and r["random_weights"] is True
    assert r["npu_probe"]["usable"] is False
    assert set(r["daemon_layout"]) == {"talker", "predictor", "vocoder"}
    assert r["topology"]["clusters"] and r["topology"]["cpus"]
    row = r["row"]
    for k in ("talker_ms_per_step", "predictor_ms_per_frame", "rtf", "ttfa_ms", "gen_ms_per_frame",
              "rss_total_peak_mb", "vmhwm_total_mb"):
        assert isinstance(row[k], (int, float)) and row[k] > 0, (k, row[k])
    assert row["vocoder_ms_per_frame"]["onnx"] > 0
    # no .rknn file in the tiny model: the RKNN row says why, and is not timed
    rk = r["vocoder_backends"]["rknn"]
    assert rk["available"] is False and "no RKNN model" in rk["reason"] and row["vocoder_ms_per_frame"]["rknn"] is None
    assert row["markdown"].startswith("| this project (`bench.py --board`") and row["markdown"] in p.stdout
    # the daemons started for real, pinned as planned, the vocoder on onnxruntime
    e2e = r["e2e"]
    assert len(e2e["per_run"]) == 2 and all(x["frames"] > 0 for x in e2e["per_run"])
    assert e2e["vocoder_backend_log"] and "vocoder backend: onnxruntime" in e2e["vocoder_backend_log"][0]
    for role in ("talker", "predictor", "vocoder"):
        plan = r["daemon_layout"][role]
        assert e2e["memory"][role]["vmhwm_mb"] > 0
        assert any(plan["reason"] in line for line in e2e["pinning_log"][role]), (role, e2e["pinning_log"])


def test_board_run_on_big_little_times_every_vocoder_placement(tiny_model, tmp_path):
    """A fake 1 + 1 big.LITTLE topology (cpu1 big, cpu0 little; both exist here): the plan, and the vocoder
    timed alone in the plan (the little CPU), on the big cluster and on little + one big (stages only)."""
    sysfs = tmp_path / "cpu"
    for c, cap in ((0, 414), (1, 1024)):
        (sysfs / f"cpu{c}").mkdir(parents=True)
        (sysfs / f"cpu{c}" / "cpu_capacity").write_text(f"{cap}\n")
    (sysfs / "online").write_text("0-1\n")
    out = tmp_path / "board.json"
    cmd = [sys.executable, "-c", NO_TORCH, "--sysfs", str(sysfs), "--board", "--model-dir", str(tiny_model),
           "--work", str(tmp_path / "w"), "--frames", "4", "--runs", "1", "--max-wait", "0", "--skip-daemons",
           "--json", str(out)]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "clusters (biggest first) 1, 0" in p.stdout
    assert "  cpu1: " in p.stdout and "capacity 1024" in p.stdout
    r = json.loads(out.read_text())
    lay = r["daemon_layout"]
    assert lay["talker"]["cpus"] == lay["predictor"]["cpus"] == [1] and lay["vocoder"]["cpus"] == [0]
    assert lay["vocoder"]["reason"].startswith("CPU vocoder (no NPU): little cluster 0; only 1 big CPUs")
    voc = r["vocoder_backends"]
    assert {k: v["cpus"] for k, v in voc.items()} == {"onnx": [0], "onnx_big_cluster": [1],
                                                      "onnx_little_plus_one_big": [0, 1], "rknn": [0]}
    for k in ("onnx", "onnx_big_cluster", "onnx_little_plus_one_big"):
        assert voc[k]["available"] and voc[k]["ms_per_frame"] > 0 and voc[k]["threads"] == len(voc[k]["cpus"])
    assert "e2e" not in r and r["row"]["rtf"] is None and "onnx_big_cluster" in r["row"]["markdown"]


def test_board_needs_a_model_dir(tmp_path):
    p = subprocess.run([sys.executable, "scripts/bench.py", "--board"], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and "--board needs --model-dir" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "scripts/bench.py", "--board", "--model-dir", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "not a converted model directory" in p.stderr and "Traceback" not in p.stderr
