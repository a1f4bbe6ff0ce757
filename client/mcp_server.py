"""`qwen3-tts-mcp`: an MCP server over stdio (the official `mcp` SDK, 2.x) for the running qwen3-tts daemons.

A client of the talker like `tts-client` (client/api.py, the same configuration discovery); it loads no
model except for clone_voice, which runs the voice encoders in this process as `tts-client encode-voice`
does. Tools:

    speak(text, language?, voice?, output_path?)   -> writes a 16-bit WAV (24 kHz mono); returns its path,
                                                      duration, frames, seed, per-sentence stop reasons, and
                                                      the audio itself as MCP audio content (audio/wav)
    list_voices()                                  -> the default voice and the voices of voices_dir
    clone_voice(name, audio_path, transcript?, language?)
                                                   -> <voices_dir>/<name>.json (in-context with a transcript,
                                                      x-vector only without); an existing name is refused

Failures are tool errors (is_error) whose text is `code: message`, the daemon's own message where it
answered (busy, invalid_text, unknown_language, invalid_voice, ...; not_running when no talker answers).
stdout carries the protocol only: every log line goes to stderr.

    qwen3-tts-mcp [--endpoint tcp://board:5555] [--timeout 120]
"""
import asyncio
import base64
import io
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import click
from pydantic import Field

try:  # the tools' annotations are evaluated by the SDK, so these names live at module level
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import AudioContent, CallToolResult, TextContent
except ImportError as e:  # reported by main() in one line
    _MISSING = e
else:
    _MISSING = None

log = logging.getLogger("qwen3_tts.mcp")

INSTRUCTIONS = ("Text-to-speech with Qwen3-TTS running on this machine's daemons. `speak` writes a WAV file and "
                "returns it; `list_voices` names the voices; `clone_voice` makes a new voice from a 1-30 s "
                "recording (with its exact transcript for the best likeness).")


def _config():
    from daemons.config import ConfigError, load_config

    try:
        return load_config(discover=True)
    except ConfigError as e:
        raise ToolError(f"config_error: {e}") from None


def _wav_bytes(audio, rate: int) -> bytes:
    """16-bit WAV of float samples, converted by the project's one float -> int16 rule (the samples
    tts-client --output-raw and the gateway's pcm give)."""
    import soundfile as sf

    from daemons.engine.pcm import to_int16

    buf = io.BytesIO()
    sf.write(buf, to_int16(audio), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _result(data: dict) -> "CallToolResult":
    """Structured content, and the same as JSON text for clients that read only the text."""
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(data, ensure_ascii=False))],
                          structured_content=data)


def build_server(endpoint: str | None = None, timeout_s: float = 120.0) -> "MCPServer":
    from client.api import SAMPLE_RATE, ClientError, TTSClient

    server = MCPServer("qwen3-tts", instructions=INSTRUCTIONS, version=_version())

    def synthesize(text, language, voice):
        with TTSClient(endpoint, idle_timeout_s=timeout_s) as c:
            return c.synthesize(text, language, voice=voice)

    @server.tool(description="Speak text with Qwen3-TTS: writes a 16-bit 24 kHz mono WAV file and returns its "
                             "path, duration and the audio. Long text is spoken sentence by sentence.")
    async def speak(
        text: Annotated[str, Field(description="the text to speak")],
        language: Annotated[str, Field(description="a language name (english, chinese, german, ...) or auto")] = "auto",
        voice: Annotated[str | None, Field(description="a voice name from list_voices, or the path of a voice "
                                                       "file (.json); none = the default voice")] = None,
        output_path: Annotated[str | None, Field(description="where to write the WAV; none = a new file in "
                                                             "the temporary directory")] = None,
    ) -> CallToolResult:
        if not isinstance(text, str) or not text.strip():
            raise ToolError("invalid_text: text is empty")
        spec = None
        if voice and voice != "default":
            if voice.endswith(".json") or "/" in voice:
                from daemons.engine.voice import Voice, VoiceError

                try:
                    spec = Voice.load(Path(voice).expanduser()).to_json()
                except (OSError, ValueError, VoiceError) as e:
                    raise ToolError(f"invalid_voice: {getattr(e, 'message', e)}") from None
            else:
                spec = voice  # a name: the talker looks it up in its voices directory
        if output_path:
            out = Path(output_path).expanduser().resolve()
            if out.is_dir():
                raise ToolError(f"bad_output_path: {out} is a directory; give a file name (.wav)")
            if not out.parent.is_dir():
                raise ToolError(f"bad_output_path: the directory {out.parent} does not exist")
        else:
            fd, name = tempfile.mkstemp(prefix="qwen3-tts-", suffix=".wav")
            os.close(fd)
            out = Path(name)
        t0 = time.monotonic()
        try:
            r = await asyncio.to_thread(synthesize, text, language or "auto", spec)
        except ClientError as e:
            if not output_path:
                out.unlink(missing_ok=True)
            raise ToolError(f"{e.code}: {e.message}") from None
        wav = _wav_bytes(r.audio, SAMPLE_RATE)
        try:
            out.write_bytes(wav)
        except OSError as e:
            raise ToolError(f"bad_output_path: cannot write {out}: {e.strerror or e}") from None
        summary = {"path": str(out), "duration_s": round(r.seconds, 3), "frames": r.frames, "seed": r.seed,
                   "stop": [s.get("stop") for s in r.segments] or [r.stop], "sample_rate": SAMPLE_RATE,
                   "wall_s": round(time.monotonic() - t0, 3), "random_weights": r.random_weights}
        note = f"{r.seconds:.2f} s of audio in {len(r.segments) or 1} sentence(s) -> {out}"
        if r.truncated:
            note += f"; {len(r.truncated)} sentence(s) did not end on the end-of-speech token"
        if r.random_weights:
            note += "; NOTE: the model has random weights, this audio is noise, not speech"
        log.info("speak: %s", note)
        return CallToolResult(
            content=[TextContent(type="text", text=note),
                     AudioContent(type="audio", data=base64.b64encode(wav).decode(), mime_type="audio/wav")],
            structured_content=summary)

    @server.tool(description="List the voices speak can use: 'default' and the voices of the voices directory "
                             "(name, mode icl or xvector, language).")
    async def list_voices() -> CallToolResult:
        from daemons.engine.voice import Voice, VoiceError

        cfg = _config()
        voices = [{"name": "default", "mode": "default", "language": "auto",
                   "description": "the model's default voice"}]
        d = cfg.voices_dir
        if d is not None and Path(d).is_dir():
            for p in sorted(Path(d).glob("*.json")):
                try:
                    v = Voice.load(p)
                    voices.append({"name": p.stem, "mode": v.mode, "language": v.language})
                except (OSError, ValueError, VoiceError) as e:
                    voices.append({"name": p.stem, "error": str(getattr(e, "message", e))})
        return _result({"voices": voices, "voices_dir": None if d is None else str(d)})

    @server.tool(description="Clone a voice from a recording of one speaker (1-30 s, any format soundfile reads) "
                             "and save it under NAME in the voices directory, for speak(voice=NAME). With the "
                             "exact transcript the clone is in-context (closest); without it, x-vector only.")
    async def clone_voice(
        name: Annotated[str, Field(description="the new voice's name: letters, digits, '.', '_', '-'")],
        audio_path: Annotated[str, Field(description="path of the reference recording")],
        transcript: Annotated[str | None, Field(description="exact transcript of the recording")] = None,
        language: Annotated[str, Field(description="the voice's language, used when a request says auto")] = "auto",
    ) -> CallToolResult:
        from daemons.engine.errors import TTSError
        from daemons.engine.voice import NAME_RE, encode_voice

        if not isinstance(name, str) or not NAME_RE.match(name) or name == "default":
            raise ToolError(f"invalid_request: bad voice name {name!r}: 1-64 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit (and not 'default')")
        cfg = _config()
        if cfg.voices_dir is None:
            raise ToolError("invalid_request: no voices_dir in the configuration, so a voice cannot be saved")
        target = Path(cfg.voices_dir) / f"{name}.json"
        if target.exists():
            raise ToolError(f"voice_exists: a voice {name!r} exists already ({target}); pick another name")
        src = Path(audio_path).expanduser()
        if not src.is_file():
            raise ToolError(f"invalid_request: no such audio file: {src}")
        t0 = time.monotonic()
        try:
            v = await asyncio.to_thread(encode_voice, cfg.model_dir, src, transcript or None, language or "auto")
        except TTSError as e:
            raise ToolError(f"{e.code}: {e.message}") from None
        Path(cfg.voices_dir).mkdir(parents=True, exist_ok=True)
        v.save(target)
        frames = 0 if v.ref_codes is None else len(v.ref_codes)
        log.info("clone_voice: %s (%s, %d reference frames) -> %s", name, v.mode, frames, target)
        return _result({"name": name, "path": str(target), "mode": v.mode, "language": v.language,
                        "reference_frames": frames, "seconds": round(time.monotonic() - t0, 3)})

    return server


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("qwen3-tts")
    except Exception:
        return "0.1.0"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--endpoint", help="talker endpoint (default: from the configuration, as tts-client finds it)")
@click.option("--timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="seconds without any answer from the talker")
def main(endpoint, timeout):
    """MCP server (stdio) with the tools speak, list_voices and clone_voice, for the running daemons."""
    logging.basicConfig(level=os.environ.get("QWEN3_TTS_LOG_LEVEL", "INFO"), stream=sys.stderr,
                        format="%(asctime)s qwen3-tts-mcp[%(process)d] %(levelname)s %(message)s")
    if _MISSING is not None:
        click.echo(f"error: the MCP SDK is missing ({_MISSING}); pip install 'mcp>=2,<3'", err=True)
        sys.exit(2)
    server = build_server(endpoint, timeout)
    try:
        server.run("stdio")
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
