"""Shared fixtures: one tiny random-weight checkpoint (official classes) and its f32 conversion per session."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Daemons started with our environment (launch.sh in test_launch, ...) keep their persistent caches here,
# never in the user's ~/.cache/qwen3-tts; start_cluster gives each cluster its own under its tmp dir.
os.environ["QWEN3_TTS_CACHE_DIR"] = tempfile.mkdtemp(prefix="qwen3-tts-test-cache-")
atexit.register(shutil.rmtree, os.environ["QWEN3_TTS_CACHE_DIR"], True)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    from scripts.make_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", seed=1234)


@pytest.fixture(scope="session")
def eos_ckpt(tmp_path_factory) -> Path:
    """Plain init of the EOS row: this tiny model stops on EOS within a few dozen frames."""
    from scripts.make_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "eos", "tiny", seed=99, eos_scale=1.0)


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt, tmp_path_factory) -> Path:
    from scripts.convert import convert

    return convert(tiny_ckpt, tmp_path_factory.mktemp("model") / "f32", "f32", log=lambda *_: None)


@pytest.fixture(scope="session")
def official(tiny_ckpt):
    from scripts.official import load_official

    return load_official(tiny_ckpt)


@pytest.fixture(scope="session")
def synth(tiny_model):
    from daemons.engine.synth import Synthesizer

    s = Synthesizer(tiny_model, threads=2)
    yield s
    s.close()


def burst_planned() -> bool:
    """Whether a cluster with automatic CPUs gives the predictor a burst on this machine (daemons.cpu:
    a uniform machine of 2+ CPUs)."""
    from daemons.config import RoleConfig
    from daemons.cpu import detect_clusters, plan_burst, plan_cpus

    clusters = detect_clusters()
    cpus, _ = plan_cpus("predictor", RoleConfig(), clusters)
    return plan_burst("predictor", RoleConfig(), RoleConfig(), clusters, cpus)[1] > 0


def snr_db(ref, x) -> float:
    import numpy as np

    ref = np.asarray(ref, dtype=np.float64)
    err = ref - np.asarray(x, dtype=np.float64)
    return float(10 * np.log10(np.sum(ref ** 2) / max(np.sum(err ** 2), 1e-300)))


def start_cluster(model: Path, tmp: Path, *, top: str = "", limits: str = "", sections: str = "",
                  roles: tuple[str, ...] | None = None, watchdog_usec: int | None = None,
                  ready_timeout_s: float = 120):
    """Start real daemons (default: talker, predictor, vocoder) on `model` with a private config in `tmp`:
    `top` goes before `[limits]` (keys like voices_dir), `limits` into it, `sections` after it (whole
    sections such as "[sampling]\\n..." or "[gateway]\\n..."). The environment is ours minus every
    QWEN3_TTS_* variable, so nothing from the caller's shell leaks in; the persistent caches default to
    `tmp`/xdg-cache/qwen3-tts (a `cache_dir` in `top` sets another). Returns the Launcher with `run`,
    `endpoint` (the talker's), `roles` and `cfg` set; stop it with stop_cluster(). If a daemon does not
    come up, the ones started are stopped before the error propagates."""
    from daemons.launcher import ROLES, Launcher

    roles = tuple(ROLES if roles is None else roles)
    run = tmp / "run"
    cfg = tmp / "qwen3-tts.toml"
    cfg.write_text(f'model_dir = "{model}"\nruntime_dir = "{run}"\n{top}[limits]\n{limits}{sections}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TTS_")}
    env.update(QWEN3_TTS_CONFIG=str(cfg), PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(tmp / "xdg-cache"))
    kw = {} if watchdog_usec is None else {"watchdog_usec": watchdog_usec}
    la = Launcher(run, env=env, **kw)
    la.run, la.cfg, la.roles = run, cfg, roles
    la.endpoint = f"ipc://{run}/talker.sock"
    try:
        for r in roles:
            la.start(r)
        for r in roles:
            la.wait_ready(r, ready_timeout_s)
    except BaseException:
        stop_cluster(la)
        raise
    return la


def stop_cluster(la) -> None:
    for r in reversed(la.roles):
        la.stop(r)
    la.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick; the gateway binds it moments later)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
