"""Serving fronts (OpenAI-compatible HTTP, Wyoming, WebSocket, MCP): processes that speak what users'
tools speak and are clients of the talker daemon over the wire protocol; they load no model."""
