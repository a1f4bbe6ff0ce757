"""Capture what a library prints on the process's stdout/stderr, at the file-descriptor level.

rknn-toolkit-lite2 prints its own log and whole tracebacks (`E Catch exception when init runtime!` ...)
on the console, from Python and from librknnrt.so (C): a daemon's journal would get them beside our one
fallback line. `captured_console()` points fds 1 and 2 (and sys.stdout/sys.stderr, for writers that do not
go through the fds) at a temporary file for the duration of the block and hands the text back. Anything
another thread writes in that window is captured too: use it around short, start-up-time calls only.
"""
from __future__ import annotations

import contextlib
import io
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


@contextlib.contextmanager
def captured_console() -> Iterator[Captured]:
    out = Captured()
    py = io.StringIO()
    _flush()
    with tempfile.TemporaryFile() as tmp:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(tmp.fileno(), 1)
            os.dup2(tmp.fileno(), 2)
            with contextlib.redirect_stdout(py), contextlib.redirect_stderr(py):
                yield out
        finally:
            _flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            tmp.seek(0)
            out.text = tmp.read().decode("utf-8", "replace") + py.getvalue()
