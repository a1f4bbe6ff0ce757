"""`qwen3-tts-daemon talker|predictor|vocoder|gateway`: one entry point per role (systemd: qwen3-tts@ROLE).
The gateway (daemons/gateway/http.py) loads no model and is not pinned.

`qwen3-tts-daemon keygen DIR [--name NAME]`: CURVE certificates for the links between boards
([security], daemons/curve.py, docs/SECURITY.md): by default a server and a client key pair plus
DIR/authorized/ holding the client's public key; with --name one more key pair NAME (e.g. another client,
whose NAME.key goes into the server's authorized directory). Existing files are never overwritten."""
from __future__ import annotations

import sys

import click

ROLES = ("talker", "predictor", "vocoder", "gateway")
COMMANDS = (*ROLES, "keygen")


def keygen(keydir: str, name: str | None) -> int:
    from pathlib import Path

    from .curve import make_keys

    d = Path(keydir)
    names = [name] if name else ["server", "client"]
    for n in names:
        if not n or "/" in n or n.startswith("."):
            click.echo(f"error: keygen: bad key name {n!r}", err=True)
            return 2
        clash = [p for p in (d / f"{n}.key", d / f"{n}.key_secret") if p.exists()]
        if clash:
            click.echo(f"error: keygen: {clash[0]} exists (not overwritten; pick another --name or directory)",
                       err=True)
            return 1
    for n in names:
        public, secret = make_keys(d, n)
        click.echo(f"{n}: public {public.resolve()}, secret {secret.resolve()} (mode 0600)")
    if not name:
        auth = d / "authorized"
        auth.mkdir(exist_ok=True)
        (auth / "client.key").write_bytes((d / "client.key").read_bytes())
        r = d.resolve()
        click.echo(f"""
# server board (the daemons binding tcp://), in its TOML:
[security]
curve_server_secret = "{r}/server.key_secret"
curve_authorized_dir = "{r}/authorized"
# client side (tts-client, the gateway, a talker using a remote predictor/vocoder), in its TOML:
curve_client_secret = "{r}/client.key_secret"
curve_server_public = "{r}/server.key"
# copy only what each board needs; secret files stay 0600 and readable by the service user only""")
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("role", type=click.Choice(COMMANDS))
@click.argument("keydir", required=False, type=click.Path(file_okay=False))
@click.option("--name", help="keygen: make one key pair NAME instead of server + client")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="TOML configuration (default: ./qwen3-tts.toml, ~/.config/qwen3-tts/config.toml, "
                   "/etc/qwen3-tts/config.toml)")
@click.option("--model-dir", type=click.Path(file_okay=False), help="override the configured model directory")
def main(role, keydir, name, config_path, model_dir):
    """ROLE: talker, predictor, vocoder or gateway; or `keygen DIR` (CURVE keys, docs/SECURITY.md)."""
    from .config import ConfigError, load_config
    from .engine.errors import TTSError

    if role == "keygen":
        if not keydir:
            click.echo("error: keygen needs a directory: qwen3-tts-daemon keygen DIR [--name NAME]", err=True)
            sys.exit(2)
        sys.exit(keygen(keydir, name))
    if keydir or name:
        click.echo(f"error: {role} takes no DIR or --name (those are keygen's)", err=True)
        sys.exit(2)

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    if model_dir:
        from pathlib import Path
        cfg.model_dir = Path(model_dir)
    import logging
    import os

    from .cpu import pin_role, probe_vocoder_npu

    logging.basicConfig(level=os.environ.get("QWEN3_TTS_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format=f"%(asctime)s {role}[%(process)d] %(levelname)s %(message)s")
    if role == "gateway":
        from .gateway.http import run_gateway
        sys.exit(run_gateway(cfg))
    # Pin and size thread pools before numpy, llama.cpp or onnxruntime start theirs.
    plan = pin_role(role, cfg.role(role), npu=probe_vocoder_npu(cfg),  # the same answer in every daemon
                    vocoder_cfg=cfg.role("vocoder"))
    if role == "talker":
        from .talker_daemon import TalkerDaemon as D
    elif role == "predictor":
        from .predictor_daemon import PredictorDaemon as D
    else:
        from .vocoder_daemon import VocoderDaemon as D
    try:
        sys.exit(D(cfg, plan).run())
    except TTSError as e:  # e.g. the model directory is missing: say so in one line
        click.echo(f"error: {role}: {e.message}", err=True)
        sys.exit(1)
    except ConfigError as e:  # e.g. a CURVE key file that cannot be read, an unsafe socket directory
        click.echo(f"error: {role}: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
