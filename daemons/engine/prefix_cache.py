"""Cached talker prompt prefixes: the llama.cpp KV state after the rows of a prompt that do not depend on
the text (the head with language and voice, and the reference transcript of an in-context voice), so a
repeated voice skips that part of its prefill. Keyed by a hash of the namespace (the talker GGUF's content
hash and the KV type) and the prefix rows themselves, so a changed voice, language or model can never hit a
stale entry. Memory LRU, optionally backed by a directory that survives restarts (`file_store.FileStore`:
checksummed, atomic, bounded; a damaged file is never handed to llama.cpp)."""
from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .file_store import FileStore

SUFFIX = ".kv"


class PrefixCache:
    def __init__(self, namespace: str, max_bytes: int = 256 << 20, directory: str | Path | None = None,
                 max_dir_bytes: int = 1 << 30, log: logging.Logger | None = None):
        self.namespace = namespace.encode()
        self.max_bytes, self.max_dir_bytes = max_bytes, max_dir_bytes
        self.store = FileStore(directory, namespace, SUFFIX, max_dir_bytes, log) if directory else None
        self._mem: OrderedDict[str, bytes] = OrderedDict()
        self.memory_bytes = 0
        self.hits = self.misses = self.rows_skipped = 0
        self.disk_hits = 0  # entries read back from the directory (e.g. the first use after a restart)
        # defer_writes: put() only queues the file write and the owner calls flush_one() when idle (the
        # talker daemon: a 30 s voice's state is ~45 MB at full size, not to be fsynced before its first audio)
        self.defer_writes = False
        self.unwritten: OrderedDict[str, bytes] = OrderedDict()

    @property
    def dir(self) -> Path | None:
        return self.store.dir if self.store is not None else None

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
        if self.store is not None:
            data = self.store.get(key)
            if data is not None:
                self.disk_hits += 1
                self._remember(key, data)
        return data

    def put(self, key: str, data: bytes) -> None:
        self._remember(key, data)
        if self.store is not None:
            if self.defer_writes:
                self.unwritten[key] = data
            else:
                self.store.put(key, data)

    def flush_one(self) -> bool:
        """Write the oldest deferred entry to the directory; False when none was waiting."""
        if not self.unwritten:
            return False
        key, data = self.unwritten.popitem(last=False)
        self.store.put(key, data)
        return True

    def flush(self) -> None:
        while self.flush_one():
            pass

    def _remember(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        if key in self._mem:
            self.memory_bytes -= len(self._mem.pop(key))
        self._mem[key] = data
        self.memory_bytes += len(data)
        while self.memory_bytes > self.max_bytes:
            self.memory_bytes -= len(self._mem.popitem(last=False)[1])
