"""Two README claims about the daemons' wiring, on real processes and the tiny model:
- `tcp://` endpoints between the daemons (roles spread over boards) give the same codes and audio as ipc://;
- the vocoder keeps the primed states of the 8 most recently used voice references (least recently used
  dropped), and a dropped reference is primed again to the same state when it comes back."""
from __future__ import annotations

import numpy as np
import psutil
import pytest
import zmq

from conftest import free_port, snr_db, start_cluster, stop_cluster
from client.api import TTSClient
from daemons import protocol
from daemons.vocoder_daemon import MAX_CONTEXTS

TEXT = "Spread over boards, the same sound."


def test_tcp_endpoints_between_the_daemons(tiny_model, tmp_path, synth):
    ports = {r: free_port() for r in ("talker", "predictor", "vocoder")}
    endpoints = "".join(f'{r} = "tcp://127.0.0.1:{p}"\n' for r, p in ports.items())
    la = start_cluster(tiny_model, tmp_path, sections=f"[endpoints]\n{endpoints}")
    try:
        # each daemon listens on its own tcp port, and no role socket exists in the runtime directory
        for role, port in ports.items():
            listening = {c.laddr.port for c in psutil.Process(la.procs[role].pid).net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN}
            assert listening == {port}, (role, listening)
            assert not (la.run / f"{role}.sock").exists()
        with TTSClient(f"tcp://127.0.0.1:{ports['talker']}", idle_timeout_s=60) as c:
            r = c.synthesize(TEXT, "english", params={"seed": 4}, max_frames=16, return_codes=True)
    finally:
        stop_cluster(la)
    ref_codes, ref_wav, _ = synth.synthesize(TEXT, "english", params=synth.sampling(seed=4), max_frames=16,
                                             chunk_frames=4)
    assert r.codes.shape == ref_codes.shape and (r.codes == ref_codes).all()
    assert len(r.audio) == len(ref_wav) and snr_db(ref_wav, r.audio) >= 60


def _after_priming(sock) -> tuple[list, protocol.Message]:
    """The `priming` notes (frames, of, seq, id) a seq-0 message with an unprimed context gets, and the answer."""
    notes = []
    while True:
        assert sock.poll(120_000), "the vocoder did not answer"
        m = protocol.decode(sock.recv_multipart(), 1 << 24)
        if m.type != "priming":
            return notes, m
        notes.append((m.header["frames"], m.header["of"], m.header["seq"], m.id))


def _open_stream(sock, rid: str, ctx: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """seq 0 of a stream primed with `ctx`: the audio of `codes` after the reference's (which is cut)."""
    sock.send_multipart(protocol.encode("frames", {"codes": codes, "context": ctx}, id=rid, seq=0))
    m = _after_priming(sock)[1]
    assert m.type == "audio", m.header
    sock.send_multipart(protocol.encode("close", id=rid))
    return m.arrays["pcm"]


def _pong(sock) -> dict:
    sock.send_multipart(protocol.encode("ping"))
    assert sock.poll(30_000), "the vocoder did not answer a ping"
    return protocol.decode(sock.recv_multipart(), 1 << 20).header


@pytest.fixture
def vocoder(tiny_model, tmp_path):
    from daemons.engine.manifest import ModelDir

    la = start_cluster(tiny_model, tmp_path, roles=("vocoder",))  # no voices_dir: nothing primed while idle
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"ipc://{la.run}/vocoder.sock")
    yield s, ModelDir(tiny_model).vocoder["codebook_size"]
    s.close(0)
    stop_cluster(la)


def test_primed_voice_states_are_kept_least_recently_used_first_out(vocoder):
    vocoder, codebook = vocoder
    rng = np.random.default_rng(17)
    refs = [rng.integers(0, codebook, (3 + i % 3, 16)) for i in range(MAX_CONTEXTS + 1)]  # distinct references
    codes = rng.integers(0, codebook, (2, 16))
    first = {}
    for i in range(MAX_CONTEXTS):                                     # fills the cache: 8 misses
        first[i] = _open_stream(vocoder, f"r{i}", refs[i], codes)
    p = _pong(vocoder)
    assert (p["contexts"], p["context_misses"], p["context_hits"]) == (MAX_CONTEXTS, MAX_CONTEXTS, 0), p
    # reference 0 is used again (a hit, and now the most recent); the 9th evicts reference 1, the oldest
    again0 = _open_stream(vocoder, "again0", refs[0], codes)
    _open_stream(vocoder, "ninth", refs[MAX_CONTEXTS], codes)
    p = _pong(vocoder)
    assert (p["contexts"], p["context_misses"], p["context_hits"]) == (MAX_CONTEXTS, MAX_CONTEXTS + 1, 1), p
    again0b = _open_stream(vocoder, "again0b", refs[0], codes)       # kept: hit
    p = _pong(vocoder)
    assert (p["context_misses"], p["context_hits"]) == (MAX_CONTEXTS + 1, 2), p
    again1 = _open_stream(vocoder, "again1", refs[1], codes)         # evicted: primed again (a miss)
    p = _pong(vocoder)
    assert (p["contexts"], p["context_misses"], p["context_hits"]) == (MAX_CONTEXTS, MAX_CONTEXTS + 2, 2), p
    # a kept state and a re-primed one decode exactly what the first priming did
    assert np.array_equal(again0, first[0]) and np.array_equal(again0b, first[0])
    assert np.array_equal(again1, first[1])
    # and the references matter (a control: the same codes after another reference sound different)
    assert snr_db(first[0], first[1]) < 30


def test_priming_a_reference_sends_progress_notes(vocoder, tiny_model):
    """A seq-0 message whose reference is not primed yet: the vocoder primes it there and then, and tells the
    talker after every step (the head-only pass over most of the reference, then 16-frame steps: a long
    reference may take longer than the talker's vocoder_timeout_s on a board), then answers with the audio
    of the stream primed so."""
    from daemons.engine.vocoder import HEAD_TAIL_FRAMES, VocoderEngine
    from daemons.vocoder_daemon import DECODE_STEP_FRAMES

    sock, codebook = vocoder
    rng = np.random.default_rng(23)
    ctx, codes = rng.integers(0, codebook, (100, 16)), rng.integers(0, codebook, (3, 16))
    sock.send_multipart(protocol.encode("frames", {"codes": codes, "context": ctx}, id="long", seq=0))
    notes, m = _after_priming(sock)
    # the head alone over the first 84 frames (one step), then the last 16 through the whole graph
    assert HEAD_TAIL_FRAMES <= DECODE_STEP_FRAMES
    assert notes == [(f, 100, 0, "long") for f in (100 - HEAD_TAIL_FRAMES, 100)]
    assert m.type == "audio" and m.header["seq"] == 0
    s = VocoderEngine(tiny_model, threads=1).new_stream()
    for i in range(0, 100, DECODE_STEP_FRAMES):
        s.decode(ctx[i:i + DECODE_STEP_FRAMES])
    assert snr_db(s.decode(codes), m.arrays["pcm"]) >= 60
    # primed now: the same reference again gets no notes, only its audio
    sock.send_multipart(protocol.encode("frames", {"codes": codes, "context": ctx}, id="again", seq=0))
    notes, m = _after_priming(sock)
    assert notes == [] and m.type == "audio"

