"""Typed errors shared by the engines, the daemons and the client. `code` is the stable wire name."""
from __future__ import annotations


class TTSError(Exception):
    code = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidText(TTSError):
    code = "invalid_text"


class UnknownLanguage(TTSError):
    code = "unknown_language"


class InvalidRequest(TTSError):
    code = "invalid_request"


class ModelError(TTSError):
    """The model directory is missing, incomplete, or not one this runtime understands."""
    code = "model_error"
