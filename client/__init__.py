"""Thin client for the qwen3-tts daemons: needs no model files, only the talker's endpoint."""
