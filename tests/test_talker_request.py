"""The talker's per-request state machine (daemons/talker_request.py) without sockets: real tiny-model
engines in-process, a recording stand-in for the two outlets (client, vocoder stream).

Requests here set `min_new_tokens` beyond their frame cap, so EOS cannot end them: how many frames each
segment makes is decided by construction, not by the random weights."""
from __future__ import annotations

import numpy as np
import pytest

from daemons import protocol
from daemons.config import Limits
from daemons.engine.segment import plan_segments
from daemons.talker_request import Engines, Request, RequestFailed

NO_EOS = 10 ** 6


class Recorder:
    """Both outlets of a request; `vocoder_up` / `client_up` switch a side off."""

    def __init__(self):
        self.to_client, self.to_vocoder = [], []
        self.client_up = self.vocoder_up = True

    def client(self, frames):
        if self.client_up:
            self.to_client.append(protocol.decode(_bytes(frames)))
        return self.client_up

    def vocoder(self, frames):
        if self.vocoder_up:
            self.to_vocoder.append(protocol.decode(_bytes(frames)))
        return self.vocoder_up

    def client_types(self):
        return [m.type for m in self.to_client]


def _bytes(frames):
    return [bytes(f) for f in frames]


def make(synth, text, *, limits=None, seed=7, cap=40, pause_ms=0, context=None, **params):
    limits = limits or Limits()
    p = synth.sampling(seed=seed, min_new_tokens=NO_EOS, **params)
    segs = plan_segments(synth.prompts, text, "english", max_frames=cap, max_chars=limits.segment_max_chars,
                         cap_base=limits.cap_base_frames, cap_per_token=limits.cap_frames_per_token)
    req = Request("r1", b"client", segs, p, True, pause_ms * 24, context=context)
    eng = Engines(synth.talker, synth.predictor, synth.md.talker["codec_vocab"], synth.md.special["codec_eos"],
                  limits, random_weights=True)
    links = Recorder()
    req.begin(eng, links, seed)
    return req, links


def run(req, links, vocoder, max_steps=10_000):
    """Step until generation ends, answering every vocoder message with the real streaming vocoder."""
    stream = vocoder.new_stream()
    answered = 0
    for _ in range(max_steps):
        if req.state == "generating":
            req.step()
        for m in links.to_vocoder[answered:]:
            answered += 1
            if m.type == "frames":
                pcm = stream.decode(m.arrays["codes"])
            elif m.type == "pause":
                pcm = np.zeros(m.header["samples"], np.float32)
            else:
                continue
            req.deliver(protocol.Message("audio", {"seq": m.header["seq"], "pause": m.type == "pause"},
                                         {"pcm": pcm}))
        if req.state in ("done", "gone"):
            return
    raise AssertionError(f"request still {req.state} after {max_steps} steps")


def test_one_segment_frames_chunks_and_done(synth):
    req, links = make(synth, "Hello there.", cap=11)
    run(req, links, synth.vocoder)
    ref = np.stack(list(synth.frames("Hello there.", "english", max_frames=11,
                                     params=synth.sampling(seed=7, min_new_tokens=NO_EOS))))
    assert len(ref) == 11
    done = links.to_client[-1]
    assert done.type == "done" and done.header["frames"] == 11 and done.header["stop"] == "max_frames"
    assert (done.arrays["codes"] == ref).all()
    assert done.header["random_weights"] is True and done.header["seed"] == 7
    # chunks to the vocoder (default limits): first 1 frame, then 4 at a time, the rest at the end; seq in order
    sizes = [len(m.arrays["codes"]) for m in links.to_vocoder if m.type == "frames"]
    assert sizes == [1, 4, 4, 2]
    assert [m.header["seq"] for m in links.to_vocoder if m.type == "frames"] == [0, 1, 2, 3]
    # one progress per frame, audio for every frame, in order, before done
    types = links.client_types()
    assert types.count("progress") == 11 and types.count("audio") == 4
    assert sum(len(m.arrays["pcm"]) for m in links.to_client if m.type == "audio") == 11 * 1920
    assert types.index("done") == len(types) - 1


def test_segments_with_pause_in_stream_order(synth):
    text = "First sentence here. Second one follows."
    req, links = make(synth, text, cap=6, pause_ms=100)
    assert len(req.segments) == 2
    run(req, links, synth.vocoder)
    kinds = [(m.type, m.header["seq"]) for m in links.to_vocoder if m.type in ("frames", "pause")]
    # 6 frames a segment: 1 + 4 + 1, the pause, then 4 + 2 (only a stream's first chunk is short)
    assert [k for k, _ in kinds] == ["frames", "frames", "frames", "pause", "frames", "frames"]
    assert [s for _, s in kinds] == list(range(6))
    pause = next(m for m in links.to_vocoder if m.type == "pause")
    assert pause.header["samples"] == 2400
    done = links.to_client[-1]
    assert [s["stop"] for s in done.header["segments"]] == ["max_frames", "max_frames"]
    assert [s["seed"] for s in done.header["segments"]] == [7, 8]  # base seed + segment index
    audio = sum(len(m.arrays["pcm"]) for m in links.to_client if m.type == "audio")
    assert audio == 12 * 1920 + 2400


def test_client_gone_stops_within_a_frame(synth):
    req, links = make(synth, "Hello there.", cap=40)
    for _ in range(3):
        req.step()
    links.client_up = False
    req.step()
    assert req.state == "gone" and len(req.frames) == 4
    req.close()
    assert links.to_vocoder[-1].type == "close"


def test_vocoder_away_then_timeout(synth):
    lim = Limits(vocoder_timeout_s=0.5)
    req, links = make(synth, "Hello there.", cap=40, limits=lim)
    links.vocoder_up = False
    req.step()
    req.step()  # the first chunk cannot be handed over: 2 frames wait
    assert req.blocked_since is not None and len(req.pending) == 2
    req.overdue(req.blocked_since + 0.1)  # not yet
    with pytest.raises(RequestFailed) as ei:
        req.overdue(req.blocked_since + 0.6)
    assert ei.value.code == "vocoder_unavailable"
    links.vocoder_up = True  # reconnected in time: the waiting frames go out with the next chunk
    req2, links2 = make(synth, "Hello there.", cap=40, limits=lim)
    links2.vocoder_up = False
    req2.step(), req2.step()
    links2.vocoder_up = True
    req2.step()
    assert [len(m.arrays["codes"]) for m in links2.to_vocoder if m.type == "frames"] == [3]
    assert req2.blocked_since is None


def test_priming_notes_keep_the_first_chunk_waiting(synth):
    """While the vocoder primes a long reference for the stream's first chunk, its `priming` notes count as
    signs of life: without them the wait ends after vocoder_timeout_s; a note for another seq is out of order."""
    req, links = make(synth, "Hello there.", cap=40, limits=Limits(vocoder_timeout_s=0.5))
    req.step()  # the first chunk is out; its audio is not back
    assert (req.seq_sent, req.seq_done) == (1, 0)
    t = req.last_voc
    with pytest.raises(RequestFailed) as ei:
        req.overdue(t + 0.6)
    assert ei.value.code == "vocoder_unavailable"
    req.deliver(protocol.Message("priming", {"seq": 0, "frames": 16, "of": 400}, {}))
    assert req.last_voc > t and req.state == "generating"
    req.overdue(req.last_voc + 0.4)  # within the timeout again
    t = req.last_voc
    req.deliver(protocol.Message("decoding", {"seq": 0, "frames": 16, "of": 64}, {}))  # a long message's steps
    assert req.last_voc > t
    with pytest.raises(RequestFailed) as ei:
        req.deliver(protocol.Message("priming", {"seq": 1, "frames": 32, "of": 400}, {}))
    assert "out of order" in ei.value.message


def test_out_of_order_or_error_audio_fails(synth):
    req, links = make(synth, "Hello there.", cap=40)
    req.step(), req.step()
    with pytest.raises(RequestFailed) as ei:
        req.deliver(protocol.Message("audio", {"seq": 1}, {"pcm": np.zeros(1920, np.float32)}))
    assert ei.value.code == "vocoder_unavailable" and "out of order" in ei.value.message
    with pytest.raises(RequestFailed) as ei:
        req.deliver(protocol.Message("error", {"message": "boom"}, {}))
    assert "boom" in ei.value.message


def test_request_timeout(synth):
    req, links = make(synth, "Hello there.", limits=Limits(request_timeout_s=2.0))
    with pytest.raises(RequestFailed) as ei:
        req.overdue(req.accepted + 2.5)
    assert ei.value.code == "timeout"


def test_silence_rule_after_text_only(synth):
    """Near-silent audio stops a segment only once its text is used up, after `silence_frames` frames."""
    lim = Limits(silence_frames=5, chunk_frames=1, first_chunk_frames=1)
    req, links = make(synth, "Hello there, how are you today?", cap=200, limits=lim)
    text_end = req.text_end
    assert text_end > 3
    answered = 0
    while req.state == "generating":
        req.step()
        for m in links.to_vocoder[answered:]:
            answered += 1
            if m.type == "frames":  # the "vocoder" returns silence for every frame
                req.deliver(protocol.Message("audio", {"seq": m.header["seq"]},
                                             {"pcm": np.zeros(1920 * len(m.arrays["codes"]), np.float32)}))
    done = links.to_client[-1]
    assert done.header["stop"] == "runaway_silence"
    # silence counted from text_end on: 5 frames heard silent, then one more step notices the flag
    assert text_end + 5 <= done.header["frames"] <= text_end + 6


def test_generation_waits_for_the_audio_once_the_text_is_used_up(synth):
    """Past its text, a segment runs at most `silence_lag_frames` ahead of the audio heard back (its short
    chunk sent, so that audio is on its way); audio arriving lets it go on. A vocoder far behind therefore
    cannot delay the silence rule's verdict beyond a fixed frame."""
    lim = Limits(silence_frames=5, silence_lag_frames=6, chunk_frames=4, first_chunk_frames=1)
    req, links = make(synth, "Hello there, how are you today?", cap=200, limits=lim)
    answered = 0

    def answer(loud):
        nonlocal answered
        for m in links.to_vocoder[answered:]:
            answered += 1
            n = len(m.arrays["codes"])
            pcm = np.full(1920 * n, 0.5 if loud else 0.0, np.float32)
            req.deliver(protocol.Message("audio", {"seq": m.header["seq"]}, {"pcm": pcm}))

    assert req.text_end > 6
    while len(req.frames) < req.text_end:  # before the text's end: no waiting, whatever the vocoder does
        req.step()
    assert req.audio_frames == 0 and req.awaiting_audio()  # now more than 6 frames ahead of no audio
    answer(loud=True)
    heard = req.audio_frames
    for _ in range(50):  # the vocoder now says nothing
        req.step()
    assert req.state == "generating" and req.awaiting_audio()
    assert len(req.frames) == heard + 6 and not req.pending  # the partial chunk went out
    answer(loud=True)  # the audio comes: generation goes on, up to 6 frames ahead again
    assert not req.awaiting_audio()
    for _ in range(50):
        req.step()
    assert len(req.frames) == req.audio_frames + 6
    stop_at = len(req.frames)
    while req.state == "generating":  # from now on every frame is silent: the rule fires at a fixed frame
        answer(loud=False)
        req.step()
    done = links.to_client[-1]
    assert done.header["stop"] == "runaway_silence"
    # 5 silent frames heard (the first is frame stop_at - 6), one more step notices the flag
    assert done.header["frames"] <= stop_at - 6 + 5 + 6 + 1, (done.header, stop_at)


class PeriodicTalker:
    """The real tiny talker, with its code-0 logits steered to a period-3 cycle: a runaway loop made on
    purpose (random weights may or may not fall into one by themselves)."""

    def __init__(self, talker, start_loop_at: int):
        self.t, self.start, self.n = talker, start_loop_at, 0
        self.capacity = talker.capacity

    def _steer(self, out):
        hidden, logits = out
        self.n += 1
        if self.n > self.start:
            logits = np.array(logits, copy=True)
            logits[[3, 7, 11][self.n % 3]] += 1e4
        return hidden, logits

    def prefill(self, rows, fixed=0, frames=0):
        self.n = 0
        return self._steer(self.t.prefill(rows, fixed, frames))

    def step(self, row):
        return self._steer(self.t.step(row))


@pytest.mark.parametrize("loop_frames", [12, 0])
def test_loop_rule_stops_a_repeating_code0(synth, loop_frames):
    """A code-0 history that repeats ends the segment as runaway_loop once `loop_frames` values repeat;
    with the rule off (0) the same request runs to its cap."""
    req, links = make(synth, "Hello there, how are you today?", cap=200, limits=Limits(loop_frames=loop_frames))
    req.engines.talker = PeriodicTalker(synth.talker, start_loop_at=5)
    req.seg = -1
    req._next_segment()  # restart the segment with the steered talker
    run(req, links, synth.vocoder)
    done = links.to_client[-1].header
    if loop_frames:
        # at most 5 free frames, then the cycle: the rule fires once 12 values repeat with a period <= 8
        assert done["stop"] == "runaway_loop" and 12 <= done["frames"] <= 5 + 12 + 3
    else:
        assert done["stop"] == "max_frames" and done["frames"] == req.segments[0].cap


def test_segments_build_their_prompts_lazily(synth):
    """Admission builds only the first sentence's prompt rows; each later one is built when it starts and
    dropped when it ends, so a long request holds one sentence's rows at a time."""
    text = "One sentence here. Two sentences now. Three of them at last."
    segs = plan_segments(synth.prompts, text, "english", max_frames=5, lazy=True)
    assert len(segs) == 3 and segs[0]._prompt is not None and segs[1]._prompt is None and segs[2]._prompt is None
    eager = plan_segments(synth.prompts, text, "english", max_frames=5)
    assert [s.cap for s in segs] == [s.cap for s in eager]  # caps from token counts alone are the same
    req = Request("r1", b"c", segs, synth.sampling(seed=3, min_new_tokens=NO_EOS), False, 0)
    links = Recorder()
    req.begin(Engines(synth.talker, synth.predictor, synth.md.talker["codec_vocab"], synth.md.special["codec_eos"],
                      Limits()), links, 3)
    built = []
    while req.state == "generating":
        req.step()
        built.append(tuple(s._prompt is not None for s in segs))
    assert (True, False, False) in built and (False, True, False) in built and (False, False, True) in built
    assert not any(sum(b) > 1 for b in built)
    for a, b in zip(segs, eager):  # the lazily built rows are the eager ones
        assert np.array_equal(a.prompt.prefill, b.prompt.prefill)


def test_last_segment_on_shutdown(synth):
    """On SIGTERM the running request finishes its sentence, its audio is delivered, and it ends with
    `shutting_down` (not a short `done`) when sentences were left."""
    req, links = make(synth, "First sentence here. Second one follows. Third one too.", cap=4)
    req.step()
    req.last_segment = True
    run(req, links, synth.vocoder)
    types = links.client_types()
    assert types.count("progress") == 4 and "done" not in types
    assert sum(len(m.arrays["pcm"]) for m in links.to_client if m.type == "audio") == 4 * 1920
    err = links.to_client[-1]
    assert err.type == "error" and err.header["code"] == "shutting_down" and "1 of 3" in err.header["message"]


def test_prompt_that_does_not_fit_fails_typed(synth):
    req, links = make(synth, "Hello there.", cap=10)
    req.engines.n_ctx = 5
    req.seg = -1
    with pytest.raises(RequestFailed) as ei:
        req._next_segment()
    assert ei.value.code == "invalid_request" and "does not fit" in ei.value.message


def test_downstream_ids_are_minted(synth):
    """The predictor and vocoder never see the client's id: the talker mints one per request."""
    req, links = make(synth, "Hello there.", cap=3)
    run(req, links, synth.vocoder)
    assert {m.id for m in links.to_vocoder} == {req.wire_id} and req.wire_id != req.id
    assert len(req.wire_id) == 24 and Request("x", b"", [], None, False, 0).wire_id != req.wire_id


def test_frames_that_piled_up_go_out_in_capped_messages(synth):
    """Frames that waited for a vocoder that was away are sent at most vocoder_max_frames a message."""
    req, links = make(synth, "Hello there, how are you today?", cap=40, limits=Limits(vocoder_max_frames=4))
    links.vocoder_up = False
    for _ in range(11):
        req.step()
    assert len(req.pending) == 11
    links.vocoder_up = True
    req.step()
    sizes = [len(m.arrays["codes"]) for m in links.to_vocoder if m.type == "frames"]
    assert sizes == [4, 4, 4] and [m.header["seq"] for m in links.to_vocoder if m.type == "frames"] == [0, 1, 2]
    assert len(req.pending) == 0


def test_the_vocoder_is_idle_only_with_nothing_outstanding(synth):
    """The talker marks a predict `burst` (the predictor may use the vocoder's CPUs) only when every
    message it sent to the vocoder has its answer, and no in-context voice is still being primed."""
    from types import SimpleNamespace

    from daemons.talker_daemon import TalkerDaemon

    class Loop(SimpleNamespace):  # the daemon's two methods over a stand-in for its request tables
        in_flight, vocoder_idle = TalkerDaemon.in_flight, TalkerDaemon.vocoder_idle

    def idle(ns):
        return Loop(**vars(ns)).vocoder_idle()

    req, links = make(synth, "Hello there.", cap=20, limits=Limits(first_chunk_frames=1, chunk_frames=4))
    daemon = SimpleNamespace(draining={}, active=req)
    assert idle(daemon)  # nothing sent yet
    req.step()
    assert req.seq_sent == 1 and not idle(daemon)  # the first chunk is with the vocoder
    m = links.to_vocoder[-1]
    req.deliver(protocol.Message("audio", {"seq": m.header["seq"]}, {"pcm": np.zeros(1920, np.float32)}))
    assert idle(daemon)
    other, _ = make(synth, "Hello there.", cap=20)
    other.seq_sent = 3  # a draining request still waiting for audio counts too
    assert not idle(SimpleNamespace(draining={"x": other}, active=None))
    primed, _ = make(synth, "Hello there.", cap=20, context=np.ones((4, 16), np.int64))
    assert primed.seq_sent == primed.seq_done == 0 and not idle(SimpleNamespace(draining={}, active=primed))
    assert idle(SimpleNamespace(draining={}, active=None))
