"""`qwen3-tts-daemon talker|predictor|vocoder|gateway`: one entry point per role (systemd: qwen3-tts@ROLE).
The gateway (daemons/gateway/http.py) loads no model and is not pinned."""
from __future__ import annotations

import sys

import click

ROLES = ("talker", "predictor", "vocoder", "gateway")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("role", type=click.Choice(ROLES))
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True),
              help="TOML configuration (default: ./qwen3-tts.toml, ~/.config/qwen3-tts/config.toml, "
                   "/etc/qwen3-tts/config.toml)")
@click.option("--model-dir", type=click.Path(file_okay=False), help="override the configured model directory")
def main(role, config_path, model_dir):
    from .config import ConfigError, load_config
    from .engine.errors import TTSError

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
    plan = pin_role(role, cfg.role(role), npu=probe_vocoder_npu(cfg))  # the same answer in every daemon
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


if __name__ == "__main__":
    main()
