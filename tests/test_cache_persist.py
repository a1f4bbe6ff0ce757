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


def test_a_directory_others_may_write_is_not_used(tmp_path, caplog):
    (tmp_path / "shared").mkdir(mode=0o777)
    (tmp_path / "shared").chmod(0o777)
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with caplog.at_level(logging.WARNING, LOG):
        shared = FileStore(tmp_path / "shared", "ns", ".kv", 1 << 20, logging.getLogger(LOG))
        link = FileStore(tmp_path / "link", "ns", ".kv", 1 << 20, logging.getLogger(LOG))
    assert not shared.enabled and not link.enabled and not shared.put("k", b"x")
    assert "writable by group or others (mode 777)" in caplog.text and "not a directory (a symlink?)" in caplog.text


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


# --- real daemons, restarted --------------------------------------------------------------------------
SEED = {"seed": 11}  # sampled (the default), seeded: the same audio every time


@pytest.fixture(scope="module")
def md(tiny_model):
    from daemons.engine.manifest import ModelDir

    return ModelDir(tiny_model)


def icl_voice(md, seed: int, text: str = "A voice that was here before."):
    from daemons.engine.voice import Voice

    rng = np.random.default_rng(seed)
    return Voice(rng.standard_normal(md.talker["hidden_size"]).astype(np.float32),
                 rng.integers(0, md.predictor["codebook_size"], (24, 16)), text, "english")


def pong(la, role: str) -> dict:
    import zmq

    from daemons import protocol

    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"ipc://{la.run}/{role}.sock")
    try:
        s.send_multipart(protocol.encode("ping"))
        assert s.poll(20000), f"the {role} daemon did not answer a ping"
        return protocol.decode(s.recv_multipart(), 1 << 20).header
    finally:
        s.close(0)


def say(la, voice):
    from client.api import TTSClient

    with TTSClient(la.endpoint) as c:
        return c.synthesize("Hello again.", "english", voice=voice, params=SEED, max_frames=6, return_codes=True)


def settle(la) -> None:
    """Wait until both daemons have written what they keep for the disk (they write between requests)."""
    deadline = time.monotonic() + 20
    while pong(la, "talker")["prefix_unwritten"] or pong(la, "vocoder")["context_unsaved"]:
        assert time.monotonic() < deadline, "cache files still not written after 20 s"
        time.sleep(0.05)


def same(a, b) -> None:
    """The same codes, and the same audio up to float rounding: the vocoder's chunked decode equals one decode
    only to ~4e-5 (the talker's chunks are [2, 4] frames, or [6] when its first send found the vocoder not yet
    connected; measured without any cache). A wrong vocoder state is off by orders of magnitude more."""
    assert np.array_equal(a.codes, b.codes) and len(a.audio) == len(b.audio) > 0
    np.testing.assert_allclose(a.audio, b.audio, rtol=0, atol=2e-4)


class Cluster:
    """Daemons with their caches in `tmp`/cache (the TOML key), started and stopped on demand."""

    def __init__(self, model, tmp, top: str = "", limits: str = ""):
        self.model, self.tmp, self.cache = model, tmp, tmp / "cache"
        self.top, self.limits, self.la = f'cache_dir = "{tmp / "cache"}"\n{top}', limits, None

    def __enter__(self):
        self.la = start_cluster(self.model, self.tmp, top=self.top, limits=self.limits)
        return self.la

    def __exit__(self, *exc):
        stop_cluster(self.la)

    def files(self, sub: str, suffix: str):
        return sorted((self.cache / sub).glob("*" + suffix))

    def logged(self, role: str, text: str) -> list[str]:
        return [ln for ln in (self.tmp / "run" / f"{role}.log").read_text().splitlines() if text in ln]


def test_first_requests_after_a_restart_hit_both_caches(tiny_model, tmp_path, md):
    """A named in-context voice (voices_dir) and an inline one: after a full restart of the daemons neither
    the talker's voice prefix nor the vocoder's primed state is computed again, and the audio is the same."""
    (tmp_path / "voices").mkdir()
    icl_voice(md, 1).save(tmp_path / "voices" / "named.json")
    inline = icl_voice(md, 2)
    c = Cluster(tiny_model, tmp_path, top=f'voices_dir = "{tmp_path / "voices"}"\n')
    with c as la:
        before = [say(la, "named"), say(la, inline)]
        t = pong(la, "talker")
        assert (t["prefix_misses"], t["prefix_disk_hits"]) == (2, 0), t
        assert t["prefix_cache_dir"] == str(c.cache / "talker-prefix")
        settle(la)                                                      # written while idle, not at exit
        assert len(c.files("talker-prefix", ".kv")) == 2 and len(c.files("vocoder-contexts", ".state")) == 2
    with c as la:
        after = [say(la, "named"), say(la, inline)]
        t, v = pong(la, "talker"), pong(la, "vocoder")
    assert (t["prefix_hits"], t["prefix_misses"], t["prefix_disk_hits"]) == (2, 0, 2), t
    assert v["context_disk_hits"] == 2 and v["primed_idle"] == 0, v    # read back, not primed again
    assert v["context_cache_dir"] == str(c.cache / "vocoder-contexts")
    assert len(c.logged("vocoder", "read from the cache")) == 1       # the named voice, while idle
    for a, b in zip(before, after):
        same(a, b)
    assert tmp_files(c.cache) == [] and c.logged("talker", "ignored") == c.logged("vocoder", "ignored") == []


def _flip(p):
    b = bytearray(p.read_bytes())
    b[HEADER_BYTES + len(b[HEADER_BYTES:]) // 2] ^= 0x40
    p.write_bytes(bytes(b))


def _truncate(p):
    p.write_bytes(p.read_bytes()[:HEADER_BYTES + 100])


@pytest.mark.parametrize("talker_damage, vocoder_damage", [(_flip, _truncate), (_truncate, _flip)],
                         ids=["corrupt-prefix+truncated-state", "truncated-prefix+corrupt-state"])
def test_damaged_cache_files_are_ignored_with_one_line(tiny_model, tmp_path, md, talker_damage, vocoder_damage):
    voice = icl_voice(md, 3)
    c = Cluster(tiny_model, tmp_path)
    with c as la:
        before = say(la, voice)
    (kv,), (state,) = c.files("talker-prefix", ".kv"), c.files("vocoder-contexts", ".state")
    talker_damage(kv)
    vocoder_damage(state)
    with c as la:
        after = say(la, voice)                                          # recomputed: the same audio
        t, v = pong(la, "talker"), pong(la, "vocoder")
    same(before, after)
    assert (t["prefix_hits"], t["prefix_disk_hits"]) == (0, 0) and v["context_disk_hits"] == 0, (t, v)
    why = {_flip: "checksum mismatch", _truncate: "truncated"}
    for role, damage in (("talker", talker_damage), ("vocoder", vocoder_damage)):
        lines = c.logged(role, "ignored and removed")
        assert len(lines) == 1 and why[damage] in lines[0], (role, lines)
    # rewritten whole by the recomputation; no temp files left
    assert [p.name for p in c.files("talker-prefix", ".kv")] == [kv.name] and kv.stat().st_size > HEADER_BYTES + 100
    assert [p.name for p in c.files("vocoder-contexts", ".state")] == [state.name]
    assert tmp_files(c.cache) == []


def test_cache_directories_stay_within_their_bounds(tiny_model, tmp_path, md):
    """Bounds that hold one entry each: a second and a third voice evict the older ones (least recently
    used first); after a restart the newest voice is a disk hit, an evicted one is computed again."""
    voices = [icl_voice(md, 10 + i) for i in range(3)]                 # same sizes: same shapes
    c = Cluster(tiny_model, tmp_path)
    with c as la:
        say(la, voices[0])
    kv, st = (c.files(d, s)[0].stat().st_size for d, s in (("talker-prefix", ".kv"), ("vocoder-contexts", ".state")))
    kv_mb, st_mb = 1.5 * kv / 2 ** 20, 1.5 * st / 2 ** 20                # room for one entry, not two
    c.limits = f"prefix_cache_mb = {kv_mb}\nvocoder_cache_mb = {st_mb}\n"
    with c as la:
        for v in voices[1:]:
            say(la, v)
            settle(la)
            for d, s, bound in (("talker-prefix", ".kv", kv_mb), ("vocoder-contexts", ".state", st_mb)):
                files = c.files(d, s)
                assert len(files) == 1 and sum(p.stat().st_size for p in files) <= bound * 2 ** 20, (d, files)
    with c as la:
        say(la, voices[2])
        t, v = pong(la, "talker"), pong(la, "vocoder")
        assert (t["prefix_disk_hits"], v["context_disk_hits"]) == (1, 1), (t, v)
        say(la, voices[0])                                              # evicted long ago: a miss
        t = pong(la, "talker")
        assert (t["prefix_misses"], t["prefix_disk_hits"]) == (1, 1), t
    assert tmp_files(c.cache) == []
