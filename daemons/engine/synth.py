"""In-process synthesis (no daemons): prompt -> talker + code predictor -> streaming vocoder.
For debugging and parity checks:

    python -m daemons.engine.synth --model-dir DIR --text T --language L [--greedy] [--seed N] [--max-frames N]
                            [--codes-out F.npy] [--wav-out F.wav] [--chunk-frames N]
"""
from __future__ import annotations

import os
import secrets
import sys
import time
from dataclasses import replace
from typing import Iterator

import click
import numpy as np

from .errors import TTSError
from .generate import Generation, RunawayRules, generate_frames
from .manifest import SAMPLE_RATE, ModelDir
from .predictor import PredictorEngine
from .prompt import PromptBuilder
from .sampling import Sampler, SamplingParams
from .segment import Segment, plan_segments
from .talker import DEFAULT_N_CTX, TalkerEngine
from .voice import Voice

DEFAULT_MAX_FRAMES = 2048  # 164 s of audio; the official wrapper's default max_new_tokens
# The code predictor's 15 one-row decodes per frame pay llama.cpp's thread barriers ~60 times each: with 2
# threads on a 2-core machine they stall whenever anything else runs (the vocoder, numpy's BLAS pool,
# another process): 5.5x slower per frame than 1 thread with another job on the machine, 0.7x when the
# predictor is alone on a quiet one (docs/PERFORMANCE.md, issue 15). In-process synthesis interleaves all
# stages, so the predictor takes 1 thread unless told otherwise (RTF 1.94 vs 4.43 with 2, same run).
DEFAULT_PREDICTOR_THREADS = 1


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Synthesizer:
    def __init__(self, model_dir, threads: int | None = None, n_ctx: int = DEFAULT_N_CTX, vocoder: bool = True,
                 prefix_cache: bool = True, predictor_threads: int | None = None):
        """`threads`: talker and vocoder (default: every usable CPU); `predictor_threads`: the code
        predictor (default DEFAULT_PREDICTOR_THREADS)."""
        threads = threads or default_threads()
        predictor_threads = predictor_threads or DEFAULT_PREDICTOR_THREADS
        self.md = ModelDir(model_dir)
        self.prompts = PromptBuilder(self.md)
        self.talker = TalkerEngine(self.md, threads=threads, n_ctx=n_ctx, prefix_cache=prefix_cache)
        self.predictor = PredictorEngine(self.md, threads=predictor_threads)
        self.vocoder = None
        if vocoder:
            from .vocoder import VocoderEngine

            self.vocoder = VocoderEngine(self.md.file(self.md.vocoder["onnx"]), self.md.vocoder, threads=threads)

    def sampling(self, **overrides) -> SamplingParams:
        return SamplingParams.from_generation_config(self.md.generation, **overrides)

    def frames(self, text: str, language: str = "auto", *, params: SamplingParams | None = None,
               max_frames: int | None = None, non_streaming: bool = False, xvector=None, ref_codes=None,
               ref_text: str | None = None, gen: Generation | None = None, voice: Voice | None = None,
               ) -> Iterator[np.ndarray]:
        if voice is not None:
            xvector, ref_codes, ref_text = voice.xvector, voice.ref_codes, voice.ref_text
        prompt = self.prompts.build(text, language, non_streaming=non_streaming, xvector=xvector,
                                    ref_codes=ref_codes, ref_text=ref_text)
        room = self.talker.lm.n_ctx - len(prompt.prefill)
        if room < 1:
            raise TTSError(f"prompt of {len(prompt.prefill)} rows does not fit the talker context "
                           f"({self.talker.lm.n_ctx})")
        max_frames = min(max_frames or DEFAULT_MAX_FRAMES, room)
        sampler = Sampler(params or self.sampling(), self.md.talker["codec_vocab"], self.md.special["codec_eos"])
        return generate_frames(self.talker, self.predictor, prompt, sampler, max_frames, gen)

    def synthesize(self, text: str, language: str = "auto", *, chunk_frames: int = 4,
                   params: SamplingParams | None = None, max_frames: int | None = None,
                   non_streaming: bool = False, xvector=None, ref_codes=None, ref_text: str | None = None,
                   segment: bool = True, pause_ms: int = 0, runaway: RunawayRules | None = None,
                   voice: Voice | None = None):
        """Returns (codes [n,16] int64, audio float32, [Generation per segment]). Long text is split into
        sentences (one prompt each, frame caps from their length); the vocoder stream runs across segment
        boundaries, so they have no seams; `pause_ms` of silence is put between segments. Audio is vocoded
        in chunks as frames arrive, exactly as a streaming consumer would. With an in-context voice the
        vocoder first decodes the reference codes as left context (their audio is dropped), like the
        official decode-and-cut, so the first audio is already in the cloned voice."""
        if voice is not None:
            xvector, ref_codes, ref_text = voice.xvector, voice.ref_codes, voice.ref_text
        params = params or self.sampling()
        cap = min(max_frames or DEFAULT_MAX_FRAMES, self.talker.lm.n_ctx)
        if not segment:
            p = self.prompts.build(text, language, non_streaming=non_streaming, xvector=xvector,
                                   ref_codes=ref_codes, ref_text=ref_text)
            segments = [Segment(text, p, cap)]
        else:
            segments = plan_segments(self.prompts, text, language, max_frames=cap, non_streaming=non_streaming,
                                     xvector=xvector, ref_codes=ref_codes, ref_text=ref_text)
        base_seed = params.seed if params.seed is not None else secrets.randbits(63)
        stream = self.vocoder.new_stream() if self.vocoder else None
        if stream is not None and ref_codes is not None:
            stream.decode(ref_codes)  # left context only: its audio is the reference, cut exactly
        codes, audio, gens = [], [], []
        pause = np.zeros(int(SAMPLE_RATE * pause_ms / 1000), dtype=np.float32)
        for i, seg in enumerate(segments):
            room = self.talker.lm.n_ctx - len(seg.prompt.prefill)
            if room < 1:
                raise TTSError(f"segment {i} does not fit the talker context ({self.talker.lm.n_ctx})")
            sp = replace(params, seed=(base_seed + i) % (1 << 63))
            sampler = Sampler(sp, self.md.talker["codec_vocab"], self.md.special["codec_eos"])
            gen = Generation()
            pending = []
            for fr in generate_frames(self.talker, self.predictor, seg.prompt, sampler, min(seg.cap, room), gen,
                                      runaway):
                codes.append(fr)
                pending.append(fr)
                if stream is not None and len(pending) >= chunk_frames:
                    audio.append(stream.decode(np.stack(pending)))
                    pending = []
            if stream is not None and pending:
                audio.append(stream.decode(np.stack(pending)))
            gens.append(gen)
            if stream is not None and len(pause) and i + 1 < len(segments):
                audio.append(pause)
        codes_arr = np.stack(codes) if codes else np.zeros((0, 16), dtype=np.int64)
        wav = np.concatenate(audio) if audio else np.zeros(0, dtype=np.float32)
        return codes_arr, wav, gens

    def close(self) -> None:
        self.talker.close()
        self.predictor.close()


def _one_blas_thread() -> None:
    """numpy's BLAS pool (the predictor heads' matvecs) would take every CPU and spin next to llama.cpp's
    threads; the daemons size it with limit_thread_env, the CLI here with threadpoolctl when installed."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(1, user_api="blas")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model-dir", required=True, type=click.Path(file_okay=False), help="converted model directory")
@click.option("--text", required=True, help="text to speak")
@click.option("--language", default="auto", show_default=True, help="language name or 'auto'")
@click.option("--greedy", is_flag=True, help="argmax decoding for all 16 codebooks (parity checks)")
@click.option("--seed", type=int, default=None, help="sampling seed (default: random, printed)")
@click.option("--max-frames", type=click.IntRange(1), default=None, help=f"cap (default {DEFAULT_MAX_FRAMES})")
@click.option("--non-streaming-text", is_flag=True, help="whole text in the prompt instead of one token per frame")
@click.option("--xvector", type=click.Path(dir_okay=False, exists=True), help="speaker x-vector (.npy)")
@click.option("--voice", type=click.Path(dir_okay=False, exists=True),
              help="voice file from `tts-client encode-voice` (in-context when it has a transcript)")
@click.option("--codes-out", type=click.Path(dir_okay=False), help="write int64 [frames, 16] codes (.npy)")
@click.option("--wav-out", type=click.Path(dir_okay=False), help="write 24 kHz audio (.wav)")
@click.option("--chunk-frames", type=click.IntRange(1), default=4, show_default=True,
              help="vocoder chunk size in frames")
@click.option("--threads", type=click.IntRange(1), default=None,
              help="talker and vocoder threads (default: all usable CPUs)")
@click.option("--predictor-threads", type=click.IntRange(1), default=None,
              help=f"code predictor threads (default {DEFAULT_PREDICTOR_THREADS}: more stall its one-row decodes)")
def main(model_dir, text, language, greedy, seed, max_frames, non_streaming_text, xvector, voice, codes_out,
         wav_out, chunk_frames, threads, predictor_threads):
    t0 = time.perf_counter()
    _one_blas_thread()
    try:
        syn = Synthesizer(model_dir, threads=threads, vocoder=wav_out is not None,
                          predictor_threads=predictor_threads)
        params = syn.sampling(seed=seed)
        if greedy:
            params.do_sample = params.sub_do_sample = False
        xv = np.load(xvector) if xvector else None
        v = Voice.load(voice, syn.md.talker["hidden_size"]) if voice else None
        if v is not None and language == "auto":
            language = v.language
        t1 = time.perf_counter()
        codes, wav, gens = syn.synthesize(text, language, params=params, max_frames=max_frames,
                                          non_streaming=non_streaming_text, xvector=xv, chunk_frames=chunk_frames,
                                          runaway=RunawayRules(), voice=v)
    except (TTSError, ValueError) as e:
        click.echo(f"error: {getattr(e, 'message', e)}", err=True)
        sys.exit(2)
    t2 = time.perf_counter()
    if codes_out:
        np.save(codes_out, codes)
    if wav_out:
        import soundfile as sf

        sf.write(wav_out, wav, SAMPLE_RATE, subtype="PCM_16")
    secs = len(codes) * 0.08
    stops = ",".join(g.stop for g in gens)
    click.echo(f"{len(codes)} frames ({secs:.2f} s audio), {len(gens)} segment(s), stop={stops}, "
               f"seed={gens[0].seed if gens else None}, "
               f"load {t1 - t0:.2f} s, synth {t2 - t1:.2f} s" + (f", RTF {(t2 - t1) / secs:.2f}" if secs else ""))
    if syn.md.manifest["source"].get("random_weights"):
        click.echo("NOTE: this model has random weights: its audio is noise, not speech.")


if __name__ == "__main__":
    main()
