"""tts-client "text" [--language russian] [--streaming] [-o out.wav] [--output-raw] [--voice NAME|voice.json]
tts-client encode-voice -a reference.wav -r "its transcript" -o voice.json [--language L]

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
    from daemons.engine.pcm import pcm16_bytes

    return pcm16_bytes(x)


class _TextFirst(click.Group):
    """`tts-client "text" ...` runs `say`; `tts-client encode-voice ...` the other command."""

    def parse_args(self, ctx, args):
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["say", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_TextFirst, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Speak text through the qwen3-tts daemons (`tts-client "text" --help` for the options)."""


@main.command("say", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("text", required=False)
@click.option("-l", "--language", default="auto", show_default=True)
@click.option("--streaming", is_flag=True, help="write audio as it arrives; print time to first audio and RTF")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default="output.wav", show_default=True)
@click.option("--output-raw", is_flag=True, help="raw 16-bit PCM, 24 kHz mono, to stdout (for aplay -f S16_LE "
                                                  "-r 24000 -c 1)")
@click.option("--voice", help="a voice: file from `tts-client encode-voice` (.json), a name from the voices "
                              "directory, or a raw speaker x-vector (.npy)")
@click.option("--xvector-only", is_flag=True, help="use only the speaker embedding of an in-context voice")
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
def say(text, language, streaming, output, output_raw, voice, xvector_only, seed, temperature, top_k, top_p,
        repetition_penalty, greedy, max_frames, non_streaming_text, endpoint, timeout, strict, pause_ms):
    """Speak TEXT (or standard input) and write the audio."""
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
    xvector, voice_spec = None, None
    if voice:
        from pathlib import Path

        from daemons.engine.voice import Voice, VoiceError

        try:
            if voice.endswith(".npy"):
                xvector = np.load(voice)
            elif Path(voice).is_file() or voice.endswith(".json"):
                voice_spec = Voice.load(voice).to_json()
            else:
                voice_spec = voice  # a name: the talker daemon looks it up in its voices directory
        except (OSError, ValueError, VoiceError) as e:
            click.echo(f"error: {getattr(e, 'message', e)}", err=True)
            sys.exit(2)
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
                             voice=voice_spec, voice_mode="xvector" if xvector_only else None,
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


@main.command("encode-voice", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-a", "--audio", "audio", required=True, type=click.Path(dir_okay=False),
              help="reference recording (wav/flac/ogg, any rate and channel count), 1-30 s of one speaker")
@click.option("-r", "--ref-text", help="exact transcript of the recording (in-context cloning); without it the "
                                       "voice is x-vector only")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="voice file to write (.json)")
@click.option("--name", help="save as <voices_dir>/NAME.json (voices_dir from the configuration)")
@click.option("-l", "--language", default="auto", show_default=True,
              help="the voice's default language for requests that say auto")
@click.option("--model-dir", type=click.Path(file_okay=False), help="model directory (default: configuration)")
@click.option("--threads", type=click.IntRange(1), default=None)
def encode_voice_cmd(audio, ref_text, output, name, language, model_dir, threads):
    """Make a voice file from a reference recording (runs the encoders in this process)."""
    import time
    from pathlib import Path

    from daemons.config import ConfigError, load_config
    from daemons.engine.errors import TTSError
    from daemons.engine.voice import NAME_RE, encode_voice

    if not output and not name:
        click.echo("error: give -o voice.json and/or --name NAME", err=True)
        sys.exit(2)
    try:
        cfg = load_config()
        targets = [Path(output)] if output else []
        if name:
            if not NAME_RE.match(name):
                raise click.UsageError(f"bad voice name {name!r}: letters, digits, '.', '_' and '-' only")
            if cfg.voices_dir is None:
                raise click.UsageError("no voices_dir in the configuration; use -o FILE")
            cfg.voices_dir.mkdir(parents=True, exist_ok=True)
            targets.append(cfg.voices_dir / f"{name}.json")
        t0 = time.perf_counter()
        v = encode_voice(model_dir or cfg.model_dir, audio, ref_text, language, threads=threads or 0)
    except (TTSError, ConfigError) as e:
        click.echo(f"error: {getattr(e, 'message', e)}", err=True)
        sys.exit(2)
    for t in targets:
        v.save(t)
    frames = 0 if v.ref_codes is None else len(v.ref_codes)
    click.echo(f"{v.mode} voice ({frames} reference frames, language {v.language}) in "
               f"{time.perf_counter() - t0:.2f} s -> {', '.join(map(str, targets))}", err=True)


if __name__ == "__main__":
    main()
