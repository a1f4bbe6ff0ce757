"""daemons.config: file search order, TOML schema, environment overrides, errors naming file and key."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from daemons import config as C
from daemons.config import ConfigError, Limits, RoleConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "qwen3-tts.example.toml"


@pytest.fixture
def rt(monkeypatch):
    """Short stand-ins for /tmp and /run/qwen3-tts (AF_UNIX paths are limited to 107 bytes)."""
    base = Path(tempfile.mkdtemp(prefix="q3c", dir="/tmp"))
    monkeypatch.setattr(C, "TMP_DIR", str(base / "tmp"))
    monkeypatch.setattr(C, "SYSTEMD_RUNTIME_DIR", str(base / "run"))
    (base / "tmp").mkdir()
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def home(tmp_path, monkeypatch, rt):
    """An isolated cwd and HOME; the system-wide file points into the tmp dir (absent unless written);
    /tmp and /run/qwen3-tts of the runtime-directory rule point into a temp dir too."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(C, "SYSTEM_CONFIG", str(tmp_path / "etc" / "config.toml"))
    h = tmp_path / "home"
    h.mkdir()
    return h


def own_tmp_dir() -> Path:
    return Path(C.TMP_DIR) / f"qwen3-tts-{os.geteuid()}"


def env_for(home: Path, **kw) -> dict:
    return {"HOME": str(home), **kw}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_without_any_file(home):
    cfg = load_config(env=env_for(home))
    assert cfg.source is None
    assert cfg.model_dir == Path.cwd() / "models" / "qwen3-tts-0.6b"
    assert cfg.runtime_dir == own_tmp_dir()                         # no XDG_RUNTIME_DIR: /tmp/qwen3-tts-UID
    assert cfg.endpoints == {r: f"ipc://{own_tmp_dir()}/{r}.sock" for r in C.ROLES}
    assert cfg.roles == {r: RoleConfig(None, None) for r in C.ROLES}
    assert cfg.sampling == {}
    assert cfg.limits == Limits()
    assert (cfg.limits.max_text_chars, cfg.limits.queue_size, cfg.limits.request_timeout_s) == (20000, 8, 600.0)
    assert (cfg.limits.predictor_timeout_s, cfg.limits.vocoder_timeout_s) == (5.0, 10.0)
    assert cfg.limits.max_message_bytes == 4 * 1024 * 1024
    assert (cfg.limits.chunk_frames, cfg.limits.first_chunk_frames, cfg.limits.max_frames) == (4, 1, 2048)
    assert cfg.voices_dir is None
    assert cfg.endpoint("talker") == cfg.endpoints["talker"] and cfg.role("vocoder") == RoleConfig()
    with pytest.raises(ValueError):
        cfg.endpoint("nope")


def test_search_order(home, tmp_path):
    system = write(Path(C.SYSTEM_CONFIG), 'model_dir = "/m/system"\n')
    assert load_config(env=env_for(home)).model_dir == Path("/m/system")
    user = write(home / ".config" / "qwen3-tts" / "config.toml", 'model_dir = "/m/user"\n')
    cfg = load_config(env=env_for(home))
    assert (cfg.model_dir, cfg.source) == (Path("/m/user"), user)
    xdg = write(tmp_path / "xdg" / "qwen3-tts" / "config.toml", 'model_dir = "/m/xdg"\n')
    assert load_config(env=env_for(home, XDG_CONFIG_HOME=str(tmp_path / "xdg"))).source == xdg
    local = write(Path.cwd() / "qwen3-tts.toml", 'model_dir = "/m/local"\n')
    assert load_config(env=env_for(home)).source == local
    explicit = write(tmp_path / "elsewhere.toml", 'model_dir = "/m/explicit"\n')
    cfg = load_config(env=env_for(home, QWEN3_TTS_CONFIG=str(explicit)))
    assert (cfg.model_dir, cfg.source) == (Path("/m/explicit"), explicit)
    # an explicit path argument skips the search
    assert load_config(system, env=env_for(home)).model_dir == Path("/m/system")
    with pytest.raises(ConfigError, match="QWEN3_TTS_CONFIG=.*no such file"):
        load_config(env=env_for(home, QWEN3_TTS_CONFIG=str(tmp_path / "missing.toml")))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.toml", env=env_for(home))


FULL = """
model_dir = "models/other"
runtime_dir = "/tmp/q3rt"
voices_dir = "~/voices"

[endpoints]
talker = "tcp://0.0.0.0:5555"
predictor = "tcp://192.168.1.20:5556"

[talker]
cpus = "4-7"
threads = 3

[predictor]
cpus = [7, 6, 5, 4]

[vocoder]
cpus = "0,2"
threads = 2

[sampling]
temperature = 0.7
top_k = 30
top_p = 0.95
repetition_penalty = 1
sub_temperature = 0.5
sub_top_k = 20
sub_top_p = 0.9
seed = 42
do_sample = false

[limits]
max_text_chars = 100
queue_size = 3
request_timeout_s = 60
predictor_timeout_s = 1.5
vocoder_timeout_s = 2
max_message_bytes = 65536
chunk_frames = 8
first_chunk_frames = 3
max_frames = 500
"""


def test_full_file(home):
    write(Path.cwd() / "qwen3-tts.toml", FULL)
    cfg = load_config(env=env_for(home))
    assert cfg.model_dir == Path.cwd() / "models" / "other"       # relative to the cwd
    assert cfg.runtime_dir == Path("/tmp/q3rt")
    assert cfg.voices_dir == home / "voices"                       # ~ expanded with $HOME
    assert cfg.endpoints == {"talker": "tcp://0.0.0.0:5555", "predictor": "tcp://192.168.1.20:5556",
                             "vocoder": "ipc:///tmp/q3rt/vocoder.sock"}
    assert cfg.roles == {"talker": RoleConfig([4, 5, 6, 7], 3), "predictor": RoleConfig([4, 5, 6, 7], None),
                         "vocoder": RoleConfig([0, 2], 2)}
    assert cfg.sampling == {"temperature": 0.7, "top_k": 30, "top_p": 0.95, "repetition_penalty": 1.0,
                            "sub_temperature": 0.5, "sub_top_k": 20, "sub_top_p": 0.9, "seed": 42,
                            "do_sample": False}
    assert isinstance(cfg.sampling["repetition_penalty"], float)
    assert cfg.limits == Limits(100, 3, 60.0, 1.5, 2.0, 65536, 8, 3, 500)
    assert isinstance(cfg.limits.request_timeout_s, float)


def test_environment_overrides_file(home):
    write(Path.cwd() / "qwen3-tts.toml", FULL)
    env = env_for(home, QWEN3_TTS_MODEL_DIR="/models/x", QWEN3_TTS_RUNTIME_DIR="/tmp/envrt",
                  QWEN3_TTS_VOICES_DIR="/v", QWEN3_TTS_TALKER_ENDPOINT="ipc:///tmp/t.sock",
                  QWEN3_TTS_PREDICTOR_CPUS="0-1,4-5", QWEN3_TTS_VOCODER_THREADS="1",
                  QWEN3_TTS_TALKER_CPUS="auto", QWEN3_TTS_TALKER_THREADS="",
                  QWEN3_TTS_SAMPLING_TEMPERATURE="0.3", QWEN3_TTS_SAMPLING_DO_SAMPLE="true",
                  QWEN3_TTS_SAMPLING_SEED="7", QWEN3_TTS_LIMITS_QUEUE_SIZE="16",
                  QWEN3_TTS_LIMITS_VOCODER_TIMEOUT_S="3.5")
    cfg = load_config(env=env)
    assert (cfg.model_dir, cfg.runtime_dir, cfg.voices_dir) == (Path("/models/x"), Path("/tmp/envrt"), Path("/v"))
    assert cfg.endpoints["talker"] == "ipc:///tmp/t.sock"
    assert cfg.endpoints["predictor"] == "tcp://192.168.1.20:5556"       # file still applies
    assert cfg.endpoints["vocoder"] == "ipc:///tmp/envrt/vocoder.sock"   # default follows the runtime dir
    assert cfg.roles["predictor"] == RoleConfig([0, 1, 4, 5], None)
    assert cfg.roles["vocoder"] == RoleConfig([0, 2], 1)
    assert cfg.roles["talker"] == RoleConfig(None, None)                # "auto" / "" reset to automatic
    for value, want in (("0", 0), ("3", 3), ("auto", None)):
        got = load_config(env={**env, "QWEN3_TTS_PREDICTOR_BURST_THREADS": value}).roles["predictor"]
        assert got.burst_threads == want
    assert (cfg.sampling["temperature"], cfg.sampling["do_sample"], cfg.sampling["seed"]) == (0.3, True, 7)
    assert cfg.sampling["top_k"] == 30
    assert (cfg.limits.queue_size, cfg.limits.vocoder_timeout_s, cfg.limits.max_frames) == (16, 3.5, 500)


@pytest.mark.parametrize("discover", [False, True])
@pytest.mark.parametrize("env, expected", [
    ({"QWEN3_TTS_RUNTIME_DIR": "/a", "RUNTIME_DIRECTORY": "/b", "XDG_RUNTIME_DIR": "/c"}, "/a"),
    ({"RUNTIME_DIRECTORY": "/b:/b2", "XDG_RUNTIME_DIR": "/c"}, "/b"),
    ({"XDG_RUNTIME_DIR": "/run/user/1000"}, "/run/user/1000/qwen3-tts"),
    ({}, None),                                                     # /tmp/qwen3-tts-UID
])
def test_runtime_dir_precedence(home, env, expected, discover):
    """With no daemon running anywhere, a client's view (discover) is the daemons' own directory."""
    expected = expected or str(own_tmp_dir())
    cfg = load_config(env=env_for(home, **env), discover=discover)
    assert cfg.runtime_dir == Path(expected)
    assert cfg.endpoints["predictor"] == f"ipc://{expected}/predictor.sock"


def test_runtime_dir_in_file_beats_systemd_and_xdg(home):
    write(Path.cwd() / "qwen3-tts.toml", 'runtime_dir = "/run/qwen3-tts"\n')
    cfg = load_config(env=env_for(home, RUNTIME_DIRECTORY="/b", XDG_RUNTIME_DIR="/run/user/1000"))
    assert cfg.runtime_dir == Path("/run/qwen3-tts")
    assert load_config(env=env_for(home, QWEN3_TTS_RUNTIME_DIR="/x")).runtime_dir == Path("/x")


@pytest.mark.parametrize("text, pattern", [
    ('modeldir = "x"\n', r"unknown key modeldir"),
    ('[limits]\nqueue = 3\n', r"unknown key limits\.queue"),
    ('[talker]\ncpu = "4-7"\n', r"unknown key talker\.cpu"),
    ('[sampling]\ntemp = 0.5\n', r"unknown key sampling\.temp"),
    ('[endpoints]\nclient = "tcp://x:1"\n', r"unknown key endpoints\.client"),
    ('[limits]\nqueue_size = "8"\n', r"limits\.queue_size: expected an integer, got str"),
    ('[limits]\nqueue_size = true\n', r"limits\.queue_size: expected an integer, got bool"),
    ('[limits]\nmax_frames = 2.5\n', r"limits\.max_frames: expected an integer, got float"),
    ('[limits]\nrequest_timeout_s = "long"\n', r"limits\.request_timeout_s: expected a number"),
    ('[limits]\nchunk_frames = 0\n', r"limits\.chunk_frames: must be > 0"),
    ('[limits]\nrequest_timeout_s = inf\n', r"limits\.request_timeout_s: expected a finite number"),
    ('[talker]\ncpus = "4-x"\n', r"talker\.cpus: bad CPU list"),
    ('[talker]\ncpus = "7-4"\n', r"talker\.cpus: bad CPU range"),
    ('[talker]\ncpus = []\n', r"talker\.cpus: empty CPU list"),
    ('[talker]\ncpus = [1, -2]\n', r"talker\.cpus: CPU list must hold non-negative integers"),
    ('[talker]\ncpus = 4\n', r"talker\.cpus: expected a CPU list"),
    ('[vocoder]\nthreads = 0\n', r"vocoder\.threads: threads must be >= 1"),
    ('[vocoder]\nthreads = "2"\n', r"vocoder\.threads: expected an integer"),
    ('[predictor]\nburst_threads = -1\n', r"predictor\.burst_threads: burst_threads must be >= 0"),
    ('[talker]\nburst_threads = 2\n', r"unknown key talker\.burst_threads; allowed: talker\.cpus, talker\.threads"),
    ('[sampling]\ntop_p = 1.5\n', r"sampling\.top_p: must be in \(0, 1\]"),
    ('[sampling]\ntemperature = 0\n', r"sampling\.temperature: must be >= 1e-05"),
    ('[sampling]\ntemperature = 1e-6\n', r"sampling\.temperature: must be >= 1e-05"),  # validate() refuses it
    ('[sampling]\nsub_temperature = 5e-6\n', r"sampling\.sub_temperature: must be >= 1e-05"),
    ('[sampling]\ntop_k = -1\n', r"sampling\.top_k: must be in 0\.\.1048576"),
    ('[sampling]\nsub_top_k = 2000000\n', r"sampling\.sub_top_k: must be in 0\.\.1048576"),
    ('[sampling]\nrepetition_penalty = 1e-4\n', r"sampling\.repetition_penalty: must be >= 0\.001"),
    ('[limits]\nchunk_frames = 65\n', r"limits\.chunk_frames = 65 exceeds limits\.vocoder_max_frames = 64"),
    ('[limits]\nvocoder_max_frames = 8\nfirst_chunk_frames = 9\nchunk_frames = 4\n',
     r"limits\.first_chunk_frames = 9 exceeds limits\.vocoder_max_frames = 8"),
    ('[sampling]\ndo_sample = 1\n', r"sampling\.do_sample: expected a boolean"),
    ('[endpoints]\ntalker = "localhost:5555"\n', r"endpoints\.talker: 'localhost:5555' is not a ZeroMQ endpoint"),
    ('[endpoints]\ntalker = 5555\n', r"endpoints\.talker: expected a non-empty string"),
    ('model_dir = 3\n', r"model_dir: expected a non-empty string"),
    ('limits = 3\n', r"limits: expected a table"),
    ('[limits\n', r"invalid TOML"),
])
def test_file_errors_name_file_and_key(home, text, pattern):
    path = write(Path.cwd() / "qwen3-tts.toml", text)
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(env=env_for(home))
    assert str(path) in str(e.value)
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("env, pattern", [
    ({"QWEN3_TTS_VOCODER_THREADS": "two"}, r"QWEN3_TTS_VOCODER_THREADS: expected an integer"),
    ({"QWEN3_TTS_PREDICTOR_BURST_THREADS": "x"}, r"QWEN3_TTS_PREDICTOR_BURST_THREADS: expected an integer"),
    ({"QWEN3_TTS_PREDICTOR_CPUS": "4..7"}, r"QWEN3_TTS_PREDICTOR_CPUS: bad CPU list"),
    ({"QWEN3_TTS_SAMPLING_TEMP": "1"}, r"QWEN3_TTS_SAMPLING_TEMP: unknown key 'temp'"),
    ({"QWEN3_TTS_SAMPLING_TOP_P": "2"}, r"QWEN3_TTS_SAMPLING_TOP_P: must be in"),
    ({"QWEN3_TTS_SAMPLING_DO_SAMPLE": "maybe"}, r"QWEN3_TTS_SAMPLING_DO_SAMPLE: expected a boolean"),
    ({"QWEN3_TTS_LIMITS_QUEUE": "1"}, r"QWEN3_TTS_LIMITS_QUEUE: unknown key 'queue'"),
    ({"QWEN3_TTS_LIMITS_QUEUE_SIZE": "-1"}, r"QWEN3_TTS_LIMITS_QUEUE_SIZE: must be > 0"),
    ({"QWEN3_TTS_VOCODER_ENDPOINT": "http://x"}, r"QWEN3_TTS_VOCODER_ENDPOINT: 'http://x' is not a ZeroMQ"),
])
def test_environment_errors_name_the_variable(home, env, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(env=env_for(home, **env))


@pytest.mark.parametrize("value, expected", [
    ('"tcp://127.0.0.1:10200"', "tcp://127.0.0.1:10200"),
    ('"tcp://0.0.0.0:10300"', "tcp://0.0.0.0:10300"),
    ('"tcp://[::1]:10200"', "tcp://[::1]:10200"),
    ('"unix:///run/qwen3-tts/wyoming.sock"', "unix:///run/qwen3-tts/wyoming.sock"),
    ('""', ""),
    ('"off"', ""),
])
def test_gateway_wyoming_uri(home, value, expected):
    write(Path.cwd() / "qwen3-tts.toml", f"[gateway]\nwyoming_uri = {value}\nwyoming_zeroconf = true\n")
    g = load_config(env=env_for(home)).gateway
    assert (g.wyoming_uri, g.wyoming_zeroconf) == (expected, True)
    default = C.GatewayConfig()
    assert (default.wyoming_uri, default.wyoming_zeroconf) == ("tcp://127.0.0.1:10200", False)
    env = env_for(home, QWEN3_TTS_GATEWAY_WYOMING_URI="off", QWEN3_TTS_GATEWAY_WYOMING_ZEROCONF="no")
    g = load_config(env=env).gateway
    assert (g.wyoming_uri, g.wyoming_zeroconf) == ("", False)


@pytest.mark.parametrize("value, pattern", [
    ('"tcp://127.0.0.1"', r"gateway\.wyoming_uri: expected tcp://HOST:PORT"),
    ('"tcp://127.0.0.1:0"', r"gateway\.wyoming_uri: expected tcp://HOST:PORT"),
    ('"tcp://127.0.0.1:99999"', r"gateway\.wyoming_uri: expected tcp://HOST:PORT"),
    ('"tcp://:10200"', r"gateway\.wyoming_uri: expected tcp://HOST:PORT"),
    ('"unix://relative.sock"', r"gateway\.wyoming_uri: expected unix:///absolute"),
    ('"http://127.0.0.1:10200"', r"gateway\.wyoming_uri: expected tcp://HOST:PORT, unix:///path"),
    ('"127.0.0.1:10200"', r"gateway\.wyoming_uri: expected tcp://HOST:PORT, unix:///path"),
    ("10200", r"gateway\.wyoming_uri: expected a string"),
])
def test_gateway_wyoming_uri_errors(home, value, pattern):
    path = write(Path.cwd() / "qwen3-tts.toml", f"[gateway]\nwyoming_uri = {value}\n")
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(env=env_for(home))
    assert str(path) in str(e.value)
    path.unlink()
    with pytest.raises(ConfigError, match=r"QWEN3_TTS_GATEWAY_WYOMING_ZEROCONF: expected a boolean"):
        load_config(env=env_for(home, QWEN3_TTS_GATEWAY_WYOMING_ZEROCONF="maybe"))
    with pytest.raises(ConfigError, match=r"QWEN3_TTS_GATEWAY_WYOMING_URI: expected tcp://HOST:PORT"):
        load_config(env=env_for(home, QWEN3_TTS_GATEWAY_WYOMING_URI="tcp://host"))


@pytest.mark.parametrize("value, expected", [("60", 60.0), ("0", 0.0), ("2.5", 2.5), ("86400", 86400.0)])
def test_gateway_encoder_idle_s(home, value, expected):
    assert C.GatewayConfig().encoder_idle_s == 60.0
    write(Path.cwd() / "qwen3-tts.toml", f"[gateway]\nencoder_idle_s = {value}\n")
    assert load_config(env=env_for(home)).gateway.encoder_idle_s == expected
    assert load_config(env=env_for(home, QWEN3_TTS_GATEWAY_ENCODER_IDLE_S="7.5")).gateway.encoder_idle_s == 7.5


@pytest.mark.parametrize("value, pattern", [
    ("-1", r"gateway\.encoder_idle_s: out of range"),
    ("86401", r"gateway\.encoder_idle_s: out of range"),
    ("nan", r"gateway\.encoder_idle_s: expected a finite number"),
    ("inf", r"gateway\.encoder_idle_s: expected a finite number"),
    ('"60"', r"gateway\.encoder_idle_s: expected a number"),
    ("true", r"gateway\.encoder_idle_s: expected a number"),
])
def test_gateway_encoder_idle_s_errors(home, value, pattern):
    path = write(Path.cwd() / "qwen3-tts.toml", f"[gateway]\nencoder_idle_s = {value}\n")
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(env=env_for(home))
    assert str(path) in str(e.value)
    path.unlink()
    with pytest.raises(ConfigError, match=r"QWEN3_TTS_GATEWAY_ENCODER_IDLE_S: expected a number"):
        load_config(env=env_for(home, QWEN3_TTS_GATEWAY_ENCODER_IDLE_S="soon"))
    with pytest.raises(ConfigError, match=r"QWEN3_TTS_GATEWAY_ENCODER_IDLE_S: out of range"):
        load_config(env=env_for(home, QWEN3_TTS_GATEWAY_ENCODER_IDLE_S="-5"))


def test_ipc_path_too_long(home):
    with pytest.raises(ConfigError, match="longer than 107 bytes"):
        load_config(env=env_for(home, QWEN3_TTS_RUNTIME_DIR="/tmp/" + "x" * 120))
    # abstract sockets and tcp:// are not file paths
    cfg = load_config(env=env_for(home, QWEN3_TTS_RUNTIME_DIR="/r",
                                  QWEN3_TTS_TALKER_ENDPOINT="ipc://@qwen3-tts-talker"))
    assert cfg.endpoints["talker"] == "ipc://@qwen3-tts-talker"


def test_sampling_keys_are_sampling_params_fields():
    from daemons.engine.sampling import SamplingParams

    names = {f.name for f in dataclasses.fields(SamplingParams)}
    assert set(C._SAMPLING_KEYS) <= names
    assert {"temperature", "top_k", "top_p", "repetition_penalty", "sub_temperature", "sub_top_k",
            "sub_top_p", "seed"} <= set(C._SAMPLING_KEYS)


def test_example_file_documents_every_key_with_its_default(home):
    """As shipped (everything commented out) the example is the defaults; with every `# key = value`
    line uncommented it is still valid, documents every key, and shows the defaults."""
    from daemons.engine.sampling import SamplingParams

    assert load_config(EXAMPLE, env=env_for(home)) == dataclasses.replace(load_config(env=env_for(home)),
                                                                          source=EXAMPLE)
    line = re.compile(r"^# ([a-z_]+) = (.*?)(\s+#.*)?$")
    out, keys, section = [], set(), ""
    for raw in EXAMPLE.read_text().splitlines():
        if raw.startswith("["):
            section = raw.strip("[]") + "."
        m = line.match(raw)
        if m:
            keys.add(section + m.group(1))
            raw = f"{m.group(1)} = {m.group(2)}"
        out.append(raw)
    full = write(Path.cwd() / "uncommented.toml", "\n".join(out) + "\n")
    cfg = load_config(full, env=env_for(home))

    documented = {"model_dir", "runtime_dir", "voices_dir", "cache_dir"}
    documented |= {f"endpoints.{r}" for r in C.ROLES}
    documented |= {f"{r}.{k}" for r in C.ROLES for k in ("cpus", "threads")} | {"predictor.burst_threads"}
    documented |= {f"sampling.{k}" for k in C._SAMPLING_KEYS}
    documented |= {f"limits.{f.name}" for f in dataclasses.fields(Limits)}
    documented |= {f"gateway.{f.name}" for f in dataclasses.fields(C.GatewayConfig)}
    documented |= {f"security.{f.name}" for f in dataclasses.fields(C.SecurityConfig)}
    assert keys == documented

    default = load_config(env=env_for(home))
    assert cfg.model_dir == default.model_dir
    # runtime_dir and the endpoints are shown with the systemd services' directory (the line
    # scripts/install-systemd.sh uncomments), not with the computed default
    assert cfg.runtime_dir == Path("/run/qwen3-tts")
    assert cfg.endpoints == {r: f"ipc:///run/qwen3-tts/{r}.sock" for r in C.ROLES}
    assert cfg.cache_dir == Path("/var/cache/qwen3-tts")  # systemd's CacheDirectory=
    assert cfg.roles == default.roles
    assert cfg.limits == default.limits
    assert cfg.security.curve_server_public == Path("/etc/qwen3-tts/curve/server.key")
    assert default.security == C.SecurityConfig()  # CURVE is off unless configured
    sp = SamplingParams()
    assert {k: v for k, v in cfg.sampling.items() if k != "seed"} == \
        {k: getattr(sp, k) for k in C._SAMPLING_KEYS if k != "seed"}


def test_print_config_cli(home, tmp_path):
    path = write(tmp_path / "c.toml", '[limits]\nqueue_size = 5\n')
    r = subprocess.run([sys.executable, "-m", "daemons.config", str(path)], cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["limits"]["queue_size"] == 5 and d["source"] == str(path)
    bad = write(tmp_path / "bad.toml", 'nope = 1\n')
    r = subprocess.run([sys.executable, "-m", "daemons.config", str(bad)], cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "unknown key nope" in r.stderr and str(bad) in r.stderr


# ---------------------------------------------------------------------------------------------- discovery

class Talker:
    """A listening AF_UNIX socket standing in for a running talker daemon in runtime directory `d`."""

    def __init__(self, d: Path, mode: int = 0o700):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(mode)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(d / "talker.sock"))
        self.sock.listen(8)

    def close(self):
        self.sock.close()


@pytest.fixture
def talkers():
    made = []
    yield lambda d, mode=0o700: made.append(Talker(d, mode)) or made[-1]
    for t in made:
        t.close()


def test_own_runtime_dir_of_daemons_started_without_systemd(home):
    assert C.own_runtime_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path("/run/user/7/qwen3-tts")
    assert C.own_runtime_dir({}) == own_tmp_dir()
    assert C.runtime_dir_candidates({"XDG_RUNTIME_DIR": "/run/user/7"}) == [
        Path("/run/user/7/qwen3-tts"), own_tmp_dir(), Path(C.SYSTEMD_RUNTIME_DIR)]
    assert C.runtime_dir_candidates({}) == [own_tmp_dir(), Path(C.SYSTEMD_RUNTIME_DIR)]


@pytest.mark.parametrize("client_xdg", [False, True])
def test_client_finds_launch_sh_daemons_started_without_xdg(home, rt, talkers, client_xdg):
    """`launch.sh --daemon` in a shell without XDG_RUNTIME_DIR (sockets in /tmp/qwen3-tts-UID) is found by
    a bare client with or without XDG_RUNTIME_DIR (the issue-10 failure), the daemons' view unchanged."""
    xdg = rt / "xdg"
    xdg.mkdir(mode=0o700)
    env = env_for(home, **({"XDG_RUNTIME_DIR": str(xdg)} if client_xdg else {}))
    assert load_config(env=env, discover=True).runtime_dir == C.own_runtime_dir(env)   # nothing running yet
    talkers(own_tmp_dir())
    cfg = load_config(env=env, discover=True)
    assert cfg.runtime_dir == own_tmp_dir()
    assert cfg.endpoints["talker"] == f"ipc://{own_tmp_dir()}/talker.sock"
    assert load_config(env=env).runtime_dir == C.own_runtime_dir(env)                  # daemons: no probing


def test_client_order_own_daemons_first_then_systemd(home, rt, talkers):
    xdg = rt / "xdg"
    xdg.mkdir(mode=0o700)
    env = env_for(home, XDG_RUNTIME_DIR=str(xdg))
    system = talkers(Path(C.SYSTEMD_RUNTIME_DIR), 0o750)                 # systemd services only
    if os.geteuid() == 0:
        os.chown(C.SYSTEMD_RUNTIME_DIR, 65534, 65534)                  # owned by the service user
    assert load_config(env=env, discover=True).runtime_dir == Path(C.SYSTEMD_RUNTIME_DIR)
    assert load_config(env=env_for(home), discover=True).runtime_dir == Path(C.SYSTEMD_RUNTIME_DIR)
    tmp = talkers(own_tmp_dir())                                         # + launch.sh without XDG
    assert load_config(env=env, discover=True).runtime_dir == own_tmp_dir()
    talkers(xdg / "qwen3-tts")                                           # + launch.sh with XDG
    assert load_config(env=env, discover=True).runtime_dir == xdg / "qwen3-tts"
    assert load_config(env=env_for(home), discover=True).runtime_dir == own_tmp_dir()
    # explicit settings and systemd's RuntimeDirectory= are never second-guessed
    for extra, want in (({"QWEN3_TTS_RUNTIME_DIR": "/x"}, "/x"), ({"RUNTIME_DIRECTORY": "/b"}, "/b")):
        assert load_config(env={**env, **extra}, discover=True).runtime_dir == Path(want)
    write(Path.cwd() / "qwen3-tts.toml", 'runtime_dir = "/f"\n')
    assert load_config(env=env, discover=True).runtime_dir == Path("/f")
    (Path.cwd() / "qwen3-tts.toml").unlink()
    # a socket file nobody listens on (a crashed daemon) is skipped
    tmp.close()
    system.close()
    assert load_config(env=env_for(home), discover=True).runtime_dir == own_tmp_dir()   # the default anyway
    assert (own_tmp_dir() / "talker.sock").exists()
    (xdg / "qwen3-tts" / "talker.sock").rename(xdg / "moved.sock")
    assert load_config(env=env, discover=True).runtime_dir == xdg / "qwen3-tts"        # own default again


def test_client_skips_a_tmp_dir_that_is_not_private(home, rt, talkers):
    """A /tmp/qwen3-tts-UID that others could have planted (group/other-writable, or another owner) is
    never used by a client, even with a live socket in it: it could be a fake talker collecting text."""
    env = env_for(home)
    talkers(own_tmp_dir(), 0o777)
    assert C.private_dir_problem(own_tmp_dir()) is not None
    own_tmp_dir().chmod(0o700)
    assert load_config(env=env, discover=True).runtime_dir == own_tmp_dir()
    own_tmp_dir().chmod(0o770)
    assert "writable by its group" in C.private_dir_problem(own_tmp_dir())
    # the fallback (own dir) has the same path: discovery found nothing, the launcher would refuse it
    assert load_config(env=env, discover=True).runtime_dir == own_tmp_dir()
    xdg = rt / "xdg"
    xdg.mkdir(mode=0o700)
    talkers(xdg / "qwen3-tts")
    xenv = env_for(home, XDG_RUNTIME_DIR=str(xdg))
    assert load_config(env=xenv, discover=True).runtime_dir == xdg / "qwen3-tts"
    system = talkers(Path(C.SYSTEMD_RUNTIME_DIR), 0o750)
    own_tmp_dir().chmod(0o700)
    (xdg / "qwen3-tts").chmod(0o722)
    assert load_config(env=xenv, discover=True).runtime_dir == own_tmp_dir()
    if os.geteuid() == 0:
        os.chown(own_tmp_dir(), 65534, 65534)
        assert "owned by uid 65534" in C.private_dir_problem(own_tmp_dir())
        assert load_config(env=xenv, discover=True).runtime_dir == Path(C.SYSTEMD_RUNTIME_DIR)
    system.close()
    link = Path(C.TMP_DIR) / "link"
    link.symlink_to(xdg)
    assert "symbolic link" in C.private_dir_problem(link)


def test_default_endpoint_of_the_client_discovers(home, rt, talkers, monkeypatch):
    from client.api import default_endpoint

    for k in list(os.environ):
        if k.startswith("QWEN3_TTS_") or k in ("RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(home))
    assert default_endpoint() == f"ipc://{own_tmp_dir()}/talker.sock"
    xdg = rt / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert default_endpoint() == f"ipc://{xdg}/qwen3-tts/talker.sock"
    talkers(own_tmp_dir())
    assert default_endpoint() == f"ipc://{own_tmp_dir()}/talker.sock"


def test_runtime_dir_cli(home, tmp_path):
    """`python -m daemons.config --runtime-dir`, what launch.sh asks (the module's /tmp, not the patched one)."""
    env = {"HOME": str(home), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    def ask(*args, **extra):
        r = subprocess.run([sys.executable, "-m", "daemons.config", *args], cwd=Path.cwd(),
                           env={**env, "PYTHONPATH": str(ROOT), **extra}, capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        return r.stdout.strip()

    assert ask("--runtime-dir") == f"/tmp/qwen3-tts-{os.geteuid()}"
    assert ask("--runtime-dir", XDG_RUNTIME_DIR="/run/user/5") == "/run/user/5/qwen3-tts"
    assert ask("--runtime-dir", QWEN3_TTS_RUNTIME_DIR="rel") == str(Path.cwd() / "rel")
    assert ask("--runtime-dir", RUNTIME_DIRECTORY="/run/qwen3-tts") == "/run/qwen3-tts"
    assert ask("--runtime-dir", "--client", QWEN3_TTS_RUNTIME_DIR="/e") == "/e"
    f = write(tmp_path / "c.toml", 'runtime_dir = "/from/file"\n')
    assert ask("--runtime-dir", str(f)) == "/from/file"
    assert json.loads(ask("--client", str(f)))["runtime_dir"] == "/from/file"
    r = subprocess.run([sys.executable, "-m", "daemons.config", "--bogus"], cwd=ROOT, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "usage" in r.stderr


def test_config_imports_no_numpy():
    """Daemons load their configuration before pinning their threads: numpy there would start OpenBLAS's
    thread pool sized to every CPU before OPENBLAS_NUM_THREADS is set (the pool then stays that big)."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "import sys, daemons.config, daemons.cpu; print(sorted(m for m in "
                        "('numpy', 'zmq', 'llama_cpp', 'onnxruntime') if m in sys.modules))"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)
