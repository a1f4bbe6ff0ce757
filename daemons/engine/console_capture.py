"""Capture what a library prints on the process's stdout/stderr, at the file-descriptor level.

rknn-toolkit-lite2 prints its own log and whole tracebacks (`E Catch exception when init runtime!` ...)
on the console, from Python and from librknnrt.so (C): a daemon's journal would get them beside our one
fallback line. `captured_console()` points fds 1 and 2 (and sys.stdout/sys.stderr, for writers that do not
go through the fds) at a temporary file for the duration of the block and hands the text back. Anything
another thread writes in that window is captured too: use it around short, start-up-time calls only.
Python `logging` stream handlers keep the stream they were made with (the real library logs through one,
`acuityLogger`, made at import time, when sys.stderr may be a test runner's capture and not fd 2): every
handler writing to a console stream (not a file, not an in-memory buffer) is pointed at the capture too.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from typing import Iterator


class Captured:
    text: str = ""

    def lines(self) -> list[str]:
        return [ln.rstrip() for ln in self.text.splitlines() if ln.strip()]


def _flush() -> None:
    for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if s is not None:
                s.flush()
        except (OSError, ValueError):
            pass


def _console_handlers() -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger)]
    found = []
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                    and not isinstance(h.stream, io.StringIO) and h not in found:
                found.append(h)
    return found


@contextlib.contextmanager
def captured_console() -> Iterator[Captured]:
    out = Captured()
    py = io.StringIO()
    _flush()
    with tempfile.TemporaryFile() as tmp:
        saved = [os.dup(1), os.dup(2)]
        handlers = [(h, h.setStream(py)) for h in _console_handlers()]
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            with contextlib.redirect_stdout(py), contextlib.redirect_stderr(py):
                yield out
        finally:
            for h, stream in handlers:
                h.setStream(stream)
            _flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            out.text = tmp.read().decode("utf-8", "replace") + py.getvalue()
