"""Persistent caches (issue 17 item 5): the talker's prompt-prefix KV states and the vocoder's primed voice
states in cache_dir survive a restart of the daemons, are checksummed (a damaged file is ignored with one
log line and removed, never handed to llama.cpp or onnxruntime), written atomically and bounded in size.

The file store alone (engine/file_store.py), the configuration that places it, then real daemons on the
tiny model restarted for real (stop_cluster + start_cluster on the same directories)."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import start_cluster, stop_cluster
from daemons.config import load_config
from daemons.engine import file_store
from daemons.engine.file_store import HEADER_BYTES, FileStore

LOG = "qwen3_tts.cache"


def store(tmp_path, max_bytes=1 << 20, namespace="model-a"):
    return FileStore(tmp_path / "store", namespace, ".kv", max_bytes, logging.getLogger(LOG))


def tmp_files(d):
    return [p.name for p in d.rglob("*.tmp")]


# --- the file store ------------------------------------------------------------------------------------
def test_store_round_trip_namespaced_and_files_private(tmp_path):
    s = store(tmp_path)
    assert s.get("k") is None
    assert s.put("k", b"payload" * 100)
    assert s.get("k") == b"payload" * 100
    assert store(tmp_path).get("k") == b"payload" * 100                 # a new process reads it back
    assert store(tmp_path, namespace="model-b").get("k") is None        # another model never matches
    (p,) = s.entries()
    assert p.stat().st_mode & 0o777 == 0o600 and s.dir.stat().st_mode & 0o777 == 0o700
    assert p.stat().st_size == HEADER_BYTES + 700 and tmp_files(tmp_path) == []


def test_store_is_bounded_least_recently_used_first(tmp_path):
    entry = HEADER_BYTES + 1000
    s = store(tmp_path, max_bytes=3 * entry)
    for i, k in enumerate("abc"):
        s.put(k, bytes([i]) * 1000)
        os.utime(s.path(k), ns=(i * 10**9, i * 10**9))                  # distinct ages, a oldest
    assert s.get("a") is not None                                       # a read: now the most recent
    s.put("d", b"d" * 1000)                                             # one too many: b (oldest) goes
    assert s.total_bytes() <= 3 * entry
    assert [k for k in "abcd" if s.path(k).exists()] == ["a", "c", "d"]
    assert not s.put("huge", b"x" * 3 * entry)                          # larger than the bound: not kept
    assert not s.path("huge").exists() and s.total_bytes() <= 3 * entry and tmp_files(tmp_path) == []


@pytest.mark.parametrize("damage, reason", [
    (lambda b: b[:HEADER_BYTES + 500], "truncated (500 of 1000 payload bytes)"),
    (lambda b: b[:20], "truncated header"),
    (lambda b: b[:HEADER_BYTES + 10] + bytes([b[HEADER_BYTES + 10] ^ 1]) + b[HEADER_BYTES + 11:], "checksum mismatch"),
    (lambda b: b[:4] + (9).to_bytes(2, "little") + b[6:], "format version 9"),
    (lambda b: b"GGUF" + b[4:], "not a cache file"),
    (lambda b: b"", "truncated header (0 bytes)"),
])
def test_damaged_file_is_ignored_with_one_line_and_removed(tmp_path, caplog, damage, reason):
    s = store(tmp_path)
    s.put("k", bytes(range(250)) * 4)
    p = s.path("k")
    p.write_bytes(damage(p.read_bytes()))
    with caplog.at_level(logging.WARNING, LOG):
        assert s.get("k") is None
        assert s.get("k") is None                                       # gone: the second look is a plain miss
    lines = [r.getMessage() for r in caplog.records if r.name == LOG]
    assert len(lines) == 1 and reason in lines[0] and p.name in lines[0], lines
    assert not p.exists() and s.rejected == 1
    assert s.put("k", b"fresh") and s.get("k") == b"fresh"


def test_a_file_copied_over_another_key_is_rejected(tmp_path, caplog):
    s = store(tmp_path)
    s.put("a", b"A" * 10)
    s.put("b", b"B" * 10)
    s.path("a").replace(s.path("b"))                                    # valid file, wrong name
    with caplog.at_level(logging.WARNING, LOG):
        assert s.get("b") is None
    assert "stored under another key" in caplog.text


def test_stale_temp_files_are_removed_at_start(tmp_path):
    s = store(tmp_path)
    dead = s.dir / ".x.kv.999999999.tmp"                                 # its writer (no such pid) is gone
    old = s.dir / f".y.kv.{os.getppid()}.tmp"                           # a live pid, but far too old
    live = s.dir / f".z.kv.{os.getppid()}.tmp"                          # a live writer, just now
    for p in (dead, old, live):
        p.write_bytes(b"partial")
    t = time.time() - file_store.TMP_STALE_S - 5
    os.utime(old, (t, t))
    store(tmp_path)
    assert not dead.exists() and not old.exists() and live.exists()
    assert s.entries() == []                                            # temp files are never entries


def test_unusable_directory_means_no_disk_cache(tmp_path, caplog):
    (tmp_path / "file").write_text("not a directory")
    with caplog.at_level(logging.WARNING, LOG):
        s = FileStore(tmp_path / "file" / "sub", "ns", ".kv", 1 << 20, logging.getLogger(LOG))
    assert not s.enabled and s.get("k") is None and not s.put("k", b"x")
    assert "caching in memory only" in caplog.text


# --- where the caches live -----------------------------------------------------------------------------
def test_cache_dir_defaults_and_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    home = str(tmp_path / "home")
    cfg_file = tmp_path / "c.toml"

    def cache_dir(toml=None, **env):
        if toml is not None:
            cfg_file.write_text(toml)
        return load_config(cfg_file if toml is not None else None, env={"HOME": home, **env}).cache_dir

    assert cache_dir() == tmp_path / "home/.cache/qwen3-tts"
    assert cache_dir(XDG_CACHE_HOME="/xdg") == Path("/xdg/qwen3-tts")
    assert cache_dir(XDG_CACHE_HOME="relative") == tmp_path / "home/.cache/qwen3-tts"  # invalid: ignored
    assert str(cache_dir(CACHE_DIRECTORY="/var/cache/qwen3-tts:/other", XDG_CACHE_HOME="/xdg")) == \
        "/var/cache/qwen3-tts"                                           # systemd's CacheDirectory= first
    assert cache_dir('cache_dir = "~/c"\n', CACHE_DIRECTORY="/var/cache/q") == tmp_path / "home/c"
    assert cache_dir('cache_dir = ""\n', CACHE_DIRECTORY="/var/cache/q") is None          # "" disables
    assert cache_dir('cache_dir = ""\n', QWEN3_TTS_CACHE_DIR="rel") == tmp_path / "rel"   # env wins
    assert cache_dir('cache_dir = "/c"\n', QWEN3_TTS_CACHE_DIR="off") is None
    assert load_config(env={}).cache_dir is None                         # no HOME: no disk cache
    cfg_file.write_text("cache_dir = 3\n")
    with pytest.raises(ValueError, match="cache_dir"):
        load_config(cfg_file, env={"HOME": home})
