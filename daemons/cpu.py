"""CPU cluster detection and pinning.

`detect_clusters()` groups the online CPUs by `cpu_capacity` (arm64 big.LITTLE: RK3588 reports 1024 for
the Cortex-A76 cores 4-7 and a smaller value for the Cortex-A55 cores 0-3), else by
`cpufreq/cpuinfo_max_freq`, else returns one cluster (uniform machine, e.g. an x86 VM); biggest first.

`plan_cpus()` picks a role's CPUs: explicit configuration wins. Otherwise the roles get disjoint CPU sets
(the talker and the predictor alternate on the same cores once per frame; the vocoder runs concurrently,
and llama.cpp's spinning thread barriers stall badly when a busy thread preempts one of theirs). On a
big.LITTLE board (docs/BOARD.md sections 4-5, RK3588: A55 0-3, A76 4-7):
- vocoder on the NPU (`probe_vocoder_npu()`): talker and predictor on the big cores, the vocoder's small
  CPU share (the split graph's head, partial chunks) on the little cluster;
- fp32 vocoder on the CPU: the little cluster alone cannot keep up (~210 ms per 80 ms frame on 4x A55), so
  it also gets the last core of the big cluster when that leaves the LLMs at least 3 big cores.
With three or more clusters "big" is every cluster but the smallest. A uniform machine gives the vocoder
a quarter of the CPUs and the LLMs the rest. The plan is restricted to the CPUs the process may use (its
affinity at start, e.g. a cpuset).

`probe_vocoder_npu()` guesses, cheaply and the same way in all three daemons, whether the vocoder daemon
will run on the NPU: backend not "onnx", the .rknn file present, rknn-toolkit-lite2 installed (found, not
imported: importing loads librknnrt) and an RKNPU device node. If the vocoder still falls back (the
runtime fails to initialise), it runs on the little cluster, as planned for the NPU case, and says why.

`apply_affinity()` pins every existing thread of the process (sched_setaffinity works per thread on
Linux) and therefore every thread created afterwards, which inherits its creator's mask: llama.cpp's
and onnxruntime's pools, OpenMP, OpenBLAS. `limit_thread_env()` sizes the OpenMP/BLAS pools; it only
takes effect for libraries loaded after it is called.

`plan_burst()`: the predictor's wider CPU set for the frames while the vocoder is idle (the talker knows
when it is and says so per frame): on a uniform machine the vocoder's quarter of the CPUs sits idle more
than half of the time, and llama.cpp's decode scales with a second thread when nothing else runs there
(docs/PERFORMANCE.md: 52 -> 31 ms per frame alone on 2 CPUs).

`pin_role()` does all of it for a daemon and logs what was chosen and why (logger "qwen3_tts.cpu").
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, NamedTuple

if TYPE_CHECKING:  # no runtime import: config imports nothing from here either
    from .config import Config, RoleConfig

log = logging.getLogger("qwen3_tts.cpu")

SYSFS_CPU = "/sys/devices/system/cpu"
SYSFS_DRM = "/sys/class/drm"
# Lend the CPU vocoder one big core only if the LLMs keep at least this many (docs/BOARD.md section 5).
MIN_BIG_FOR_LLMS = 3
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_ROLES = ("talker", "predictor", "vocoder")


# ------------------------------------------------------------------------------------------- cpu lists

def parse_cpu_list(text: str) -> list[int]:
    """Kernel list format: "0-3,6" -> [0, 1, 2, 3, 6]; "" -> []."""
    out: set[int] = set()
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        a = int(lo)
        b = int(hi) if sep else a
        if b < a:
            raise ValueError(f"bad CPU range {part!r}")
        out.update(range(a, b + 1))
    return sorted(out)


def format_cpu_list(cpus: Iterable[int]) -> str:
    """[4, 5, 6, 7, 9] -> "4-7,9" (kernel list format, as in /proc/<pid>/status Cpus_allowed_list)."""
    out: list[str] = []
    run: list[int] = []
    for c in sorted(set(cpus)):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


# ------------------------------------------------------------------------------------------- detection

def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def online_cpus(sysfs: str | os.PathLike = SYSFS_CPU) -> list[int]:
    root = Path(sysfs)
    try:
        return parse_cpu_list((root / "online").read_text())
    except (OSError, ValueError):
        pass
    cpus = []
    for d in root.glob("cpu[0-9]*"):
        if not d.name[3:].isdigit():
            continue
        flag = _read_int(d / "online")  # absent for a CPU that cannot be taken offline (cpu0)
        if flag is None or flag == 1:
            cpus.append(int(d.name[3:]))
    return sorted(cpus)


def _group(cpus: list[int], values: dict[int, int]) -> list[list[int]]:
    by: dict[int, list[int]] = {}
    for c in cpus:
        by.setdefault(values[c], []).append(c)
    return [sorted(by[v]) for v in sorted(by, reverse=True)]


def detect_clusters(sysfs: str | os.PathLike = SYSFS_CPU) -> list[list[int]]:
    """Online CPUs grouped into performance clusters, biggest first (see the module docstring)."""
    root = Path(sysfs)
    cpus = online_cpus(root)
    if not cpus:
        n = os.cpu_count() or 1
        log.warning("no CPUs found under %s; assuming %d uniform CPUs", root, n)
        return [list(range(n))]
    for label, rel in (("cpu_capacity", "cpu_capacity"), ("cpuinfo_max_freq", "cpufreq/cpuinfo_max_freq")):
        values = {c: _read_int(root / f"cpu{c}" / rel) for c in cpus}
        if any(v is None for v in values.values()):
            continue
        clusters = _group(cpus, values)  # type: ignore[arg-type]
        if len(clusters) > 1:
            log.info("CPU clusters by %s: %s", label,
                     ", ".join(f"{format_cpu_list(cl)} ({values[cl[0]]})" for cl in clusters))
            return clusters
    log.info("CPU clusters: one uniform cluster %s (no differing cpu_capacity or cpuinfo_max_freq)",
             format_cpu_list(cpus))
    return [cpus]


# ------------------------------------------------------------------------------------------- NPU probe

class NpuProbe(NamedTuple):
    usable: bool
    reason: str


def rknpu_device(dev: str | os.PathLike = "/dev", drm: str | os.PathLike = SYSFS_DRM) -> str | None:
    """The RKNPU device node, if any: /dev/rknpu (the driver's DMA-heap build) or the DRM node whose driver
    is RKNPU (its DRM-GEM build, e.g. renderD129), which librknnrt finds by enumerating /dev/dri."""
    node = Path(dev) / "rknpu"
    if node.exists():
        return str(node)
    for d in sorted(Path(drm).glob("*")):
        try:
            uevent = (d / "device" / "uevent").read_text()
        except OSError:
            continue
        if any(line.strip().upper() == "DRIVER=RKNPU" for line in uevent.splitlines()):
            return f"{d.name} (DRM, driver RKNPU)"
    return None


def _rknnlite_installed() -> bool:
    try:
        return importlib.util.find_spec("rknnlite") is not None  # the top-level package: nothing is executed
    except (ImportError, ValueError):
        return False


def probe_vocoder_npu(cfg: "Config", dev: str | os.PathLike = "/dev",
                      drm: str | os.PathLike = SYSFS_DRM) -> NpuProbe:
    """Will the vocoder daemon run on the NPU? See the module docstring; `reason` is logged."""
    b = cfg.vocoder_backend
    if b.backend == "onnx":
        return NpuProbe(False, 'vocoder backend = "onnx"')
    rknn = Path(b.rknn_file)
    if not rknn.is_absolute():
        rknn = Path(cfg.model_dir) / rknn
    if not rknn.is_file():
        return NpuProbe(False, f"no RKNN model {rknn}")
    if not _rknnlite_installed():
        return NpuProbe(False, "rknn-toolkit-lite2 is not installed")
    node = rknpu_device(dev, drm)
    if node is None:
        return NpuProbe(False, "no RKNPU device (/dev/rknpu or a DRM node with driver RKNPU)")
    return NpuProbe(True, f"{rknn.name}, rknn-toolkit-lite2 and {node} present")


# ------------------------------------------------------------------------------------------- planning

def plan_cpus(role: str, role_cfg: "RoleConfig | None", clusters: list[list[int]],
              allowed: Iterable[int] | None = None, *, vocoder_on_npu: bool = False) -> tuple[list[int], str]:
    """(CPUs, reason) for `role`. `allowed` defaults to the CPUs this process may run on now.
    `vocoder_on_npu`: the vocoder daemon is expected to run on the NPU (`probe_vocoder_npu`); every role's
    plan depends on it, so all three daemons must be given the same answer."""
    if role not in _ROLES:
        raise ValueError(f"unknown role {role!r}")
    allowed_set = set(os.sched_getaffinity(0) if allowed is None else allowed)
    explicit = getattr(role_cfg, "cpus", None)
    if explicit:
        cpus = sorted(set(explicit) & allowed_set)
        missing = sorted(set(explicit) - allowed_set)
        if not cpus:
            raise ValueError(f"{role}: configured CPUs {format_cpu_list(explicit)} are not available to this "
                             f"process (allowed: {format_cpu_list(allowed_set)})")
        reason = f"configured cpus {format_cpu_list(explicit)}"
        if missing:
            log.warning("%s: configured CPUs %s are not available (allowed: %s); using %s", role,
                        format_cpu_list(missing), format_cpu_list(allowed_set), format_cpu_list(cpus))
            reason += f", unavailable {format_cpu_list(missing)} dropped"
        return cpus, reason

    clusters = [sorted(c) for c in clusters if c]
    if len(clusters) <= 1:
        # Uniform machine: the talker and the predictor take turns (each waits for the other), so they can
        # share CPUs; the vocoder runs at the same time as they do, and llama.cpp's spinning thread barriers
        # stall badly when another busy thread is preempting one of theirs. So the vocoder gets its own
        # quarter of the CPUs (at least one) and the LLMs the rest, as on a big.LITTLE board.
        every = clusters[0] if clusters else sorted(allowed_set)
        usable = sorted(set(every) & allowed_set) or sorted(allowed_set)
        if len(usable) < 2:
            want, reason = usable, "single CPU: shared by every role"
        else:
            k = max(1, len(usable) // 4)
            if role == "vocoder":
                want = usable[-k:]
                reason = f"uniform machine: last {k} of {len(usable)} CPUs for the vocoder"
            else:
                want = usable[:-k]
                reason = (f"uniform machine: {len(want)} of {len(usable)} CPUs shared by talker and predictor, "
                          f"{format_cpu_list(usable[-k:])} left to the vocoder")
    else:
        want, reason = _big_little_plan(role, clusters, vocoder_on_npu)
    cpus = sorted(set(want) & allowed_set)
    if not cpus:
        cpus = sorted(allowed_set)
        reason += f"; none of those is available to this process, using its CPUs {format_cpu_list(cpus)}"
    elif len(cpus) < len(want):
        reason += f"; restricted to the process's CPUs {format_cpu_list(cpus)}"
    return cpus, reason


def _big_little_plan(role: str, clusters: list[list[int]], vocoder_on_npu: bool) -> tuple[list[int], str]:
    """docs/BOARD.md section 5. Predicted RTF(w/a) on an RK3588: NPU vocoder ~1.1-1.5 (generation-bound);
    CPU vocoder on 4x A55 + 1x A76 ~1.6-2.1, where 4x A55 alone would be ~2.6 (vocoder-bound)."""
    little = clusters[-1]
    big = sorted(c for cl in clusters[:-1] for c in cl)
    lent: list[int] = []
    if not vocoder_on_npu and len(big) - 1 >= MIN_BIG_FOR_LLMS:
        lent = [max(clusters[-2])]  # from the slowest big cluster: a prime core stays with the LLMs
    llm = [c for c in big if c not in lent]
    if vocoder_on_npu:
        if role == "vocoder":
            return little, (f"NPU vocoder: its CPU share (head of the split graph, partial chunks) on the little "
                            f"cluster {format_cpu_list(little)}, the big cores {format_cpu_list(big)} left to "
                            f"talker and predictor")
        return llm, (f"big cluster {format_cpu_list(llm)}; the vocoder runs on the NPU (its CPU share on "
                     f"{format_cpu_list(little)})")
    if role == "vocoder":
        if lent:
            return sorted(little + lent), (f"CPU vocoder (no NPU): little cluster {format_cpu_list(little)} plus big "
                                           f"CPU {format_cpu_list(lent)}; the little cores alone cannot keep up with "
                                           f"the fp32 vocoder (docs/BOARD.md)")
        return little, (f"CPU vocoder (no NPU): little cluster {format_cpu_list(little)}; only {len(big)} big "
                        f"CPUs, none spared from talker and predictor")
    return llm, (f"big cluster {format_cpu_list(llm)} for talker and predictor ({len(clusters)} clusters; CPU "
                 f"vocoder (no NPU) on {format_cpu_list(sorted(little + lent))})")


def plan_burst(role: str, role_cfg: "RoleConfig | None", vocoder_cfg: "RoleConfig | None",
               clusters: list[list[int]], cpus: list[int], allowed: Iterable[int] | None = None, *,
               vocoder_on_npu: bool = False) -> tuple[list[int], int, str]:
    """(CPUs, threads, reason) of the predictor's burst: its `cpus` plus the vocoder's, used only for frames
    while the vocoder has nothing to do. Automatic (`burst_threads` unset) on a uniform machine whose CPUs
    are planned automatically: all of them. Off (threads 0) for other roles, on big.LITTLE boards (the LLMs
    have the big cluster to themselves), with `burst_threads = 0`, or when it would add no CPU."""
    if role != "predictor":
        return cpus, 0, "only the predictor bursts"
    want = getattr(role_cfg, "burst_threads", None)
    if want == 0:
        return cpus, 0, "burst off (burst_threads = 0)"
    allowed_set = set(os.sched_getaffinity(0) if allowed is None else allowed)
    vocoder, _ = plan_cpus("vocoder", vocoder_cfg, clusters, allowed_set, vocoder_on_npu=vocoder_on_npu)
    wide = sorted(set(cpus) | set(vocoder))
    if want is None:
        explicit = getattr(role_cfg, "cpus", None) or getattr(role_cfg, "threads", None) \
            or getattr(vocoder_cfg, "cpus", None)
        if len([c for c in clusters if c]) > 1 or explicit:
            return cpus, 0, "no automatic burst (big.LITTLE plan, or CPUs/threads configured)"
        want = len(wide)
    if len(wide) <= len(cpus):
        return cpus, 0, "no burst: the vocoder's CPUs are the predictor's own"
    return wide, want, (f"{want} threads on {format_cpu_list(wide)} for frames while the vocoder is idle")


def thread_count(cpus: list[int], role_cfg: "RoleConfig | None") -> int:
    return getattr(role_cfg, "threads", None) or max(1, len(cpus))


def limit_thread_env(n: int) -> None:
    """OMP/OpenBLAS/MKL pool sizes; call before those libraries are loaded (they read it once)."""
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(int(n))
    log.debug("%s=%d", "/".join(THREAD_ENV_VARS), n)


# ------------------------------------------------------------------------------------------- pinning

def _tids() -> set[int]:
    try:
        return {int(t) for t in os.listdir("/proc/self/task")}
    except OSError:  # no /proc: at least the calling thread
        return {0}


def apply_affinity(cpus: Iterable[int]) -> int:
    """Pin every thread of this process to `cpus`; returns how many threads were pinned. Threads started
    later inherit the mask of the thread that creates them, so they are covered too. The task list is
    re-read until no new thread shows up (a pool may be spawning while we pin)."""
    mask = set(cpus)
    if not mask:
        raise ValueError("empty CPU set")
    done: set[int] = set()
    for _ in range(100):
        todo = _tids() - done
        if not todo:
            break
        for tid in sorted(todo):
            try:
                os.sched_setaffinity(tid, mask)
            except ProcessLookupError:  # the thread exited meanwhile
                pass
            done.add(tid)
    os.sched_setaffinity(0, mask)  # the calling thread, in case /proc was not available
    return len(done)


@dataclass
class CpuPlan:
    cpus: list[int]
    threads: int
    reason: str
    burst_cpus: list[int] | None = None  # predictor: `plan_burst` (None / 0 threads: no burst)
    burst_threads: int = 0

    @property
    def cpu_list(self) -> str:
        return format_cpu_list(self.cpus)


def pin_role(role: str, role_cfg: "RoleConfig | None", sysfs: str | os.PathLike = SYSFS_CPU,
             npu: NpuProbe | None = None, vocoder_cfg: "RoleConfig | None" = None) -> CpuPlan:
    """Detect, plan, size the thread pools and pin this process; logs the decision. `npu`: the
    `probe_vocoder_npu()` answer (None: the vocoder is planned on the CPUs). A predictor with a burst is
    pinned to its burst CPUs; its daemon keeps the calling thread on `cpus` (see PredictorDaemon)."""
    clusters = detect_clusters(sysfs)
    on_npu = bool(npu and npu.usable)
    if npu is not None and len(clusters) > 1:
        log.info("vocoder on the NPU: %s (%s)", "expected" if npu.usable else "no", npu.reason)
    cpus, reason = plan_cpus(role, role_cfg, clusters, vocoder_on_npu=on_npu)
    threads = thread_count(cpus, role_cfg)
    limit_thread_env(threads)
    wide, burst, why = plan_burst(role, role_cfg, vocoder_cfg, clusters, cpus, vocoder_on_npu=on_npu)
    n = apply_affinity(wide if burst else cpus)
    log.info("%s: cpus %s (%s); %d compute threads%s; %d existing threads pinned%s", role, format_cpu_list(cpus),
             reason, threads, " (configured)" if getattr(role_cfg, "threads", None) else "", n,
             f"; burst: {why}" if role == "predictor" else "")
    return CpuPlan(cpus, threads, reason, wide if burst else None, burst)
