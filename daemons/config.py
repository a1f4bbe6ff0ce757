"""Runtime configuration: one TOML file plus environment overrides.

File (the first one found is used, the others are ignored):

    $QWEN3_TTS_CONFIG                      (must exist when set)
    ./qwen3-tts.toml
    ${XDG_CONFIG_HOME:-~/.config}/qwen3-tts/config.toml
    /etc/qwen3-tts/config.toml

No file at all is fine: every key has a default (see `qwen3-tts.example.toml`, which documents them).
Environment variables override the file:

    QWEN3_TTS_MODEL_DIR, QWEN3_TTS_RUNTIME_DIR, QWEN3_TTS_VOICES_DIR
    QWEN3_TTS_CACHE_DIR                                the persistent caches ("off" disables them)
    QWEN3_TTS_{TALKER,PREDICTOR,VOCODER}_ENDPOINT      any ZeroMQ endpoint (ipc://, tcp://, ...)
    QWEN3_TTS_{TALKER,PREDICTOR,VOCODER}_CPUS          "4-7", "0,2", "0-1,4-7" or "auto"
    QWEN3_TTS_{TALKER,PREDICTOR,VOCODER}_THREADS       a positive integer or "auto"
    QWEN3_TTS_SAMPLING_<KEY>                           e.g. QWEN3_TTS_SAMPLING_TEMPERATURE=0.7
    QWEN3_TTS_LIMITS_<KEY>                             e.g. QWEN3_TTS_LIMITS_QUEUE_SIZE=16
    QWEN3_TTS_VOCODER_{BACKEND,NPU_CORE_MASK,RKNN_FILE} the vocoder backend (see VocoderBackend, docs/RKNN.md)
    QWEN3_TTS_GATEWAY_<KEY>                            the HTTP gateway, e.g. QWEN3_TTS_GATEWAY_ENCODER_IDLE_S=30
                                                       (not voice_aliases; API_KEYS comma-separated)
    QWEN3_TTS_SECURITY_<KEY>                           [security] CURVE key paths, e.g.
                                                       QWEN3_TTS_SECURITY_CURVE_CLIENT_SECRET=/etc/.../client.key_secret

The runtime directory (where the default ipc:// sockets live; the launcher's pid files and logs too) is
decided here and nowhere else (launch.sh asks `python -m daemons.config --runtime-dir`). First that applies:

  1. QWEN3_TTS_RUNTIME_DIR, then `runtime_dir` in the file: explicit overrides, for everyone;
  2. $RUNTIME_DIRECTORY: inside the systemd units (RuntimeDirectory=qwen3-tts -> /run/qwen3-tts);
  3. the *own* directory of daemons started without systemd (launch.sh, daemons.launcher, a hand-started
     qwen3-tts-daemon): $XDG_RUNTIME_DIR/qwen3-tts when XDG_RUNTIME_DIR is set, else /tmp/qwen3-tts-UID
     (UID = the effective user id; the launcher creates it 0700 and refuses one that is not private);
  3'. clients instead (`load_config(discover=True)`: client.api.default_endpoint, so tts-client and the
     gateways) take the first of  $XDG_RUNTIME_DIR/qwen3-tts, /tmp/qwen3-tts-UID, /run/qwen3-tts
     where a talker answers at talker.sock (a live socket, in a directory that is ours and private; the
     systemd directory is trusted as root's), else the own directory of 3.

The cache directory (persistent caches: the talker's prompt-prefix KV states in talker-prefix/, the
vocoder's primed voice states in vocoder-contexts/; bounded by [limits] prefix_cache_mb, vocoder_cache_mb):
QWEN3_TTS_CACHE_DIR, then `cache_dir` in the file ("" disables them), then $CACHE_DIRECTORY (systemd's
CacheDirectory=qwen3-tts -> /var/cache/qwen3-tts), then $XDG_CACHE_HOME/qwen3-tts, else ~/.cache/qwen3-tts.

So a bare `tts-client` finds a `launch.sh --daemon` started with or without XDG_RUNTIME_DIR (one's own
daemons first), and the systemd services otherwise; nothing is ever looked up in another user's /tmp
directory.

Relative paths (in the file or the environment) are taken relative to the current directory, like the
default model directory `models/qwen3-tts-0.6b`; `~` is expanded. Unknown keys and wrong types are errors
(`ConfigError`, naming the file or variable and the key), never silently ignored.

`python -m daemons.config` prints the effective configuration and where it came from.
"""
from __future__ import annotations

import json
import math
import os
import socket
import stat
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from .engine.sampling_bounds import MAX_TOP_K, MIN_REPETITION_PENALTY, MIN_TEMPERATURE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ROLES = ("talker", "predictor", "vocoder")
DEFAULT_MODEL_DIR = "models/qwen3-tts-0.6b"
SYSTEM_CONFIG = "/etc/qwen3-tts/config.toml"
SYSTEMD_RUNTIME_DIR = "/run/qwen3-tts"   # RuntimeDirectory=qwen3-tts of systemd/qwen3-tts@.service
TMP_DIR = "/tmp"                         # base of the fallback /tmp/qwen3-tts-UID (tests point it elsewhere)
ZMQ_SCHEMES = ("ipc", "tcp", "inproc", "pgm", "epgm", "ws", "wss", "tipc", "vmci", "udp")
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_IPC_PATH_BYTES = 107


class ConfigError(ValueError):
    """Invalid configuration; the message names the file (or environment variable) and the key."""


@dataclass
class RoleConfig:
    cpus: list[int] | None = None     # None: automatic (see daemons.cpu.plan_cpus)
    threads: int | None = None        # None: one per pinned CPU
    # predictor only: threads for the frames while the vocoder is idle, on its CPUs plus the vocoder's
    # (None: automatic, see daemons.cpu.plan_burst; 0: never)
    burst_threads: int | None = None


@dataclass
class Limits:
    max_text_chars: int = 20000
    queue_size: int = 8
    request_timeout_s: float = 600.0
    predictor_timeout_s: float = 5.0
    vocoder_timeout_s: float = 10.0
    max_message_bytes: int = 4 * 1024 * 1024
    chunk_frames: int = 4
    first_chunk_frames: int = 1     # 1: first audio after one frame (TTFA 287 -> 162 ms, docs/PERFORMANCE.md)
    max_frames: int = 2048
    client_queue_size: int = 4        # waiting requests one client connection may hold (fairness)
    client_send_queue: int = 4096     # messages queued towards one client; a client that stops reading is dropped
    max_ref_frames: int = 400         # reference codes of an in-context voice (32 s; encode-voice takes <= 30 s)
    vocoder_max_frames: int = 64      # frames in one vocoder message (decoded 16 at a time); more: bad_request
    drain_timeout_s: float = 20.0     # on SIGTERM, requests still running after this end with shutting_down
    # long text: sentence segments, per-segment frame caps, runaway detection (0 disables where noted)
    segment_max_chars: int = 300
    pause_ms: int = 150               # silence between segments (0: none)
    cap_base_frames: int = 25         # segment cap = cap_base_frames + cap_frames_per_token * text tokens
    cap_frames_per_token: float = 6.0
    loop_frames: int = 36             # stop when the last N code-0 values repeat with period <= 8 (0: off)
    silence_frames: int = 30          # stop after N near-silent frames once the text is consumed (0: off)
    silence_rms: float = 0.003        # "near-silent": frame RMS below this (about -50 dBFS)
    # once its text is used up, a segment runs at most N frames ahead of the audio heard back: the silence
    # rule then acts within N frames however far behind a loaded vocoder is (normal lag: a chunk + ~2)
    silence_lag_frames: int = 12
    # persistent caches under cache_dir, least recently used files dropped beyond these sizes
    prefix_cache_mb: float = 1024.0   # talker prompt-prefix KV states (full size: ~112 KiB per prompt row, f16)
    vocoder_cache_mb: float = 256.0   # vocoder states primed with a voice's reference codes


VOCODER_BACKENDS = ("auto", "onnx", "rknn")
# RK3588 NPU cores; `npu_core_mask` names them like CPU lists ("0", "0-2", "1,2") or "auto"/"all".
NPU_CORES = 3
DEFAULT_RKNN_FILE = "vocoder.rknn"


@dataclass
class VocoderBackend:
    """[vocoder] backend keys (next to cpus/threads). docs/RKNN.md has the details.

    backend: "auto" = the RKNN NPU model when `rknn_file` exists and rknn-toolkit-lite2 + the NPU driver
    load it, else onnxruntime (one log line says why); "rknn" = the same, but falling back is logged as
    a warning; "onnx" = onnxruntime only.
    npu_core_mask: "auto" (the driver picks an idle core), "all", or cores like "0", "0-1", "0,2".
    rknn_file: the .rknn model, relative to the model directory unless absolute."""
    backend: str = "auto"
    npu_core_mask: str = "auto"
    rknn_file: str = DEFAULT_RKNN_FILE


OPENAI_VOICES = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer", "verse",
                 "marin", "cedar")


@dataclass
class GatewayConfig:
    """[gateway]: the OpenAI-compatible HTTP front (daemons/gateway/). `voice_aliases`: request voice name ->
    a voice name of voices_dir, or "" for the default voice (OpenAI's stock names by default)."""
    host: str = "127.0.0.1"
    port: int = 8880
    api_keys: list[str] = field(default_factory=list)   # empty: no authentication
    max_input_chars: int = 20000
    voice_aliases: dict[str, str] = field(default_factory=lambda: {v: "" for v in OPENAI_VOICES})
    # the Wyoming front (daemons/gateway/wyoming.py, Home Assistant) in the same process: tcp://HOST:PORT,
    # unix:///path, or "" (env: "" or "off") for none; wyoming_zeroconf announces a tcp:// one over mDNS
    # (needs the zeroconf package)
    wyoming_uri: str = "tcp://127.0.0.1:10200"
    wyoming_zeroconf: bool = False
    # POST /v1/audio/voices encodes in a child process (daemons/gateway/encoder_child.py) that holds the voice
    # encoders; it exits after this many seconds without an upload (0: after every upload)
    encoder_idle_s: float = 60.0


@dataclass
class SecurityConfig:
    """[security]: ZeroMQ CURVE (encryption + authentication) on every network endpoint (tcp:// and the
    other non-ipc transports; ipc:// and inproc:// are protected by file modes / the process and never use
    it). Key files are the certificates of `qwen3-tts-daemon keygen` (docs/SECURITY.md).
    Server side (the daemons that bind tcp://): curve_server_secret + curve_authorized_dir (the clients'
    public certificates, *.key, allowed to connect; any other peer is refused at the handshake).
    Client side (tts-client, the gateway, the talker towards a remote predictor/vocoder):
    curve_client_secret + curve_server_public (the server's public certificate)."""
    curve_server_secret: Path | None = None
    curve_authorized_dir: Path | None = None
    curve_client_secret: Path | None = None
    curve_server_public: Path | None = None

    @property
    def curve_server(self) -> bool:
        return self.curve_server_secret is not None

    @property
    def curve_client(self) -> bool:
        return self.curve_client_secret is not None


_SECURITY_PAIRS = (("curve_server_secret", "curve_authorized_dir"), ("curve_client_secret", "curve_server_public"))


def _security_check(sec: SecurityConfig, src: str) -> None:
    """Both keys of a side or neither: half a CURVE setup would silently run unauthenticated. (The files
    are read, and their absence reported, where a socket uses them: daemons/curve.py.)"""
    for a, b in _SECURITY_PAIRS:
        if (getattr(sec, a) is None) != (getattr(sec, b) is None):
            have, missing = (a, b) if getattr(sec, a) is not None else (b, a)
            raise ConfigError(f"{src}: security.{have} is set but security.{missing} is not (CURVE needs both)")


def _wyoming_uri(value: Any, where: str) -> str:
    """tcp://HOST:PORT, unix:///absolute/path, or "" (off; "off"/"none" too, for the environment)."""
    from urllib.parse import urlparse

    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string (tcp://HOST:PORT, unix:///path or \"\" for off), "
                          f"got {type(value).__name__} {value!r}")
    v = value.strip()
    if v.lower() in ("", "off", "none"):
        return ""
    u = urlparse(v)
    if u.scheme == "tcp":
        try:
            port = u.port
        except ValueError:
            port = None
        if not u.hostname or port is None or not 0 < port < 65536 or u.path not in ("", "/"):
            raise ConfigError(f"{where}: expected tcp://HOST:PORT with a port in 1..65535, got {value!r}")
        return v
    if u.scheme == "unix":
        if not u.path.startswith("/") or u.netloc:
            raise ConfigError(f"{where}: expected unix:///absolute/path.sock, got {value!r}")
        return v
    raise ConfigError(f"{where}: expected tcp://HOST:PORT, unix:///path or \"\" (off), got {value!r}")


def _gateway_value(key: str, value: Any, where: str, from_env: bool) -> Any:
    if key == "host":
        return _as_str(value, where).strip()
    if key == "wyoming_uri":
        return _wyoming_uri(value, where)
    if key == "wyoming_zeroconf":
        return _as_bool(value, where, from_env)
    if key == "encoder_idle_s":
        v = _as_float(value, where, from_env)
        if not 0 <= v <= 86400:
            raise ConfigError(f"{where}: out of range: {v!r} (seconds in 0..86400; 0 = exit after every upload)")
        return v
    if key in ("port", "max_input_chars"):
        v = _as_int(value, where, from_env)
        if not (0 < v < 65536 if key == "port" else v > 0):
            raise ConfigError(f"{where}: out of range: {v!r}")
        return v
    if key == "api_keys":
        if from_env and isinstance(value, str):
            value = [k.strip() for k in value.split(",") if k.strip()]
        if not isinstance(value, list) or not all(isinstance(k, str) and k for k in value):
            raise ConfigError(f"{where}: expected a list of non-empty strings")
        return value
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(f"{where}: expected a table of voice name -> voice name (\"\" = default voice)")
    return dict(value)


# Sampling overrides accepted in [sampling] (names of daemons.engine.sampling.SamplingParams fields), with
# SamplingParams.validate's bounds, so a config the daemons would refuse per request fails at start instead:
# name -> (kind, check, description of the allowed range)
_SAMPLING_KEYS: dict[str, tuple[str, Any, str]] = {
    "do_sample": ("bool", None, ""),
    "temperature": ("float", lambda v: v >= MIN_TEMPERATURE, f">= {MIN_TEMPERATURE:g} (do_sample false for greedy)"),
    "top_k": ("int", lambda v: 0 <= v <= MAX_TOP_K, f"in 0..{MAX_TOP_K} (0 disables)"),
    "top_p": ("float", lambda v: 0 < v <= 1, "in (0, 1]"),
    "repetition_penalty": ("float", lambda v: v >= MIN_REPETITION_PENALTY, f">= {MIN_REPETITION_PENALTY:g}"),
    "sub_do_sample": ("bool", None, ""),
    "sub_temperature": ("float", lambda v: v >= MIN_TEMPERATURE, f">= {MIN_TEMPERATURE:g} (sub_do_sample false for greedy)"),
    "sub_top_k": ("int", lambda v: 0 <= v <= MAX_TOP_K, f"in 0..{MAX_TOP_K} (0 disables)"),
    "sub_top_p": ("float", lambda v: 0 < v <= 1, "in (0, 1]"),
    "min_new_tokens": ("int", lambda v: v >= 0, ">= 0"),
    "seed": ("int", lambda v: 0 <= v < 2 ** 63, "in [0, 2**63)"),
}


@dataclass
class Config:
    model_dir: Path = field(default_factory=lambda: Path.cwd() / DEFAULT_MODEL_DIR)
    runtime_dir: Path = field(default_factory=lambda: own_runtime_dir(os.environ))
    endpoints: dict[str, str] = field(default_factory=dict)
    roles: dict[str, RoleConfig] = field(default_factory=lambda: {r: RoleConfig() for r in ROLES})
    sampling: dict[str, Any] = field(default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    voices_dir: Path | None = None
    cache_dir: Path | None = None     # persistent caches; None: none (load_config picks the default)
    source: Path | None = None        # the TOML file that was read, None when none was found
    vocoder_backend: VocoderBackend = field(default_factory=VocoderBackend)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)

    def endpoint(self, role: str) -> str:
        return self.endpoints[_check_role(role)]

    def role(self, role: str) -> RoleConfig:
        return self.roles[_check_role(role)]

    def to_dict(self) -> dict:
        d = asdict(self)
        for k in ("model_dir", "runtime_dir", "voices_dir", "cache_dir", "source"):
            d[k] = None if d[k] is None else str(d[k])
        d["security"] = {k: None if v is None else str(v) for k, v in d["security"].items()}
        return d


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
    return role


# ---------------------------------------------------------------------------------------------- values

def parse_cpus(value: Any, where: str) -> list[int] | None:
    """"4-7", "0,2", "0-1,4-7", [4, 5, 6, 7] -> sorted unique ints; "auto", "" -> None."""
    if isinstance(value, str):
        s = value.strip()
        if s.lower() in ("", "auto"):
            return None
        out: set[int] = set()
        for part in s.split(","):
            part = part.strip()
            lo, sep, hi = part.partition("-")
            try:
                a = int(lo)
                b = int(hi) if sep else a
            except ValueError:
                raise ConfigError(f"{where}: bad CPU list {value!r} (expected e.g. \"4-7\" or \"0,2\")") from None
            if a < 0 or b < a:
                raise ConfigError(f"{where}: bad CPU range {part!r} in {value!r}")
            out.update(range(a, b + 1))
        return sorted(out)
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: empty CPU list (leave the key out for automatic placement)")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
            raise ConfigError(f"{where}: CPU list must hold non-negative integers, got {value!r}")
        return sorted(set(value))
    raise ConfigError(f"{where}: expected a CPU list (array of integers or a string like \"4-7\"), "
                      f"got {type(value).__name__} {value!r}")


def _as_int(value: Any, where: str, from_env: bool) -> int:
    if from_env and isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
    return value


def _as_float(value: Any, where: str, from_env: bool) -> float:
    if from_env and isinstance(value, str):
        try:
            v = float(value.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
    else:
        v = float(value)
    if not math.isfinite(v):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return v


def _as_bool(value: Any, where: str, from_env: bool) -> bool:
    if from_env and isinstance(value, str):
        s = value.strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected a boolean (true/false/1/0), got {value!r}")
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: expected a boolean, got {type(value).__name__} {value!r}")
    return value


def _as_str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {type(value).__name__} {value!r}")
    return value


def _expand_home(s: str, home: str | None) -> Path:
    if home and (s == "~" or s.startswith("~/")):
        return Path(home + s[1:])
    return Path(s).expanduser()


def _as_path(value: Any, where: str, cwd: Path, home: str | None = None) -> Path:
    p = _expand_home(_as_str(value, where), home)
    return p if p.is_absolute() else cwd / p


def _as_threads(value: Any, where: str, from_env: bool, key: str = "threads", least: int = 1) -> int | None:
    """A thread count, or None for "auto" / "" (automatic)."""
    if isinstance(value, str) and value.strip().lower() in ("", "auto"):
        return None
    n = _as_int(value, where, from_env)
    if n < least:
        raise ConfigError(f"{where}: {key} must be >= {least}{' (0: off)' if least == 0 else ''}, got {n}")
    return n


def check_endpoint(value: Any, where: str) -> str:
    s = _as_str(value, where).strip()
    scheme, sep, rest = s.partition("://")
    if not sep or scheme not in ZMQ_SCHEMES or not rest:
        raise ConfigError(f"{where}: {s!r} is not a ZeroMQ endpoint (expected e.g. ipc:///run/qwen3-tts/talker.sock "
                          f"or tcp://192.168.1.10:5555)")
    if scheme == "ipc" and not rest.startswith("@") and len(os.fsencode(rest)) > MAX_IPC_PATH_BYTES:
        raise ConfigError(f"{where}: ipc socket path {rest!r} is longer than {MAX_IPC_PATH_BYTES} bytes "
                          f"(the AF_UNIX limit); use a shorter runtime directory")
    return s


def _sampling_value(key: str, value: Any, where: str, from_env: bool) -> Any:
    kind, check, allowed = _SAMPLING_KEYS[key]
    v = {"bool": _as_bool, "int": _as_int, "float": _as_float}[kind](value, where, from_env)
    if check is not None and not check(v):
        raise ConfigError(f"{where}: must be {allowed}, got {v!r}")
    return v


_ZERO_OK = {"pause_ms", "loop_frames", "silence_frames"}


def _limit_value(name: str, value: Any, where: str, from_env: bool) -> Any:
    default = getattr(Limits(), name)
    v = _as_float(value, where, from_env) if isinstance(default, float) else _as_int(value, where, from_env)
    if name in _ZERO_OK:
        if v < 0:
            raise ConfigError(f"{where}: must be >= 0, got {v!r}")
    elif not v > 0:
        raise ConfigError(f"{where}: must be > 0, got {v!r}")
    return v


def parse_npu_core_mask(value: Any, where: str) -> int | None:
    """"auto" -> None (the runtime's NPU_CORE_AUTO); "all" -> every core; "0", "0-1", "0,2" -> a bit mask
    (bit i = NPU core i, the values of rknnlite's NPU_CORE_* constants)."""
    s = _as_str(value, where).strip().lower()
    if s == "auto":
        return None
    if s == "all":
        return (1 << NPU_CORES) - 1
    cores = parse_cpus(s, where)
    if not cores or max(cores) >= NPU_CORES:
        raise ConfigError(f"{where}: bad NPU core list {value!r} (cores 0..{NPU_CORES - 1}, e.g. \"0\", \"0-2\", "
                          f"\"auto\", \"all\")")
    return sum(1 << c for c in cores)


def _vocoder_backend_value(key: str, value: Any, where: str) -> str:
    s = _as_str(value, where).strip()
    if key == "backend":
        s = s.lower()
        if s not in VOCODER_BACKENDS:
            raise ConfigError(f"{where}: expected one of {', '.join(VOCODER_BACKENDS)}, got {value!r}")
    elif key == "npu_core_mask":
        parse_npu_core_mask(s, where)
        s = s.lower()
    return s


# ---------------------------------------------------------------------------------------------- runtime dir

def _cache_dir(doc: dict, env: Mapping[str, str], src: str, cwd: Path, home: str | None) -> Path | None:
    """See the module docstring: explicit settings, then systemd's CacheDirectory=, then XDG."""
    v = env.get("QWEN3_TTS_CACHE_DIR", "").strip()
    if v:
        return None if v.lower() in ("off", "none") else _as_path(v, "QWEN3_TTS_CACHE_DIR", cwd, home)
    if "cache_dir" in doc:
        v = doc["cache_dir"]
        if v == "":
            return None
        return _as_path(v, f"{src}: cache_dir", cwd, home)
    if env.get("CACHE_DIRECTORY"):
        return Path(env["CACHE_DIRECTORY"].split(":")[0])
    if env.get("XDG_CACHE_HOME", "").startswith("/"):  # a relative one is invalid (XDG spec): ignored
        return Path(env["XDG_CACHE_HOME"]) / "qwen3-tts"
    return Path(home) / ".cache" / "qwen3-tts" if home else None


def own_runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where daemons started without systemd (and without an explicit setting) put their sockets:
    $XDG_RUNTIME_DIR/qwen3-tts, else /tmp/qwen3-tts-UID."""
    env = os.environ if env is None else env
    if env.get("XDG_RUNTIME_DIR"):
        return Path(env["XDG_RUNTIME_DIR"]) / "qwen3-tts"
    return Path(TMP_DIR) / f"qwen3-tts-{os.geteuid()}"


def runtime_dir_candidates(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where a client looks for running daemons, in order: one's own (launch.sh), then systemd's."""
    env = os.environ if env is None else env
    out = [Path(env["XDG_RUNTIME_DIR"]) / "qwen3-tts"] if env.get("XDG_RUNTIME_DIR") else []
    return out + [Path(TMP_DIR) / f"qwen3-tts-{os.geteuid()}", Path(SYSTEMD_RUNTIME_DIR)]


def private_dir_problem(path: Path, owner: int | None = None) -> str | None:
    """Why `path` is not a safe runtime directory (None when it is): it must be a real directory (not a
    symlink), owned by `owner` (default: the effective user; -1: any owner) and not writable by group or
    others. Another user could otherwise plant sockets, pid files or symlinks in it."""
    owner = os.geteuid() if owner is None else owner
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return f"{path} does not exist"
    except OSError as e:
        return f"{path}: {e.strerror or e}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if owner >= 0 and st.st_uid != owner:
        return f"{path} is owned by uid {st.st_uid}, not by uid {owner} (this user)"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by its group or by others (mode {stat.S_IMODE(st.st_mode):04o}; expected 0700)"
    return None


def socket_answers(path: Path, timeout_s: float = 0.5) -> bool:
    """A process listens on the AF_UNIX stream socket at `path` (a stale socket file refuses)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def discover_runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """A client's runtime directory: the first candidate (`runtime_dir_candidates`) that is safe and has a
    talker answering at talker.sock; else the daemons' own default (so "not running" names where
    `launch.sh --daemon` would put it). The systemd directory belongs to the service user (any owner)."""
    for d in runtime_dir_candidates(env):
        owner = -1 if d == Path(SYSTEMD_RUNTIME_DIR) else None
        if private_dir_problem(d, owner) is None and socket_answers(d / "talker.sock"):
            return d
    return own_runtime_dir(env)


# ---------------------------------------------------------------------------------------------- loading

def find_config_file(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    explicit = env.get("QWEN3_TTS_CONFIG")
    if explicit:
        p = _as_path(explicit, "QWEN3_TTS_CONFIG", cwd, env.get("HOME"))
        if not p.is_file():
            raise ConfigError(f"QWEN3_TTS_CONFIG={explicit}: no such file")
        return p
    home = env.get("HOME") or str(Path.home())
    xdg = env.get("XDG_CONFIG_HOME") or str(Path(home) / ".config")
    for p in (cwd / "qwen3-tts.toml", Path(xdg) / "qwen3-tts" / "config.toml", Path(SYSTEM_CONFIG)):
        if p.is_file():
            return p
    return None


def _read_toml(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None


def _table(doc: dict, key: str, src: str) -> dict:
    t = doc.get(key, {})
    if not isinstance(t, dict):
        raise ConfigError(f"{src}: {key}: expected a table [{key}], got {type(t).__name__}")
    return t


def _unknown(keys, allowed, src: str, prefix: str = "") -> None:
    bad = sorted(set(keys) - set(allowed))
    if bad:
        raise ConfigError(f"{src}: unknown key {prefix}{bad[0]}"
                          + (f" (and {', '.join(prefix + b for b in bad[1:])})" if len(bad) > 1 else "")
                          + f"; allowed: {', '.join(prefix + a for a in allowed)}")


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None, *,
                discover: bool = False) -> Config:
    """Read the configuration (see the module docstring). `path` skips the search; `env` defaults to
    os.environ (tests pass a dict). `discover`: a client's view: without an explicit runtime directory,
    the one where a talker daemon answers (`discover_runtime_dir`) instead of the daemons' own default."""
    env = dict(os.environ if env is None else env)
    cwd = Path.cwd()
    home = env.get("HOME")
    if path is not None:
        src_path: Path | None = _expand_home(os.fspath(path), home)
        if not src_path.is_file():
            raise ConfigError(f"{src_path}: no such config file")
    else:
        src_path = find_config_file(env, cwd)
    doc = _read_toml(src_path) if src_path is not None else {}
    src = str(src_path) if src_path is not None else "<defaults>"

    top = ("model_dir", "runtime_dir", "voices_dir", "cache_dir", "endpoints", *ROLES, "sampling", "limits",
           "gateway", "security")
    _unknown(doc.keys(), top, src)
    cfg = Config(source=src_path)

    # --- paths
    if "model_dir" in doc:
        cfg.model_dir = _as_path(doc["model_dir"], f"{src}: model_dir", cwd, home)
    if env.get("QWEN3_TTS_MODEL_DIR"):
        cfg.model_dir = _as_path(env["QWEN3_TTS_MODEL_DIR"], "QWEN3_TTS_MODEL_DIR", cwd, home)
    if "voices_dir" in doc:
        cfg.voices_dir = _as_path(doc["voices_dir"], f"{src}: voices_dir", cwd, home)
    if env.get("QWEN3_TTS_VOICES_DIR"):
        cfg.voices_dir = _as_path(env["QWEN3_TTS_VOICES_DIR"], "QWEN3_TTS_VOICES_DIR", cwd, home)

    cfg.cache_dir = _cache_dir(doc, env, src, cwd, home)

    if env.get("QWEN3_TTS_RUNTIME_DIR"):
        cfg.runtime_dir = _as_path(env["QWEN3_TTS_RUNTIME_DIR"], "QWEN3_TTS_RUNTIME_DIR", cwd, home)
    elif "runtime_dir" in doc:
        cfg.runtime_dir = _as_path(doc["runtime_dir"], f"{src}: runtime_dir", cwd, home)
    elif env.get("RUNTIME_DIRECTORY"):
        # systemd sets a colon-separated list when a unit has several RuntimeDirectory= entries.
        cfg.runtime_dir = Path(env["RUNTIME_DIRECTORY"].split(":")[0])
    elif discover:
        cfg.runtime_dir = discover_runtime_dir(env)
    else:
        cfg.runtime_dir = own_runtime_dir(env)

    # --- endpoints
    t = _table(doc, "endpoints", src)
    _unknown(t.keys(), ROLES, src, "endpoints.")
    for role in ROLES:
        var = f"QWEN3_TTS_{role.upper()}_ENDPOINT"
        if env.get(var):
            cfg.endpoints[role] = check_endpoint(env[var], var)
        elif role in t:
            cfg.endpoints[role] = check_endpoint(t[role], f"{src}: endpoints.{role}")
        else:
            cfg.endpoints[role] = check_endpoint(f"ipc://{cfg.runtime_dir / (role + '.sock')}",
                                                 f"endpoint of {role} (from runtime_dir {cfg.runtime_dir})")

    # --- roles
    backend_keys = [f.name for f in fields(VocoderBackend)]
    for role in ROLES:
        t = _table(doc, role, src)
        extra = backend_keys if role == "vocoder" else ["burst_threads"] if role == "predictor" else []
        _unknown(t.keys(), ("cpus", "threads", *extra), src, f"{role}.")
        rc = RoleConfig()
        if role == "predictor":
            var = "QWEN3_TTS_PREDICTOR_BURST_THREADS"
            if var in env:
                rc.burst_threads = _as_threads(env[var], var, True, "burst_threads", 0)
            elif "burst_threads" in t:
                rc.burst_threads = _as_threads(t["burst_threads"], f"{src}: predictor.burst_threads", False,
                                               "burst_threads", 0)
        if "cpus" in t:
            rc.cpus = parse_cpus(t["cpus"], f"{src}: {role}.cpus")
        if "threads" in t:
            rc.threads = _as_threads(t["threads"], f"{src}: {role}.threads", False)
        var = f"QWEN3_TTS_{role.upper()}_CPUS"
        if var in env:
            rc.cpus = parse_cpus(env[var], var)
        var = f"QWEN3_TTS_{role.upper()}_THREADS"
        if var in env:
            rc.threads = _as_threads(env[var], var, True)
        cfg.roles[role] = rc

    # --- vocoder backend ([vocoder] backend, npu_core_mask, rknn_file)
    t = _table(doc, "vocoder", src)
    for key in backend_keys:
        var = f"QWEN3_TTS_VOCODER_{key.upper()}"
        if env.get(var, "").strip():
            setattr(cfg.vocoder_backend, key, _vocoder_backend_value(key, env[var], var))
        elif key in t:
            setattr(cfg.vocoder_backend, key, _vocoder_backend_value(key, t[key], f"{src}: vocoder.{key}"))

    # --- sampling
    t = _table(doc, "sampling", src)
    _unknown(t.keys(), _SAMPLING_KEYS, src, "sampling.")
    for key, value in t.items():
        cfg.sampling[key] = _sampling_value(key, value, f"{src}: sampling.{key}", False)
    _env_section(env, "QWEN3_TTS_SAMPLING_", _SAMPLING_KEYS,
                 lambda k, v, w: cfg.sampling.__setitem__(k, _sampling_value(k, v, w, True)))

    # --- limits
    names = [f.name for f in fields(Limits)]
    t = _table(doc, "limits", src)
    _unknown(t.keys(), names, src, "limits.")
    for key, value in t.items():
        setattr(cfg.limits, key, _limit_value(key, value, f"{src}: limits.{key}", False))
    _env_section(env, "QWEN3_TTS_LIMITS_", names,
                 lambda k, v, w: setattr(cfg.limits, k, _limit_value(k, v, w, True)))
    for key in ("chunk_frames", "first_chunk_frames"):  # the vocoder refuses messages of more frames
        if getattr(cfg.limits, key) > cfg.limits.vocoder_max_frames:
            raise ConfigError(f"{src}: limits.{key} = {getattr(cfg.limits, key)} exceeds limits.vocoder_max_frames "
                              f"= {cfg.limits.vocoder_max_frames} (frames the vocoder takes in one message)")

    # --- gateway
    names = [f.name for f in fields(GatewayConfig)]
    t = _table(doc, "gateway", src)
    _unknown(t.keys(), names, src, "gateway.")
    for key, value in t.items():
        setattr(cfg.gateway, key, _gateway_value(key, value, f"{src}: gateway.{key}", False))
    _env_section(env, "QWEN3_TTS_GATEWAY_", [n for n in names if n != "voice_aliases"],
                 lambda k, v, w: setattr(cfg.gateway, k, _gateway_value(k, v, w, True)))

    # --- security (CURVE key paths)
    names = [f.name for f in fields(SecurityConfig)]
    t = _table(doc, "security", src)
    _unknown(t.keys(), names, src, "security.")
    for key, value in t.items():
        setattr(cfg.security, key, _as_path(value, f"{src}: security.{key}", cwd, home))
    _env_section(env, "QWEN3_TTS_SECURITY_", names,
                 lambda k, v, w: setattr(cfg.security, k, _as_path(v, w, cwd, home)))
    _security_check(cfg.security, src)
    return cfg


def _env_section(env: Mapping[str, str], prefix: str, allowed, setter) -> None:
    for var in sorted(env):
        if not var.startswith(prefix):
            continue
        key = var[len(prefix):].lower()
        if key not in allowed:
            raise ConfigError(f"{var}: unknown key {key!r}; allowed: {', '.join(allowed)}")
        if env[var].strip() == "":
            continue
        setter(key, env[var], var)


def main(argv: list[str] | None = None) -> int:
    """`python -m daemons.config [FILE]` prints the effective configuration as JSON;
    `--runtime-dir` prints only the daemons' runtime directory (launch.sh), `--client` the clients' view
    (the directory where a running talker was found)."""
    args = list(sys.argv[1:] if argv is None else argv)
    only_dir, client = "--runtime-dir" in args, "--client" in args
    args = [a for a in args if a not in ("--runtime-dir", "--client")]
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print("usage: python -m daemons.config [--runtime-dir] [--client] [FILE]", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args[0] if args else None, discover=client)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(cfg.runtime_dir if only_dir else json.dumps(cfg.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
