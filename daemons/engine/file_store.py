"""Checksummed files in a bounded directory: the persistent half of the daemons' caches (the talker's
prompt-prefix KV states, the vocoder's primed voice states). Pure: os + hashlib only.

Each entry is one file `<name><suffix>`, name = blake2b(namespace, key): a header (magic, format version,
the full name digest, payload length, blake2b of the payload) and the payload. A file is returned only
when every header field and the checksum match; anything else (truncated, flipped bits, another format
version, a file renamed over another) is logged once, removed and reported as a miss. That matters for
llama.cpp: `llama_state_seq_set_data` checks only the layout fields of a state blob and copies the tensor
bytes as they are, so a damaged blob would load as a wrong KV cache without any error.

Writes are atomic (a temp file in the same directory, fsync, os.replace, fsync of the directory): a crash
leaves either the old file, the new one, or a `.*.tmp` file that the next start (or any later write)
removes (at once when its writer, named by the pid in its name, is gone; else once it is older than
TMP_STALE_S). The directory holds at most `max_bytes` of entries; the least
recently used ones (mtime, touched on every read) go first. The directory must be ours and private (a
checksum detects damage, not forgery), else nothing is read or written. A cache that cannot read or write
is only slower: OSErrors never reach the caller.
"""
from __future__ import annotations

import hashlib
import logging
import os
import stat
import struct
import time
from pathlib import Path

MAGIC = b"Q3TC"
VERSION = 1
_HEADER = struct.Struct("<4sHxx32sQ32s")  # magic, version, name digest, payload length, payload blake2b
HEADER_BYTES = _HEADER.size
TMP_SUFFIX = ".tmp"
TMP_STALE_S = 60.0  # a temp file older than this is a dead writer's (a write takes well under a second)


def _digest(*parts: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.digest()


class FileStore:
    def __init__(self, directory: str | Path, namespace: str, suffix: str, max_bytes: int,
                 log: logging.Logger | None = None):
        if not suffix.startswith(".") or suffix == TMP_SUFFIX:
            raise ValueError(f"suffix must start with '.' and differ from {TMP_SUFFIX!r}")
        self.dir = Path(directory)
        self.namespace, self.suffix, self.max_bytes = namespace.encode(), suffix, int(max_bytes)
        self.log = log or logging.getLogger("qwen3_tts.cache")
        self.reads = self.writes = self.rejected = 0
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            problem = _not_private(self.dir)
        except OSError as e:
            problem = str(e)
        if problem:
            self.log.warning("cache directory %s unusable (%s): caching in memory only", self.dir, problem)
            self.dir = None
            return
        self._remove_stale_tmp()

    @property
    def enabled(self) -> bool:
        return self.dir is not None

    def _name(self, key: str) -> bytes:
        return _digest(self.namespace, key.encode())

    def path(self, key: str) -> Path:
        return self.dir / (self._name(key).hex() + self.suffix)

    def get(self, key: str) -> bytes | None:
        """The payload stored under `key`, or None (absent, unreadable, or damaged: then removed)."""
        if self.dir is None:
            return None
        p = self.path(key)
        try:
            with open(p, "rb", opener=_nofollow) as f:
                blob = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            return self._reject(p, f"unreadable: {e.strerror or e}")
        if len(blob) < HEADER_BYTES:
            return self._reject(p, f"truncated header ({len(blob)} bytes)")
        magic, version, name, length, check = _HEADER.unpack_from(blob)
        payload = blob[HEADER_BYTES:]
        if magic != MAGIC:
            return self._reject(p, "not a cache file")
        if version != VERSION:
            return self._reject(p, f"format version {version}, expected {VERSION}")
        if name != self._name(key):
            return self._reject(p, "stored under another key")
        if len(payload) != length:
            return self._reject(p, f"truncated ({len(payload)} of {length} payload bytes)")
        if _digest(payload) != check:
            return self._reject(p, "checksum mismatch")
        try:
            os.utime(p)  # least recently *used* goes first
        except OSError:
            pass
        self.reads += 1
        return payload

    def put(self, key: str, payload: bytes) -> bool:
        """Store atomically, then evict the least recently used entries beyond max_bytes. False when the
        entry was not written (larger than the whole bound, or an OSError)."""
        if self.dir is None or HEADER_BYTES + len(payload) > self.max_bytes:
            return False
        p = self.path(key)
        tmp = self.dir / f".{p.name}.{os.getpid()}{TMP_SUFFIX}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_HEADER.pack(MAGIC, VERSION, self._name(key), len(payload), _digest(payload)))
                    f.write(payload)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, p)
            finally:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
            self._fsync_dir()
        except OSError as e:
            self.log.warning("cache file %s not written: %s", p.name, e.strerror or e)
            return False
        self.writes += 1
        self.evict(keep=p)
        return True

    def entries(self) -> list[Path]:
        try:
            return [p for p in self.dir.iterdir() if p.name.endswith(self.suffix) and not p.name.startswith(".")]
        except OSError:
            return []

    def total_bytes(self) -> int:
        return sum(_size(p) for p in self.entries())

    def evict(self, keep: Path | None = None) -> None:
        """Oldest (least recently used) entries out until the directory holds at most max_bytes."""
        self._remove_stale_tmp()
        files = []
        for p in self.entries():
            try:
                st = p.stat()
            except OSError:
                continue
            files.append((p != keep, st.st_mtime_ns, p, st.st_size))
        files.sort(key=lambda f: (not f[0], f[1]))  # `keep` (just written) last of all
        total = sum(f[3] for f in files)
        for _, _, p, size in files:
            if total <= self.max_bytes:
                break
            try:
                p.unlink()
                total -= size
            except FileNotFoundError:
                total -= size
            except OSError:
                pass

    def _reject(self, p: Path, why: str) -> None:
        self.rejected += 1
        try:
            p.unlink()
        except OSError:
            pass
        self.log.warning("cache file %s ignored and removed: %s", p, why)
        return None

    def _remove_stale_tmp(self) -> None:
        """Temp files of dead writers (a crash mid-write): the pid in the name is gone, or the file is old."""
        now = time.time()
        try:
            names = [p for p in self.dir.iterdir() if p.name.endswith(TMP_SUFFIX) and p.name.startswith(".")]
        except OSError:
            return
        for p in names:
            try:
                if not _writer_alive(p.name) or now - p.lstat().st_mtime > TMP_STALE_S:
                    p.unlink()
            except OSError:
                pass

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _not_private(d: Path) -> str | None:
    """Why `d` cannot hold trusted cache files (the checksum detects damage, not forgery: whoever may write
    here could plant a state), or None: a real directory, ours, not writable by group or others."""
    st = os.lstat(d)
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory (a symlink?)"
    if st.st_uid != os.geteuid():
        return f"owned by uid {st.st_uid}, not by us ({os.geteuid()})"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def _nofollow(path, flags):
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _writer_alive(tmp_name: str) -> bool:
    """Is the process whose pid a temp file's name carries (".NAME.PID.tmp") still running?"""
    pid = tmp_name[:-len(TMP_SUFFIX)].rpartition(".")[2]
    if not pid.isdigit():
        return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process: alive
    return True


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0
