"""ZeroMQ CURVE on the links between boards ([security] in the configuration, docs/SECURITY.md).

CURVE (CurveZMQ: Curve25519 key exchange, then every frame encrypted and authenticated) is used on every
*network* endpoint (tcp://, and the other transports that leave the machine) once its keys are configured;
ipc:// and inproc:// endpoints never use it: the file system already limits who reaches an ipc socket
(runtime directory 0700/0750, predictor and vocoder sockets 0600), and inproc never leaves the process.

Server side (a daemon binding a network endpoint): its key pair (`curve_server_secret`) and a ZAP handler
(pyzmq's ThreadAuthenticator, one per process) that admits only the client public keys found in
`curve_authorized_dir`. A peer with another key, or with none (plain NULL mechanism), fails the handshake:
libzmq never hands the application a frame from it. Client side: the client's key pair and the server's
public key (`curve_client_secret`, `curve_server_public`); a server with another key fails the handshake
too, so a client cannot be talked into sending text to an impostor.

Key files are pyzmq certificates (`zmq.auth.create_certificates`, made by `qwen3-tts-daemon keygen`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from .config import ConfigError, SecurityConfig

LOCAL_SCHEMES = ("ipc", "inproc")


def is_network(endpoint: str) -> bool:
    """True for endpoints that may leave the machine (everything but ipc:// and inproc://)."""
    return endpoint.partition("://")[0] not in LOCAL_SCHEMES


def _load(path: Path, key: str, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, secret_key = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as e:  # missing file, or no public-key line in it
        raise ConfigError(f"security.{key}: {path}: not a readable CURVE certificate ({e}); make one with "
                          f"`qwen3-tts-daemon keygen DIR`") from None
    if secret and not secret_key:
        raise ConfigError(f"security.{key}: {path} holds no secret key (give the .key_secret file, not the "
                          f"public .key)")
    return public, secret_key


def make_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public, to hand out) and NAME.key_secret (mode 0600) into `directory`."""
    import os

    directory.mkdir(parents=True, exist_ok=True)
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        public, secret = zmq.auth.create_certificates(str(directory), name)
    finally:
        os.umask(old)
    Path(public).chmod(0o644)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


class Curve:
    """The CURVE setup of one process: `server(sock)` / `client(sock)` configure a socket before its
    bind/connect when `endpoint` is a network one and that side is configured; return True if it was."""

    def __init__(self, sec: SecurityConfig, ctx: zmq.Context | None = None, log: logging.Logger | None = None):
        self.sec, self.ctx = sec, ctx
        self.log = log or logging.getLogger("qwen3_tts.curve")
        self.auth: ThreadAuthenticator | None = None
        self._server_keys = self._client_keys = None
        self._warned: set[str] = set()

    def _plain(self, endpoint: str, key: str) -> bool:
        if endpoint not in self._warned:  # once per endpoint
            self._warned.add(endpoint)
            self.log.warning("%s is unauthenticated and unencrypted: set [security] %s (docs/SECURITY.md, "
                             "Multi-board links)", endpoint, key)
        return False

    def server(self, sock: zmq.Socket, endpoint: str) -> bool:
        if not is_network(endpoint):
            return False
        if not self.sec.curve_server:
            return self._plain(endpoint, "curve_server_secret and curve_authorized_dir")
        if self._server_keys is None:
            d = self.sec.curve_authorized_dir
            if not d.is_dir():
                raise ConfigError(f"security.curve_authorized_dir: {d}: no such directory")
            if not any(d.glob("*.key")):
                raise ConfigError(f"security.curve_authorized_dir: {d} holds no public certificate (*.key): no "
                                  f"client could connect")
            self._server_keys = _load(self.sec.curve_server_secret, "curve_server_secret", True)
            # The ZAP handler lives in the sockets' context; it reads the directory once (restart to add keys).
            self.auth = ThreadAuthenticator(self.ctx or zmq.Context.instance(), log=self.log)
            self.auth.start()
            self.auth.configure_curve(domain="*", location=str(d))
        public, secret = self._server_keys
        sock.curve_secretkey, sock.curve_publickey, sock.curve_server = secret, public, True
        return True

    def client(self, sock: zmq.Socket, endpoint: str) -> bool:
        if not is_network(endpoint):
            return False
        if not self.sec.curve_client:
            return self._plain(endpoint, "curve_client_secret and curve_server_public")
        if self._client_keys is None:
            public, secret = _load(self.sec.curve_client_secret, "curve_client_secret", True)
            server, _ = _load(self.sec.curve_server_public, "curve_server_public", False)
            self._client_keys = public, secret, server
        public, secret, server = self._client_keys
        sock.curve_secretkey, sock.curve_publickey, sock.curve_serverkey = secret, public, server
        return True

    def stop(self) -> None:
        if self.auth is not None:
            self.auth.stop()
            self.auth = None


def unreachable_hint(endpoint: str, sec: SecurityConfig | None) -> str:
    """What to add to a "does not answer" error for a network endpoint: the CURVE handshake is the other
    reason a connection never comes up."""
    if not is_network(endpoint):
        return ""
    if sec is None or not sec.curve_client:
        return (" — or it requires CURVE and this client has no keys ([security] curve_client_secret, "
                "curve_server_public; docs/SECURITY.md)")
    return (" — or the CURVE handshake failed: this client's key is not authorized there, or "
            "curve_server_public is not that server's key (docs/SECURITY.md)")
