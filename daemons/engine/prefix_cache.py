"""Cached talker prompt prefixes: the llama.cpp KV state after the rows of a prompt that do not depend on
the text (the head with language and voice, and the reference transcript of an in-context voice), so a
repeated voice skips that part of its prefill. Keyed by a hash of the prefix rows themselves, so a changed
voice, language or model can never hit a stale entry. Memory LRU, optionally backed by a directory that
survives restarts."""
from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np


class PrefixCache:
    def __init__(self, namespace: str, max_bytes: int = 256 << 20, directory: str | Path | None = None,
                 max_dir_bytes: int = 1 << 30):
        self.namespace = namespace.encode()
        self.max_bytes, self.max_dir_bytes = max_bytes, max_dir_bytes
        self.dir = Path(directory) if directory else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
        self._mem: OrderedDict[str, bytes] = OrderedDict()
        self.memory_bytes = 0
        self.hits = self.misses = self.rows_skipped = 0

    def key(self, rows: np.ndarray) -> str:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        h = hashlib.sha256(self.namespace)
        h.update(np.asarray(rows.shape, dtype=np.int64).tobytes())
        h.update(rows.tobytes())
        return h.hexdigest()

    def get(self, key: str) -> bytes | None:
        data = self._mem.get(key)
        if data is not None:
            self._mem.move_to_end(key)
            return data
        if self.dir is not None:
            try:
                data = (self.dir / f"{key}.kv").read_bytes()
            except OSError:
                return None
            self._remember(key, data)
        return data

    def put(self, key: str, data: bytes) -> None:
        self._remember(key, data)
        if self.dir is not None:
            self._write(key, data)

    def _remember(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        if key in self._mem:
            self.memory_bytes -= len(self._mem.pop(key))
        self._mem[key] = data
        self.memory_bytes += len(data)
        while self.memory_bytes > self.max_bytes:
            self.memory_bytes -= len(self._mem.popitem(last=False)[1])

    def _write(self, key: str, data: bytes) -> None:
        try:  # atomic: a crash never leaves a truncated state file behind
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".kv-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.dir / f"{key}.kv")
            files = sorted(self.dir.glob("*.kv"), key=lambda p: p.stat().st_mtime)
            total = sum(p.stat().st_size for p in files)
            while files and total > self.max_dir_bytes:  # oldest first
                p = files.pop(0)
                total -= p.stat().st_size
                p.unlink(missing_ok=True)
        except OSError:
            pass  # a cache that cannot write is only slower
