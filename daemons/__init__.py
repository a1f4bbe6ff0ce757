"""qwen3-tts runtime: pure-compute engines (talker, code predictor, vocoder, prompt builder, sampler)
and, later, the daemon shells that wrap them. Nothing here imports torch."""
__version__ = "0.1.0"
