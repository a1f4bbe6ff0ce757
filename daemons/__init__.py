"""qwen3-tts runtime. Nothing here imports torch.

- `daemons.engine`: pure compute (prompt, sampling, talker, code predictor, vocoder, voices, the frame
  loop, in-process `synth`); importable without ZeroMQ or systemd.
- `daemons` itself: the shells around the engines (the three daemons, the service loop, the wire
  protocol, configuration, CPU pinning, sd_notify, the launcher, the entry point).
- `daemons.gateway`: the serving fronts (HTTP, Wyoming, WebSocket, MCP), clients of the talker.

The layering is a contract checked by import-linter in the test suite (`.importlinter`)."""
__version__ = "0.1.0"
