"""Issue 17 item 4: authenticated, encrypted links between boards (ZeroMQ CURVE, daemons/curve.py) and
private ipc:// sockets.

The three daemons run as real processes on the tiny model with every endpoint on tcp://127.0.0.1 and
[security] keys made by `qwen3-tts-daemon keygen`: the talker's front and the predictor's and vocoder's
sockets are CURVE servers, the talker's sockets towards them CURVE clients. The authorized client gets
the in-process engine's codes; a client with another key, with no key, or expecting another server key
gets no service (no frame of its reaches a daemon, no reply comes back) and a not_running error naming
CURVE within its connect timeout, while the daemons go on serving the authorized client."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from conftest import ROOT, free_port, start_cluster, stop_cluster
from client.api import ClientError, TTSClient
from daemons import protocol
from daemons.config import ConfigError, SecurityConfig, load_config
from daemons.curve import Curve, is_network

TEXT = "Hello over an encrypted link."


def keygen(keydir, *extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daemons.main", "keygen", str(keydir), *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("curve") / "keys"
    r = keygen(d)
    assert r.returncode == 0, r.stderr
    assert keygen(d, "--name", "stranger").returncode == 0   # a valid key pair that is not authorized
    return d


def client_sec(keys, client="client", server="server") -> SecurityConfig:
    return SecurityConfig(curve_client_secret=keys / f"{client}.key_secret",
                          curve_server_public=keys / f"{server}.key")


@pytest.fixture(scope="module")
def cluster(tiny_model, tmp_path_factory, keys):
    ports = {r: free_port() for r in ("talker", "predictor", "vocoder")}
    endpoints = "".join(f'{r} = "tcp://127.0.0.1:{p}"\n' for r, p in ports.items())
    security = (f'curve_server_secret = "{keys}/server.key_secret"\ncurve_authorized_dir = "{keys}/authorized"\n'
                f'curve_client_secret = "{keys}/client.key_secret"\ncurve_server_public = "{keys}/server.key"\n')
    la = start_cluster(tiny_model, tmp_path_factory.mktemp("curve-cluster"), watchdog_usec=4_000_000,
                       limits="predictor_timeout_s = 3.0\nvocoder_timeout_s = 5.0\n",
                       sections=f"[endpoints]\n{endpoints}[security]\n{security}")
    la.endpoints = {r: f"tcp://127.0.0.1:{p}" for r, p in ports.items()}
    yield la
    stop_cluster(la)


def authorized(cluster, keys, **kw) -> TTSClient:
    return TTSClient(cluster.endpoints["talker"], security=client_sec(keys), **kw)


def test_authorized_client_gets_the_engines_audio(cluster, keys, synth):
    """Every link of the request is CURVE (client -> talker -> predictor, vocoder): the codes are the
    in-process engine's for the seed, and the audio is the codes' length."""
    with authorized(cluster, keys) as c:
        r = c.synthesize(TEXT, "english", params={"seed": 5}, max_frames=16, return_codes=True)
    ref = np.stack(list(synth.frames(TEXT, "english", params=synth.sampling(seed=5), max_frames=16)))
    assert r.codes.shape == ref.shape and (r.codes == ref).all()
    assert len(r.audio) == r.frames * 1920 and np.abs(r.audio).max() > 0


@pytest.mark.parametrize("who", ["stranger", "no_key", "wrong_server_key"])
def test_unauthorized_clients_get_no_service(cluster, keys, who):
    sec = {"stranger": client_sec(keys, client="stranger"), "no_key": SecurityConfig(),
           "wrong_server_key": client_sec(keys, server="stranger")}[who]
    t0 = time.monotonic()
    with TTSClient(cluster.endpoints["talker"], security=sec, connect_timeout_s=1.0) as c:
        with pytest.raises(ClientError) as e:
            c.synthesize(TEXT, "english", params={"seed": 5}, max_frames=4)
    assert e.value.code == "not_running" and "CURVE" in e.value.message, e.value
    assert time.monotonic() - t0 < 30   # the 1 s connect timeout, not a hang (loaded-machine margin)
    # the daemons keep serving the authorized client
    with authorized(cluster, keys) as c:
        assert c.synthesize(TEXT, "english", params={"seed": 6}, max_frames=4).frames == 4


def test_gateway_link_and_cli_use_the_configured_keys(cluster, keys, tmp_path):
    """The gateway's TalkerLink (every front's talker client) with the keys gets audio, without them a
    not_running error naming CURVE; tts-client takes the keys from the configuration's [security]."""
    import asyncio

    import zmq.asyncio

    from daemons.gateway.talker_link import TalkerError, TalkerLink

    header = {"text": TEXT, "language": "english", "params": {"seed": 5}, "max_frames": 4}

    async def go(sec):
        ctx = zmq.asyncio.Context()
        try:
            link = TalkerLink(ctx, cluster.endpoints["talker"], 60.0, sec)
            try:
                return [m.type async for m in link.synthesize(header)]
            except TalkerError as e:
                return e
        finally:
            ctx.destroy(0)

    assert asyncio.run(go(client_sec(keys)))[-1] == "done"
    e = asyncio.run(go(SecurityConfig()))
    assert isinstance(e, TalkerError) and e.code == "not_running" and "CURVE" in e.message, e

    plain = tmp_path / "plain.toml"
    plain.write_text(f'runtime_dir = "{tmp_path}"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TTS_")}
    for config, rc in ((cluster.cfg, 0), (plain, 3)):
        out = tmp_path / f"{rc}.wav"
        r = subprocess.run([sys.executable, "-m", "client.cli", TEXT, "--endpoint", cluster.endpoints["talker"],
                            "-l", "english", "--seed", "5", "--max-frames", "4", "-o", str(out)], cwd=ROOT,
                           env={**env, "QWEN3_TTS_CONFIG": str(config), "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == rc, r.stderr
        assert out.is_file() if rc == 0 else "CURVE" in r.stderr, r.stderr


def raw_socket(endpoint: str, sec: SecurityConfig | None) -> zmq.Socket:
    """A DEALER that queues regardless of the connection (no IMMEDIATE): whatever it sends is on its way
    the moment a connection would be up, so no answer means the daemon never got it."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    if sec is not None:
        Curve(sec).client(s, endpoint)
    s.connect(endpoint)
    return s


@pytest.mark.parametrize("role", ["talker", "predictor", "vocoder"])
def test_no_frame_from_an_unknown_peer_reaches_a_daemon(cluster, keys, role):
    """A plain peer and a peer with an unauthorized key send ping (and garbage) to each daemon: nothing
    comes back. The authorized key's ping on the same endpoint is answered (the check is meaningful)."""
    ep = cluster.endpoints[role]
    socks = [raw_socket(ep, None), raw_socket(ep, client_sec(keys, client="stranger"))]
    try:
        for s in socks:
            s.send_multipart(protocol.encode("ping"))
            s.send_multipart([b"\xff" * 64])
        time.sleep(1.0)
        for s in socks:
            assert not s.poll(500, zmq.POLLIN), f"{role} answered an unauthorized peer"
        good = raw_socket(ep, client_sec(keys))
        socks.append(good)
        good.send_multipart(protocol.encode("ping"))
        assert good.poll(10_000, zmq.POLLIN), f"{role} does not answer the authorized key"
        m = protocol.decode(good.recv_multipart(), 1 << 20)
        assert m.type == "pong" and m.header["role"] == role
    finally:
        for s in socks:
            s.close(0)


def test_security_config_rules(tmp_path, keys):
    """Half a side is an error (never a silent plain link); env overrides; unreadable or public-only
    certificates and an empty authorized directory are clear ConfigErrors where a socket needs them;
    ipc:// and inproc:// never use CURVE."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'runtime_dir = "{tmp_path}"\n[security]\ncurve_client_secret = "{keys}/client.key_secret"\n')
    with pytest.raises(ConfigError, match="curve_server_public is not"):
        load_config(cfg, env={"HOME": str(tmp_path)})
    c = load_config(cfg, env={"HOME": str(tmp_path), "QWEN3_TTS_SECURITY_CURVE_SERVER_PUBLIC": f"{keys}/server.key"})
    assert c.security.curve_client and not c.security.curve_server
    assert c.to_dict()["security"]["curve_server_public"] == f"{keys}/server.key"

    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    try:
        with pytest.raises(ConfigError, match="holds no secret key"):
            Curve(SecurityConfig(curve_client_secret=keys / "client.key",
                                 curve_server_public=keys / "server.key")).client(s, "tcp://127.0.0.1:1")
        with pytest.raises(ConfigError, match="not a readable CURVE certificate"):
            Curve(client_sec(keys, server="missing")).client(s, "tcp://127.0.0.1:1")
        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(ConfigError, match="holds no public certificate"):
            Curve(SecurityConfig(curve_server_secret=keys / "server.key_secret",
                                 curve_authorized_dir=empty), ctx).server(s, "tcp://127.0.0.1:1")
        assert not Curve(client_sec(keys)).client(s, "ipc:///tmp/x.sock")
        assert Curve(client_sec(keys)).client(s, "tcp://127.0.0.1:1")
    finally:
        s.close(0)
    assert not is_network("inproc://x") and is_network("tcp://10.0.0.2:5555") and is_network("ws://h:1")


def test_keygen_files_and_refusal(tmp_path):
    r = keygen(tmp_path / "k")
    assert r.returncode == 0, r.stderr
    for name in ("server", "client"):
        assert stat.S_IMODE(os.stat(tmp_path / "k" / f"{name}.key_secret").st_mode) == 0o600
    assert (tmp_path / "k" / "authorized" / "client.key").read_bytes() == (tmp_path / "k" / "client.key").read_bytes()
    assert f'curve_server_secret = "{(tmp_path / "k").resolve()}/server.key_secret"' in r.stdout
    again = keygen(tmp_path / "k")
    assert again.returncode == 1 and "not overwritten" in again.stderr
    assert keygen(tmp_path / "k", "--name", "../x").returncode == 2


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_ipc_sockets_and_their_directory_are_private(tiny_model, tmp_path):
    """Even under umask 000: the runtime directory 0700 (the launcher's; systemd's is 0750), a socket
    directory the daemons create themselves 0700, the predictor's and vocoder's sockets 0600, the talker's
    never reachable by others (<= 0770: its group is the clients' group under systemd). The talker still
    serves through them."""
    old = os.umask(0)
    try:
        la = start_cluster(tiny_model, tmp_path, watchdog_usec=4_000_000,
                           sections=f'[endpoints]\npredictor = "ipc://{tmp_path}/run/own/predictor.sock"\n')
    finally:
        os.umask(old)
    try:
        run = la.run
        assert (mode(run), os.stat(run).st_uid) == (0o700, os.geteuid())
        assert mode(run / "own") == 0o700                        # made by the predictor daemon
        for sock in (run / "own" / "predictor.sock", run / "vocoder.sock"):
            assert stat.S_ISSOCK(os.lstat(sock).st_mode) and mode(sock) == 0o600, (sock, oct(mode(sock)))
        talker = run / "talker.sock"
        assert stat.S_ISSOCK(os.lstat(talker).st_mode) and mode(talker) & 0o007 == 0, oct(mode(talker))
        with TTSClient(la.endpoint) as c:
            assert c.synthesize(TEXT, "english", params={"seed": 1}, max_frames=4).frames == 4
    finally:
        stop_cluster(la)


def test_daemon_refuses_a_socket_directory_others_can_write(tiny_model, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'model_dir = "{tiny_model}"\nruntime_dir = "{tmp_path / "run"}"\n'
                   f'[endpoints]\npredictor = "ipc://{shared}/predictor.sock"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TTS_")}
    env.update(QWEN3_TTS_CONFIG=str(cfg), PYTHONPATH=str(ROOT), QWEN3_TTS_CACHE_DIR="off")
    r = subprocess.run([sys.executable, "-m", "daemons.main", "predictor"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "writable by its group or by others" in r.stderr, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (shared / "predictor.sock").exists()
