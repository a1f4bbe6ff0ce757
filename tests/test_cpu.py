"""daemons.cpu: cluster detection on fake sysfs trees, per-role plans, and real pinning of every thread."""
from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from daemons import cpu
from daemons.config import RoleConfig

ROOT = Path(__file__).resolve().parents[1]
ALL8 = range(8)


def fake_sysfs(root: Path, n: int, capacity: dict[int, int] | None = None, max_freq: dict[int, int] | None = None,
               online: str | None = None, per_cpu_online: dict[int, int] | None = None) -> Path:
    """A /sys/devices/system/cpu look-alike: cpuN/cpu_capacity, cpuN/cpufreq/cpuinfo_max_freq, online."""
    root.mkdir(parents=True, exist_ok=True)
    for c in range(n):
        d = root / f"cpu{c}"
        d.mkdir()
        if capacity is not None and c in capacity:
            (d / "cpu_capacity").write_text(f"{capacity[c]}\n")
        if max_freq is not None and c in max_freq:
            (d / "cpufreq").mkdir()
            (d / "cpufreq" / "cpuinfo_max_freq").write_text(f"{max_freq[c]}\n")
        if per_cpu_online is not None and c in per_cpu_online:
            (d / "online").write_text(f"{per_cpu_online[c]}\n")
    # non-CPU entries a real tree has
    (root / "cpufreq").mkdir()
    (root / "cpuidle").mkdir()
    (root / "kernel_max").write_text("7\n")
    if online is not None:
        (root / "online").write_text(online + "\n")
    return root


def rk3588(root: Path) -> Path:
    """RK3588 layout: Cortex-A55 0-3 (capacity 414, 1.8 GHz), Cortex-A76 4-5 and 6-7 (1024; two cpufreq policies,
    binned to slightly different maximum clocks)."""
    return fake_sysfs(root, 8, capacity={c: 414 if c < 4 else 1024 for c in range(8)},
                      max_freq={c: 1800000 if c < 4 else (2400000 if c < 6 else 2256000) for c in range(8)},
                      online="0-7")


def test_big_little_by_capacity(tmp_path, caplog):
    caplog.set_level(logging.INFO, "qwen3_tts.cpu")
    clusters = cpu.detect_clusters(rk3588(tmp_path / "cpu"))
    assert clusters == [[4, 5, 6, 7], [0, 1, 2, 3]]   # capacity, not the per-policy clock, decides
    assert "by cpu_capacity: 4-7 (1024), 0-3 (414)" in caplog.text


def test_big_little_by_cpufreq_only(tmp_path, caplog):
    caplog.set_level(logging.INFO, "qwen3_tts.cpu")
    root = fake_sysfs(tmp_path / "cpu", 8, max_freq={c: 1800000 if c < 4 else 2400000 for c in range(8)},
                      online="0-7")
    assert cpu.detect_clusters(root) == [[4, 5, 6, 7], [0, 1, 2, 3]]
    assert "by cpuinfo_max_freq" in caplog.text


def test_uniform_capacity_falls_back_to_cpufreq(tmp_path):
    # kernels without capacity-dmips-mhz in the device tree report 1024 everywhere
    root = fake_sysfs(tmp_path / "cpu", 4, capacity={c: 1024 for c in range(4)},
                      max_freq={0: 1400000, 1: 1400000, 2: 2000000, 3: 2000000}, online="0-3")
    assert cpu.detect_clusters(root) == [[2, 3], [0, 1]]


def test_partial_capacity_is_not_trusted(tmp_path):
    root = fake_sysfs(tmp_path / "cpu", 4, capacity={0: 446, 1: 446, 2: 1024},
                      max_freq={0: 1, 1: 1, 2: 2, 3: 2}, online="0-3")
    assert cpu.detect_clusters(root) == [[2, 3], [0, 1]]


def test_uniform_machine(tmp_path, caplog):
    caplog.set_level(logging.INFO, "qwen3_tts.cpu")
    root = fake_sysfs(tmp_path / "cpu", 2, capacity={0: 1024, 1: 1024}, online="0-1")   # like this VM
    assert cpu.detect_clusters(root) == [[0, 1]]
    assert "one uniform cluster 0-1" in caplog.text
    bare = fake_sysfs(tmp_path / "bare", 4, online="0-3")                              # no capacity, no cpufreq
    assert cpu.detect_clusters(bare) == [[0, 1, 2, 3]]


def test_offline_cpus_are_left_out(tmp_path):
    root = rk3588(tmp_path / "cpu")
    (root / "online").write_text("0-2,4-6\n")
    assert cpu.detect_clusters(root) == [[4, 5, 6], [0, 1, 2]]
    # without the top-level `online` list: the per-CPU flags (cpu0 has none: it cannot go offline)
    root2 = fake_sysfs(tmp_path / "cpu2", 4, capacity={0: 500, 1: 500, 2: 1024, 3: 1024},
                       per_cpu_online={1: 1, 2: 1, 3: 0})
    assert cpu.detect_clusters(root2) == [[2], [0, 1]]


def test_real_sysfs_covers_this_machine():
    clusters = cpu.detect_clusters()
    flat = sorted(c for cl in clusters for c in cl)
    assert len(flat) == len(set(flat)) > 0
    assert set(os.sched_getaffinity(0)) <= set(flat)


def test_rk3588_plan_with_the_npu_vocoder(tmp_path):
    """docs/BOARD.md section 5, plan A: the vocoder's small CPU share on the A55s, all four A76s for the LLMs."""
    clusters = cpu.detect_clusters(rk3588(tmp_path / "cpu"))
    for role in ("talker", "predictor"):
        cpus, reason = cpu.plan_cpus(role, RoleConfig(), clusters, allowed=ALL8, vocoder_on_npu=True)
        assert cpus == [4, 5, 6, 7] and "big cluster 4-7" in reason and "NPU" in reason
    cpus, reason = cpu.plan_cpus("vocoder", RoleConfig(), clusters, allowed=ALL8, vocoder_on_npu=True)
    assert cpus == [0, 1, 2, 3] and reason.startswith("NPU vocoder") and "little cluster 0-3" in reason


def test_rk3588_plan_with_the_cpu_vocoder(tmp_path):
    """Plan B: 4x A55 cannot keep up with the fp32 vocoder, so it also gets the last A76; the LLMs keep three
    A76s. Disjoint sets, and every CPU is used once."""
    clusters = cpu.detect_clusters(rk3588(tmp_path / "cpu"))
    plans = {}
    for role in ("talker", "predictor", "vocoder"):
        plans[role] = cpu.plan_cpus(role, RoleConfig(), clusters, allowed=ALL8)
        assert cpu.plan_cpus(role, RoleConfig(), clusters, allowed=ALL8, vocoder_on_npu=False) == plans[role]
    for role in ("talker", "predictor"):
        cpus, reason = plans[role]
        assert cpus == [4, 5, 6] and "big cluster 4-6" in reason and "CPU vocoder (no NPU) on 0-3,7" in reason
    cpus, reason = plans["vocoder"]
    assert cpus == [0, 1, 2, 3, 7]
    assert reason.startswith("CPU vocoder (no NPU): little cluster 0-3 plus big CPU 7")
    assert cpu.thread_count(cpus, RoleConfig()) == 5


def test_six_core_two_big_keeps_both_for_the_llms(tmp_path):
    """2 big + 4 little (e.g. RK3399: 2x A72 4-5, 4x A53 0-3): lending one of two big cores would halve the
    LLMs, so with or without the NPU the vocoder has the little cluster."""
    root = fake_sysfs(tmp_path / "cpu", 6, capacity={c: 485 if c < 4 else 1024 for c in range(6)}, online="0-5")
    clusters = cpu.detect_clusters(root)
    assert clusters == [[4, 5], [0, 1, 2, 3]]
    for npu in (True, False):
        for role in ("talker", "predictor"):
            cpus, reason = cpu.plan_cpus(role, None, clusters, allowed=range(6), vocoder_on_npu=npu)
            assert cpus == [4, 5] and "big cluster 4-5" in reason
        cpus, reason = cpu.plan_cpus("vocoder", None, clusters, allowed=range(6), vocoder_on_npu=npu)
        assert cpus == [0, 1, 2, 3] and "little cluster 0-3" in reason
        assert ("NPU vocoder" in reason) == npu and (not npu) == ("only 2 big CPUs, none spared" in reason)


def test_thread_counts():
    assert cpu.thread_count([4, 5, 6, 7], RoleConfig()) == 4
    assert cpu.thread_count([0, 1, 2, 3], RoleConfig(threads=2)) == 2
    assert cpu.thread_count([0, 1], None) == 2
    with pytest.raises(ValueError, match="unknown role"):
        cpu.plan_cpus("client", RoleConfig(), [[4, 5, 6, 7], [0, 1, 2, 3]], allowed=ALL8)


def test_three_tier_big_is_all_but_the_smallest():
    clusters = [[7], [4, 5, 6], [0, 1, 2, 3]]       # prime + big + little
    assert cpu.plan_cpus("talker", None, clusters, allowed=ALL8, vocoder_on_npu=True)[0] == [4, 5, 6, 7]
    assert cpu.plan_cpus("vocoder", None, clusters, allowed=ALL8, vocoder_on_npu=True)[0] == [0, 1, 2, 3]
    # the CPU vocoder borrows from the slowest big cluster, never the prime core
    assert cpu.plan_cpus("talker", None, clusters, allowed=ALL8)[0] == [4, 5, 7]
    assert cpu.plan_cpus("vocoder", None, clusters, allowed=ALL8)[0] == [0, 1, 2, 3, 6]


def test_uniform_plan_splits_vocoder_from_the_llms():
    """On a uniform machine the talker and predictor share CPUs (they take turns); the vocoder, which runs
    concurrently, gets its own quarter (at least one CPU)."""
    for n, llm, voc in ((2, [0], [1]), (4, [0, 1, 2], [3]), (8, [0, 1, 2, 3, 4, 5], [6, 7])):
        for role in ("talker", "predictor"):
            cpus, reason = cpu.plan_cpus(role, RoleConfig(), [list(range(n))], allowed=range(n))
            assert cpus == llm and "uniform" in reason
        assert cpu.plan_cpus("vocoder", RoleConfig(), [list(range(n))], allowed=range(n))[0] == voc
    assert cpu.plan_cpus("vocoder", RoleConfig(), [[0]], allowed=[0])[0] == [0]


def test_predictor_burst_plan(tmp_path):
    """The predictor's burst (frames while the vocoder is idle): automatic on a uniform machine planned
    automatically (all its CPUs), never for another role, off on big.LITTLE unless configured, off with 0 or
    when the vocoder's CPUs are the predictor's own."""
    R = RoleConfig
    for n, wide in ((2, [0, 1]), (4, [0, 1, 2, 3]), (8, list(range(8)))):
        own, _ = cpu.plan_cpus("predictor", R(), [list(range(n))], allowed=range(n))
        assert cpu.plan_burst("predictor", R(), R(), [list(range(n))], own, allowed=range(n))[:2] == (wide, n)
        for role in ("talker", "vocoder"):
            assert cpu.plan_burst(role, R(), R(), [list(range(n))], own, allowed=range(n))[1] == 0
    # one CPU: the vocoder shares it, nothing to gain
    assert cpu.plan_burst("predictor", R(), R(), [[0]], [0], allowed=[0])[1] == 0
    # configured CPUs or threads: no automatic burst; burst_threads = 0: off
    for pc, vc in ((R(cpus=[0]), R()), (R(threads=1), R()), (R(), R(cpus=[1])), (R(burst_threads=0), R())):
        assert cpu.plan_burst("predictor", pc, vc, [[0, 1]], [0], allowed=[0, 1])[1] == 0, (pc, vc)
    # ... but an explicit burst_threads applies to the configured sets too
    wide, n, why = cpu.plan_burst("predictor", R(cpus=[0], burst_threads=2), R(cpus=[1]), [[0, 1]], [0],
                                  allowed=[0, 1])
    assert (wide, n) == ([0, 1], 2) and "vocoder is idle" in why
    # RK3588: the LLMs have the big cores to themselves, so no automatic burst; configured, the CPU
    # vocoder's CPUs join (the NPU vocoder's little cluster too, if asked for)
    clusters = cpu.detect_clusters(rk3588(tmp_path / "cpu"))
    own, _ = cpu.plan_cpus("predictor", R(), clusters, allowed=ALL8)
    assert cpu.plan_burst("predictor", R(), R(), clusters, own, allowed=ALL8)[1] == 0
    wide, n, _ = cpu.plan_burst("predictor", R(burst_threads=4), R(), clusters, own, allowed=ALL8)
    assert own == [4, 5, 6] and wide == [0, 1, 2, 3, 4, 5, 6, 7] and n == 4


def test_explicit_config_wins(tmp_path, caplog):
    clusters = cpu.detect_clusters(rk3588(tmp_path / "cpu"))
    for npu in (True, False):
        cpus, reason = cpu.plan_cpus("vocoder", RoleConfig(cpus=[6, 7]), clusters, allowed=ALL8, vocoder_on_npu=npu)
        assert cpus == [6, 7] and reason == "configured cpus 6-7"
        cpus, _ = cpu.plan_cpus("talker", RoleConfig(cpus=[0, 2]), clusters, allowed=ALL8, vocoder_on_npu=npu)
        assert cpus == [0, 2]
    # CPUs the process may not use are dropped, loudly; none at all is an error
    caplog.set_level(logging.WARNING, "qwen3_tts.cpu")
    cpus, reason = cpu.plan_cpus("talker", RoleConfig(cpus=[2, 3, 4, 5]), clusters, allowed=range(4))
    assert cpus == [2, 3] and "unavailable 4-5 dropped" in reason
    assert "not available" in caplog.text
    with pytest.raises(ValueError, match="not available to this process"):
        cpu.plan_cpus("talker", RoleConfig(cpus=[6, 7]), clusters, allowed=range(4))


def test_defaults_respect_the_process_affinity(tmp_path):
    clusters = cpu.detect_clusters(rk3588(tmp_path / "cpu"))
    cpus, reason = cpu.plan_cpus("talker", RoleConfig(), clusters, allowed=[0, 1, 4, 5])   # a cpuset
    assert cpus == [4, 5] and "restricted" in reason
    cpus, reason = cpu.plan_cpus("talker", RoleConfig(), clusters, allowed=[0, 1])
    assert cpus == [0, 1] and "none of those is available" in reason
    # default `allowed` = this process's affinity
    cpus, _ = cpu.plan_cpus("vocoder", None, [[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]])
    assert set(cpus) <= set(os.sched_getaffinity(0))


def test_cpu_list_format():
    assert cpu.format_cpu_list([4, 5, 6, 7]) == "4-7"
    assert cpu.format_cpu_list([0, 2, 3, 4, 9]) == "0,2-4,9"
    assert cpu.format_cpu_list([]) == ""
    assert cpu.parse_cpu_list("0-3,6\n") == [0, 1, 2, 3, 6]
    assert cpu.parse_cpu_list(cpu.format_cpu_list([1, 3, 4, 5, 8])) == [1, 3, 4, 5, 8]


def test_limit_thread_env(monkeypatch):
    for var in cpu.THREAD_ENV_VARS:
        monkeypatch.setenv(var, "99")
    cpu.limit_thread_env(3)
    assert [os.environ[v] for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")] == ["3"] * 3



def _npu_board(tmp_path: Path, monkeypatch, *, drm_driver: str | None = "RKNPU", dev_node: bool = False,
               rknn: bool = True, lite: bool = True, backend: str = "auto"):
    """A model directory, /dev and /sys/class/drm look-alikes for probe_vocoder_npu."""
    from daemons.config import Config

    md, dev, drm = tmp_path / "model", tmp_path / "dev", tmp_path / "drm"
    for d in (md, dev, drm):
        d.mkdir(parents=True)
    if rknn:
        (md / "vocoder.rknn").write_bytes(b"RKNN")
    for node, driver in (("card0", "rockchip-drm"), ("renderD128", "rockchip-drm"), ("renderD129", drm_driver)):
        if driver:
            (drm / node / "device").mkdir(parents=True)
            (drm / node / "device" / "uevent").write_text(f"DRIVER={driver}\nOF_NAME=npu\n")
    if dev_node:
        (dev / "rknpu").write_text("")
    monkeypatch.setattr(cpu, "_rknnlite_installed", lambda: lite)
    cfg = Config()
    cfg.model_dir = md
    cfg.vocoder_backend.backend = backend
    return cpu.probe_vocoder_npu(cfg, dev=dev, drm=drm)


def test_probe_vocoder_npu(tmp_path, monkeypatch):
    p = _npu_board(tmp_path / "a", monkeypatch)                     # DRM-GEM driver: renderD129 is the NPU
    assert p.usable and "renderD129 (DRM, driver RKNPU)" in p.reason
    p = _npu_board(tmp_path / "b", monkeypatch, drm_driver=None, dev_node=True)   # DMA-heap build: /dev/rknpu
    assert p.usable and p.reason.endswith("/dev/rknpu present")
    assert _npu_board(tmp_path / "c", monkeypatch, backend="rknn").usable
    for kw, why in ((dict(backend="onnx"), 'backend = "onnx"'), (dict(rknn=False), "no RKNN model"),
                    (dict(lite=False), "rknn-toolkit-lite2 is not installed"),
                    (dict(drm_driver=None), "no RKNPU device")):
        p = _npu_board(tmp_path / f"n{len(why)}", monkeypatch, **kw)
        assert not p.usable and why in p.reason, (kw, p)


def test_probe_on_this_machine(tmp_path):
    """The real look-ups (find_spec, /dev, /sys/class/drm), on a model directory with a .rknn file: this x86
    machine has neither rknn-toolkit-lite2 nor an NPU."""
    from daemons.config import Config

    cfg = Config()
    cfg.model_dir = tmp_path
    (tmp_path / "vocoder.rknn").write_bytes(b"RKNN")
    p = cpu.probe_vocoder_npu(cfg)
    assert not p.usable and ("not installed" in p.reason or "no RKNPU device" in p.reason)


def test_pin_role_logs_the_npu_probe(tmp_path, caplog, monkeypatch):
    """pin_role plans with the probe's answer (here on a fake 2+2 tree; pinning itself is stubbed)."""
    caplog.set_level(logging.INFO, "qwen3_tts.cpu")
    root = fake_sysfs(tmp_path / "cpu", 4, capacity={0: 414, 1: 414, 2: 1024, 3: 1024}, online="0-3")
    monkeypatch.setattr(cpu, "apply_affinity", lambda cpus: 1)
    monkeypatch.setattr(cpu, "limit_thread_env", lambda n: None)
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    plan = cpu.pin_role("vocoder", None, sysfs=root, npu=cpu.NpuProbe(True, "test board"))
    assert plan.cpus == [0, 1] and plan.reason.startswith("NPU vocoder")
    assert "vocoder on the NPU: expected (test board)" in caplog.text
    plan = cpu.pin_role("talker", None, sysfs=root, npu=cpu.NpuProbe(False, "no RKNN model x"))
    assert plan.cpus == [2, 3] and "CPU vocoder (no NPU) on 0-1" in plan.reason
    assert "vocoder on the NPU: no (no RKNN model x)" in caplog.text

CHILD = r"""
import json, logging, os, sys, threading
sys.path.insert(0, sys.argv[1])
from daemons.cpu import pin_role
from daemons.config import RoleConfig

logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
stop = threading.Event()
started = threading.Barrier(4)
def worker():
    started.wait()
    stop.wait()
before = [threading.Thread(target=worker) for _ in range(3)]
for t in before:
    t.start()
started.wait()                             # 3 threads exist before pinning (like a preloaded pool)
plan = pin_role("vocoder", RoleConfig(), sysfs=sys.argv[2])
later_tid = []
def late():
    later_tid.append(threading.get_native_id())
    stop.wait()
t_late = threading.Thread(target=late)
t_late.start()
while not later_tid:
    pass
print(json.dumps({"pid": os.getpid(), "cpus": plan.cpus, "threads": plan.threads,
                  "before": [t.native_id for t in before], "late": later_tid[0],
                  "omp": os.environ["OMP_NUM_THREADS"], "openblas": os.environ["OPENBLAS_NUM_THREADS"]}),
      flush=True)
sys.stdin.read()                          # until the test has looked
stop.set()
"""


def cpus_allowed(pid: int, tid: int) -> str:
    for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no Cpus_allowed_list")


@pytest.mark.skipif(0 not in os.sched_getaffinity(0), reason="CPU 0 is not available to this process")
def test_pin_role_pins_every_thread(tmp_path):
    """A 2-CPU big.LITTLE fake (cpu1 big, cpu0 little): the vocoder is planned on [0], and every thread of
    the child — the main thread, three started before pinning and one started after — ends up on CPU 0."""
    sysfs = fake_sysfs(tmp_path / "cpu", 2, capacity={0: 446, 1: 1024}, online="0-1")
    p = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(sysfs)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(p.stdout.readline())
        pid = info["pid"]
        assert (info["cpus"], info["threads"], info["omp"], info["openblas"]) == ([0], 1, "1", "1")
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        assert pid in tids and set(info["before"]) | {info["late"]} <= set(tids) and len(tids) >= 5
        assert {tid: cpus_allowed(pid, tid) for tid in tids} == {tid: "0" for tid in tids}
        assert os.sched_getaffinity(pid) == {0}
    finally:
        out, err = p.communicate("", timeout=10)
    assert p.returncode == 0, err
    assert "CPU clusters by cpu_capacity: 1 (1024), 0 (446)" in err
    assert "vocoder: cpus 0 (CPU vocoder (no NPU): little cluster 0; only 1 big CPUs" in err
    # main + the 3 started before (+ under qemu-user emulation its own RCU thread): all but the late one
    pinned = re.search(r"1 compute threads; (\d+) existing threads pinned", err)
    assert pinned and int(pinned.group(1)) == len(tids) - 1, err


def test_apply_affinity_rejects_empty():
    with pytest.raises(ValueError):
        cpu.apply_affinity([])
