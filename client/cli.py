"""tts-client "text" [--language russian] [--streaming] [-o out.wav] [--output-raw]

Exit codes: 0 audio written; 1 the daemons answered with an error (busy, invalid text, ...);
2 bad usage or input; 3 the talker daemon is not running; 4 no answer in time; 5 with --strict, a segment
ended on its frame cap or on runaway detection instead of the end-of-speech token (audio still written)."""
from __future__ import annotations

import sys

import click
import numpy as np

from .api import SAMPLE_RATE, ClientError, TTSClient

EXIT = {"not_running": 3, "timeout": 4}


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("text", required=False)
@click.option("-l", "--language", default="auto", show_default=True)
@click.option("--streaming", is_flag=True, help="write audio as it arrives; print time to first audio and RTF")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="output.wav", show_default=True)
@click.option("--output-raw", is_flag=True, help="raw 16-bit PCM, 24 kHz mono, to stdout (for aplay -f S16_LE "
                                                  "-r 24000 -c 1)")
@click.option("--voice", type=click.Path(dir_okay=False, exists=True), help="speaker x-vector (.npy)")
@click.option("--seed", type=int)
@click.option("--temperature", type=float)
@click.option("--top-k", type=int)
@click.option("--top-p", type=float)
@click.option("--repetition-penalty", type=float)
@click.option("--greedy", is_flag=True, help="argmax decoding")
@click.option("--max-frames", type=click.IntRange(1))
@click.option("--non-streaming-text", is_flag=True, help="whole text in the prompt (model-side text mode)")
@click.option("--endpoint", help="talker endpoint (default: from the configuration)")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="seconds without any answer")
@click.option("--strict", is_flag=True, help="exit 5 when any segment did not end on the end-of-speech token")
@click.option("--pause-ms", type=click.IntRange(0, 5000), help="silence between sentences (default: config)")
def main(text, language, streaming, output, output_raw, voice, seed, temperature, top_k, top_p,
         repetition_penalty, greedy, max_frames, non_streaming_text, endpoint, timeout, strict, pause_ms):
    if text is None:
        data = sys.stdin.buffer.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            click.echo(f"error: standard input is not valid UTF-8 ({e.reason} at byte {e.start})", err=True)
            sys.exit(2)
    params = {k: v for k, v in dict(seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                                     repetition_penalty=repetition_penalty).items() if v is not None}
    if greedy:
        params.update(do_sample=False, sub_do_sample=False)
    xvector = np.load(voice) if voice else None
    sink = None
    if streaming and not output_raw:
        import soundfile as sf

        sink = sf.SoundFile(output, "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16")

    def on_audio(pcm):
        if output_raw:
            sys.stdout.buffer.write(_pcm16(pcm))
            sys.stdout.buffer.flush()
        elif sink is not None:
            sink.write(pcm)

    try:
        with TTSClient(endpoint, idle_timeout_s=timeout) as c:
            r = c.synthesize(text, language, params=params, max_frames=max_frames,
                             non_streaming=non_streaming_text, xvector=xvector, pause_ms=pause_ms,
                             on_audio=on_audio if (streaming or output_raw) else None)
    except ClientError as e:
        click.echo(f"error: {e.code}: {e.message}", err=True)
        sys.exit(EXIT.get(e.code, 1))
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        if sink is not None:
            sink.close()
    if not output_raw and not streaming:
        import soundfile as sf

        sf.write(output, r.audio, SAMPLE_RATE, subtype="PCM_16")
    info = f"{r.seconds:.2f} s of audio ({r.frames} frames, {len(r.segments)} segment(s), seed={r.seed})"
    if not output_raw:
        info += f" -> {output}"
    if streaming or output_raw:
        rtf = r.wall_s / r.seconds if r.seconds else float("nan")
        info += f"; time to first audio {r.ttfa_s * 1000:.0f} ms, RTF {rtf:.2f}" if r.ttfa_s else ""
    click.echo(info, err=True)
    for sg in r.truncated:
        why = {"max_frames": "its frame cap", "runaway_loop": "a code-0 repetition loop",
               "runaway_silence": "a long near-silence after its text"}.get(sg["stop"], sg["stop"])
        click.echo(f"warning: segment {sg['index'] + 1}/{len(r.segments)} ({sg['frames']} frames) ended on {why}, "
                   "not on the end-of-speech token", err=True)
    if r.random_weights:
        click.echo("NOTE: the model has random weights: this audio is noise, not speech.", err=True)
    if strict and r.truncated:
        sys.exit(5)


if __name__ == "__main__":
    main()
