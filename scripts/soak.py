"""Soak with fault injection: the four processes (predictor, vocoder, talker, gateway) on the tiny demo model
under a mixed, seeded load through every front, for N minutes, while a supervisor restarts whatever dies
(systemd's Restart=always after RestartSec) and an injector kills -9 / SIGSTOPs them at seeded moments.

    python scripts/soak.py --minutes 30 --faults 50 --seed 1 --json soak.json [--png soak.png]

Fronts: the ZeroMQ client (client/api.py TTSClient), HTTP /v1/audio/speech (openai SDK whole, httpx
streamed, SSE), Wyoming (the `wyoming` package's AsyncTcpClient), WebSocket (`websockets`). Scenarios: short
and long texts, named and inline voices, cancels, clients that vanish mid-stream, bursts beyond the queue.

Every request gets one outcome: `audio` (complete), `cancelled` / `vanished` (the client's own doing, and
confirmed where the protocol confirms), `error:<code>` (a typed error: the daemons' code, the HTTP status +
OpenAI code, a Wyoming/WebSocket error code, `closed` = connection refused/reset/cut short by a dying
process, `client_timeout` = the client's configured timeout fired), or **lost**: no answer and no error by
the hard deadline (client timeouts + a margin), or an exception no front documents. `lost` must be 0.

Every few seconds: RSS and open fds of each process (psutil) and the talker's queue depth (its `ping`).
After each fault: the time until a ZeroMQ and an HTTP request succeed again (`recovered_s`), and the
supervisor counts exits nobody caused (`unexpected_exits`: a daemon that died because another did).
Writes JSON and a PNG (matplotlib: RSS per process and queue depth over time, faults marked).
`--attach` drives daemons that are already running (the configuration's endpoints; no faults)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ORDER = ("predictor", "vocoder", "talker", "gateway")
SHORT = ["Hello from the board.", "Good morning.", "The kettle is on.", "Lights off in the hall.",
         "It is twelve degrees outside.", "Привет, мир.", "Timer done."]
LONG = ("The first sentence of a longer text is here. A second one follows it, a little longer than the first. "
        "Then a third, to make three sentences. And a fourth one closes the paragraph.")
REQUEST_TIMEOUT_S = 20.0   # [limits] request_timeout_s of the soak's cluster (the gateway waits this per message)
CLIENT_TIMEOUT_S = 25.0    # every client's read timeout: beyond the daemons' own timeouts
HARD_S = 90.0              # a request that takes longer than this is lost, whatever it ends with
RESTART_SEC = 1.0          # systemd/*.service RestartSec
MAX_FRAMES = 12            # frames per sentence: requests stay short and never depend on EOS


# --- the cluster -------------------------------------------------------------------------------------
def demo_model(size: str) -> Path:
    """The model directory: models/demo-tiny (made as `launch.sh --demo` makes it) or the converted model."""
    if size == "full":
        d = Path(os.environ.get("QWEN3_TTS_MODEL_DIR", ROOT / "models" / "qwen3-tts-0.6b"))
        if not (d / "manifest.json").is_file():
            sys.exit(f"error: no converted model at {d} (bash launch.sh once downloads and converts it)")
        return d
    d = ROOT / "models" / "demo-tiny"
    if not (d / "manifest.json").is_file():
        from scripts.convert import convert
        from scripts.make_checkpoint import make_checkpoint

        ck = make_checkpoint(ROOT / "models" / "demo-checkpoint", "tiny")
        convert(ck, d, "f32", log=lambda *_: None)
    return d


class Cluster:
    """The four processes started with daemons.launcher in a private runtime dir, a config written for the
    soak (short timeouts, frame caps, a named voice), and a supervisor thread restarting any that exits."""

    def __init__(self, model: Path, tmp: Path, *, queue_size: int = 4, extra_limits: str = "",
                 restart_sec: float = RESTART_SEC, log=print):
        from daemons.engine.voice import Voice
        from daemons.launcher import Launcher

        self.log = log
        self.tmp, self.run_dir = tmp, tmp / "run"
        voices = tmp / "voices"
        voices.mkdir(parents=True, exist_ok=True)
        hidden = json.loads((model / "manifest.json").read_text())["talker"]["hidden_size"]
        self.voice = Voice(np.random.default_rng(7).standard_normal(hidden).astype(np.float32),
                           language="english", name="anna")
        self.voice.save(voices / "anna.json")
        self.port, self.wport = free_port(), free_port()
        self.queue_size = queue_size
        cfg = tmp / "qwen3-tts.toml"
        cfg.write_text(
            f'model_dir = "{model}"\nruntime_dir = "{self.run_dir}"\nvoices_dir = "{voices}"\n'
            f"[limits]\nqueue_size = {queue_size}\nrequest_timeout_s = {REQUEST_TIMEOUT_S}\n"
            f"predictor_timeout_s = 3.0\nvocoder_timeout_s = 5.0\ndrain_timeout_s = 5.0\n"
            f"max_frames = 64\ncap_base_frames = 8\ncap_frames_per_token = 0.5\nloop_frames = 0\n"
            f"silence_frames = 0\npause_ms = 40\n{extra_limits}"
            f'[gateway]\nport = {self.port}\nwyoming_uri = "tcp://127.0.0.1:{self.wport}"\n')
        env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN3_TTS_")}
        env.update(QWEN3_TTS_CONFIG=str(cfg), PYTHONPATH=str(ROOT), OMP_WAIT_POLICY="PASSIVE",
                   TOKENIZERS_PARALLELISM="false")
        self.la = Launcher(self.run_dir, env=env)
        self.endpoint = f"ipc://{self.run_dir}/talker.sock"
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/api/v1/speak"
        self.lock = threading.Lock()
        self.expected_exit: dict[str, int] = {r: 0 for r in ORDER}   # kills we caused, not yet seen exiting
        self.exits: list[dict] = []
        self.restarts = {r: 0 for r in ORDER}
        self.ready_at = {r: 0.0 for r in ORDER}
        self.stopping = False
        self.restart_sec = restart_sec
        self._sup: threading.Thread | None = None

    def start(self, timeout_s: float = 180) -> None:
        for r in ORDER:
            self.la.start(r)
        for r in ORDER:
            self.la.wait_ready(r, timeout_s)
            self.ready_at[r] = time.monotonic()
        self._sup = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._sup.start()

    def pid(self, role: str) -> int | None:
        p = self.la.procs.get(role)
        return None if p is None or p.poll() is not None else p.pid

    def signal(self, role: str, sig: int) -> int | None:
        """Send `sig` to the role's process (its pid as the supervisor knows it); a SIGKILL is expected."""
        with self.lock:
            pid = self.pid(role)
            if pid is None:
                return None
            if sig == signal.SIGKILL:
                self.expected_exit[role] += 1
            os.kill(pid, sig)
            return pid

    def _supervise(self) -> None:
        while not self.stopping:
            for r in ORDER:
                p = self.la.procs.get(r)
                if p is None or p.poll() is None:
                    continue
                with self.lock:
                    if self.stopping:
                        return
                    caused = self.expected_exit[r] > 0
                    self.expected_exit[r] = max(0, self.expected_exit[r] - 1)
                    self.exits.append({"t": time.monotonic(), "role": r, "rc": p.returncode, "caused": caused})
                    if not caused:
                        self.log(f"supervisor: {r} exited by itself (rc {p.returncode}); see "
                                 f"{self.run_dir / (r + '.log')}")
                time.sleep(self.restart_sec)  # RestartSec
                with self.lock:
                    if self.stopping:
                        return
                    old = self.la.notify.pop(r, None)
                    if old is not None:
                        old.close()
                    self.la.start(r)
                try:
                    self.la.wait_ready(r, 120)
                    self.restarts[r] += 1
                    self.ready_at[r] = time.monotonic()
                except RuntimeError as e:  # exited again before ready: the next pass restarts it
                    self.log(f"supervisor: {e}")
            time.sleep(0.1)

    def alive(self) -> dict[str, bool]:
        return {r: self.pid(r) is not None for r in ORDER}

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
        for r in reversed(ORDER):
            p = self.la.procs.get(r)
            if p is not None and p.poll() is None:
                os.kill(p.pid, signal.SIGCONT)  # a stopped process cannot act on SIGTERM
            self.la.stop(r, timeout_s=15)
        self.la.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- requests through each front -------------------------------------------------------------------------
@dataclass
class Outcome:
    front: str
    scenario: str
    outcome: str = "lost"
    detail: str = ""
    t0: float = 0.0
    ttfa_s: float | None = None
    wall_s: float | None = None
    samples: int = 0


class Driver:
    """One request per call, on the front and scenario named; never raises: everything becomes an Outcome."""

    def __init__(self, cl, voice_json: dict | None):
        self.cl, self.voice_json = cl, voice_json

    def run(self, front: str, scenario: str, rng: random.Random) -> Outcome:
        o = Outcome(front, scenario, t0=time.monotonic())
        text = LONG if scenario == "long" else rng.choice(SHORT)
        seed = rng.randrange(1 << 31)
        try:
            fn = getattr(self, f"_{front}")
            fn(o, scenario, text, seed)
        except Exception as e:  # an exception no front documents: a bug, counted as lost
            o.outcome, o.detail = "lost", f"unexpected {type(e).__name__}: {e}"[:300]
            o.detail += " | " + traceback.format_exc(limit=3).replace("\n", " ")[-300:]
        o.wall_s = time.monotonic() - o.t0
        if o.wall_s > HARD_S and o.outcome != "lost":
            o.detail = f"took {o.wall_s:.0f} s (> {HARD_S:g} s) ending {o.outcome}"
            o.outcome = "lost"
        return o

    # ZeroMQ: client/api.py
    def _zmq(self, o: Outcome, scenario: str, text: str, seed: int) -> None:
        from client.api import ClientError, TTSClient
        from daemons import protocol

        voice = {"named": "anna", "inline": self.voice_json}.get(scenario)
        got = []

        class Stop(Exception):
            pass

        def on_audio(pcm):
            if o.ttfa_s is None:
                o.ttfa_s = time.monotonic() - o.t0
            got.append(len(pcm))
            if scenario == "vanish":  # gone without a word: the socket closes, no cancel goes out
                c.sock.close(0)
            if scenario in ("cancel", "vanish"):
                raise Stop()

        c = TTSClient(self.cl.endpoint, connect_timeout_s=3.0, idle_timeout_s=CLIENT_TIMEOUT_S)
        try:
            r = c.synthesize(text, "english", params={"seed": seed}, max_frames=MAX_FRAMES, voice=voice,
                             on_audio=on_audio)
            o.outcome, o.samples = "audio", len(r.audio)
        except Stop:
            o.samples = sum(got)
            if scenario == "vanish":
                o.outcome = "vanished"
                return
            deadline = time.monotonic() + CLIENT_TIMEOUT_S  # the talker confirms the cancel with an error
            while time.monotonic() < deadline:
                if not c.sock.poll(int((deadline - time.monotonic()) * 1000) + 1):
                    break
                m = protocol.decode(c.sock.recv_multipart(), 64 << 20)
                if m.type == "error":
                    code = m.header.get("code")
                    o.outcome = "cancelled" if code == "cancelled" else f"error:{code}"
                    return
                if m.type == "done":  # finished before the cancel reached it
                    o.outcome = "audio"
                    return
            o.outcome = "error:client_timeout"
        except ClientError as e:
            o.outcome = "error:client_timeout" if e.code == "timeout" else f"error:{e.code}"
            o.detail = e.message[:200]
        finally:
            c.close()

    # HTTP: openai SDK (whole body), httpx (streamed pcm / SSE)
    def _http(self, o: Outcome, scenario: str, text: str, seed: int) -> None:
        import httpx

        body = {"model": "tts-1", "input": text, "voice": "anna" if scenario == "named" else "alloy",
                "response_format": "pcm", "language": "english", "seed": seed, "max_frames": MAX_FRAMES}
        if scenario == "whole":
            return self._http_sdk(o, body)
        if scenario == "sse":
            body["stream_format"] = "sse"
        timeout = httpx.Timeout(CLIENT_TIMEOUT_S, connect=5.0)
        try:
            with httpx.Client(timeout=timeout) as h, h.stream("POST", self.cl.base + "/v1/audio/speech",
                                                             json=body) as r:
                if r.status_code != 200:
                    r.read()
                    try:
                        o.outcome = f"error:{r.status_code}:{r.json()['error']['code']}"
                    except (ValueError, KeyError, TypeError):
                        o.outcome = f"error:{r.status_code}"
                    return
                n = 0
                sse_done = sse_err = None
                for chunk in (r.iter_lines() if scenario == "sse" else r.iter_bytes()):
                    if o.ttfa_s is None:
                        o.ttfa_s = time.monotonic() - o.t0
                    if scenario == "sse":
                        if chunk.startswith("data: "):
                            ev = json.loads(chunk[6:])
                            sse_done = sse_done or ev.get("type") == "speech.audio.done"
                            if ev.get("type") == "error":
                                sse_err = ev.get("error", {}).get("code", "error")
                        continue
                    n += len(chunk)
                    if scenario == "vanish" and n:
                        o.outcome, o.samples = "vanished", n // 2
                        return  # leaving the with-blocks closes the connection mid-body
                o.samples = n // 2
                if scenario == "sse":
                    o.outcome = "audio" if sse_done else f"error:sse:{sse_err or 'no_done_event'}"
                else:
                    o.outcome = "audio"
        except httpx.RemoteProtocolError as e:  # a chunked body cut short: the documented mid-stream error
            o.outcome, o.detail = "error:closed", str(e)[:200]
        except (httpx.ConnectError, httpx.ReadError, httpx.WriteError) as e:
            o.outcome, o.detail = "error:closed", f"{type(e).__name__}: {e}"[:200]
        except httpx.TimeoutException as e:
            o.outcome, o.detail = "error:client_timeout", f"{type(e).__name__}"

    def _http_sdk(self, o: Outcome, body: dict) -> None:
        import openai

        extra = {k: body[k] for k in ("language", "seed", "max_frames")}
        c = openai.OpenAI(base_url=self.cl.base + "/v1", api_key="soak", max_retries=0, timeout=CLIENT_TIMEOUT_S)
        try:
            r = c.audio.speech.create(model="tts-1", input=body["input"], voice=body["voice"],
                                      response_format="pcm", extra_body=extra)
            o.samples = len(r.content) // 2
            o.ttfa_s = time.monotonic() - o.t0
            o.outcome = "audio" if o.samples else "error:empty_body"
        except openai.APIStatusError as e:
            code = (e.body or {}).get("code") if isinstance(e.body, dict) else None
            o.outcome = f"error:{e.status_code}:{code}"
        except openai.APITimeoutError:
            o.outcome = "error:client_timeout"
        except openai.APIConnectionError as e:
            o.outcome, o.detail = "error:closed", str(e.__cause__ or e)[:200]
        finally:
            c.close()

    # Wyoming: the wyoming package's client
    def _wyoming(self, o: Outcome, scenario: str, text: str, seed: int) -> None:
        asyncio.run(self._wyoming_async(o, scenario, text))

    async def _wyoming_async(self, o: Outcome, scenario: str, text: str) -> None:
        from wyoming.audio import AudioChunk, AudioStart, AudioStop
        from wyoming.client import AsyncTcpClient
        from wyoming.error import Error
        from wyoming.tts import (Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped,
                                 SynthesizeVoice)

        voice = SynthesizeVoice(name="anna" if scenario == "named" else None, language="en")
        c = AsyncTcpClient("127.0.0.1", self.cl.wport)
        try:
            await asyncio.wait_for(c.connect(), 5)
        except (OSError, asyncio.TimeoutError) as e:
            o.outcome, o.detail = "error:closed", f"{type(e).__name__}"
            return
        try:
            if scenario == "stream":
                await c.write_event(SynthesizeStart(voice=voice).event())
                for part in text.split(". "):
                    await c.write_event(SynthesizeChunk(text=part + ". ").event())
                await c.write_event(SynthesizeStop().event())
            else:
                await c.write_event(Synthesize(text=text, voice=voice).event())
            n, blocks, err = 0, 0, None
            while True:
                ev = await asyncio.wait_for(c.read_event(), CLIENT_TIMEOUT_S)
                if ev is None:
                    o.outcome = "error:closed"
                    return
                if AudioChunk.is_type(ev.type):
                    if o.ttfa_s is None:
                        o.ttfa_s = time.monotonic() - o.t0
                    n += len(AudioChunk.from_event(ev).audio)
                    if scenario == "vanish":
                        o.outcome, o.samples = "vanished", n // 2
                        return
                elif Error.is_type(ev.type):
                    err = err or Error.from_event(ev).code
                    if scenario != "stream":
                        o.outcome = f"error:{err}"
                        return
                elif AudioStop.is_type(ev.type):
                    blocks += 1
                    if scenario != "stream":
                        break
                elif SynthesizeStopped.is_type(ev.type):
                    break
                elif not AudioStart.is_type(ev.type):
                    pass
            o.samples = n // 2
            o.outcome = f"error:{err}" if err else "audio"
        except asyncio.TimeoutError:
            o.outcome = "error:client_timeout"
        except (ConnectionError, OSError, asyncio.IncompleteReadError) as e:
            o.outcome, o.detail = "error:closed", type(e).__name__
        finally:
            try:
                await asyncio.wait_for(c.disconnect(), 5)
            except Exception:  # the peer may be gone: nothing to close cleanly
                pass

    # WebSocket: the websockets client
    def _ws(self, o: Outcome, scenario: str, text: str, seed: int) -> None:
        asyncio.run(self._ws_async(o, scenario, text, seed))

    async def _ws_async(self, o: Outcome, scenario: str, text: str, seed: int) -> None:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidMessage

        async def recv(ws):
            m = await asyncio.wait_for(ws.recv(), CLIENT_TIMEOUT_S)
            return m if isinstance(m, bytes) else json.loads(m)

        try:
            ws = await asyncio.wait_for(connect(self.cl.ws, max_size=None, open_timeout=5), 10)
        except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidMessage) as e:
            o.outcome, o.detail = "error:closed", type(e).__name__
            return
        try:
            m = await recv(ws)
            if not isinstance(m, dict) or m.get("type") != "ready":
                o.outcome = f"error:ws:{m.get('code') if isinstance(m, dict) else 'binary'}"
                return
            start = {"type": "start", "language": "english", "seed": seed, "maxFrames": MAX_FRAMES}
            if scenario == "named":
                start["voice"] = "anna"
            await ws.send(json.dumps(start))
            m = await recv(ws)
            if not isinstance(m, dict) or m.get("type") != "started":
                o.outcome = f"error:{m.get('code') if isinstance(m, dict) else 'binary'}"
                return
            await ws.send(json.dumps({"type": "speak", "text": text}))
            n, cancelled = 0, False
            while True:
                m = await recv(ws)
                if isinstance(m, bytes):
                    if o.ttfa_s is None:
                        o.ttfa_s = time.monotonic() - o.t0
                    n += len(m)
                    if scenario == "vanish":
                        ws.transport.abort()  # gone without a close frame
                        o.outcome, o.samples = "vanished", n // 2
                        return
                    if scenario == "cancel" and not cancelled:
                        await ws.send(json.dumps({"type": "cancel"}))
                        cancelled = True
                    continue
                if m.get("type") == "complete":
                    o.outcome, o.samples = "audio", n // 2
                    return
                if m.get("type") == "error":
                    code = m.get("code")
                    o.outcome = "cancelled" if (cancelled and code == "CANCELLED") else f"error:{code}"
                    o.detail = str(m.get("detail", ""))[:100]
                    return
        except asyncio.TimeoutError:
            o.outcome = "error:client_timeout"
        except (ConnectionClosed, OSError) as e:
            o.outcome, o.detail = "error:closed", type(e).__name__
        finally:
            try:
                await asyncio.wait_for(ws.close(), 5)
            except Exception:  # aborted or the peer is gone
                pass


# the mix: (front, scenario, weight)
MIX = [("zmq", "short", 6), ("zmq", "long", 2), ("zmq", "named", 2), ("zmq", "inline", 2), ("zmq", "cancel", 1),
       ("zmq", "vanish", 1), ("zmq", "burst", 1),
       ("http", "stream", 4), ("http", "whole", 3), ("http", "sse", 1), ("http", "named", 1), ("http", "long", 1),
       ("http", "vanish", 1),
       ("wyoming", "short", 3), ("wyoming", "named", 1), ("wyoming", "stream", 1), ("wyoming", "vanish", 1),
       ("ws", "short", 3), ("ws", "named", 1), ("ws", "long", 1), ("ws", "cancel", 1), ("ws", "vanish", 1)]


class Load:
    """`workers` threads issuing requests back to back from the seeded mix until stopped or `max_requests`."""

    def __init__(self, driver: Driver, seed: int, workers: int, max_requests: int, queue_size: int,
                 mix=MIX, pause_s: float = 0.2):
        self.driver, self.seed, self.workers, self.max_requests = driver, seed, workers, max_requests
        self.queue_size, self.mix, self.pause_s = queue_size, mix, pause_s
        self.results: list[Outcome] = []
        self.running: dict[int, Outcome] = {}   # started, not finished
        self.lock = threading.Lock()
        self.stop_ev = threading.Event()
        self.issued = 0
        self.threads: list[threading.Thread] = []

    def _take(self) -> bool:
        with self.lock:
            if self.issued >= self.max_requests or self.stop_ev.is_set():
                return False
            self.issued += 1
            return True

    def _one(self, front: str, scenario: str, rng: random.Random) -> None:
        key = id(threading.current_thread()) ^ rng.getrandbits(32)
        with self.lock:
            self.running[key] = Outcome(front, scenario, t0=time.monotonic())
        o = self.driver.run(front, scenario, rng)
        with self.lock:
            self.running.pop(key, None)
            self.results.append(o)

    def _burst(self, rng: random.Random) -> None:
        """queue_size + 3 short ZeroMQ requests at once: beyond the talker's queue, some must be `busy`."""
        n = self.queue_size + 3
        seeds = [rng.randrange(1 << 30) for _ in range(n)]
        ts = []
        for s in seeds:
            if not self._take():
                break
            t = threading.Thread(target=self._one, args=("zmq", "burst", random.Random(s)), daemon=True)
            t.start()
            ts.append(t)
        for t in ts:
            t.join()

    def _worker(self, i: int) -> None:
        rng = random.Random(self.seed * 1000 + i)
        fronts = [(f, s) for f, s, _ in self.mix]
        weights = [w for *_, w in self.mix]
        while not self.stop_ev.is_set():
            front, scenario = rng.choices(fronts, weights)[0]
            if scenario == "burst":
                self._burst(rng)
            elif self._take():
                self._one(front, scenario, random.Random(rng.getrandbits(64)))
            else:
                return
            self.stop_ev.wait(rng.uniform(0, 2 * self.pause_s))

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._worker, args=(i,), name=f"load-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def stop(self, join_s: float) -> None:
        self.stop_ev.set()
        deadline = time.monotonic() + join_s
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        time.sleep(0.5)
        with self.lock:  # still running after the join: no answer within every timeout -> lost
            for o in self.running.values():
                o.outcome, o.detail, o.wall_s = "lost", "still running at the end", time.monotonic() - o.t0
                self.results.append(o)
            self.running.clear()


# --- sampling and faults --------------------------------------------------------------------------------
class Sampler:
    def __init__(self, cl: Cluster, every_s: float, t0: float):
        self.cl, self.every_s, self.t0 = cl, every_s, t0
        self.samples: list[dict] = []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def _queue(self):
        from client.api import ClientError, TTSClient

        try:
            with TTSClient(self.cl.endpoint, connect_timeout_s=0.5) as c:
                p = c.ping()
            return int(p.get("queue", 0)), bool(p.get("active"))
        except ClientError:
            return None, None

    def _run(self) -> None:
        import psutil

        while not self.stop_ev.is_set():
            s = {"t": round(time.monotonic() - self.t0, 2)}
            for r in ORDER:
                pid = self.cl.pid(r)
                try:
                    p = psutil.Process(pid) if pid else None
                    s[r] = None if p is None else {"pid": pid, "rss": p.memory_info().rss, "fds": p.num_fds()}
                except psutil.Error:
                    s[r] = None
            s["queue"], s["active"] = self._queue()
            self.samples.append(s)
            self.stop_ev.wait(self.every_s)

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_ev.set()
        self.thread.join(10)


class Injector:
    """`n` faults at seeded moments in [start_s, end_s] of the run: kill -9 (~70 %) or SIGSTOP for 2-8 s then
    SIGCONT (a hang longer than the predictor/vocoder timeouts), the four targets in seeded turns. After each,
    the time until a ZeroMQ and an HTTP request succeed again; the next fault waits for that."""

    def __init__(self, cl: Cluster, driver: Driver, n: int, seed: int, start_s: float, end_s: float, t0: float,
                 log=print):
        self.cl, self.driver, self.n, self.t0, self.log = cl, driver, n, t0, log
        rng = random.Random(seed ^ 0x5EED)
        targets = []
        while len(targets) < n:
            turn = list(ORDER)
            rng.shuffle(turn)
            targets += turn
        times = sorted(rng.uniform(start_s, end_s) for _ in range(n))
        self.plan = [{"at_s": round(t, 2), "target": targets[i],
                      "kind": "kill" if rng.random() < 0.7 else "stop",
                      "stop_s": round(rng.uniform(2.0, 8.0), 2)} for i, t in enumerate(times)]
        self.done: list[dict] = []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self._run, name="injector", daemon=True)

    def _recovered(self, timeout_s: float = 60) -> float | None:
        """Seconds until a short ZeroMQ request and a short HTTP request both end in audio (None: never)."""
        t = time.monotonic()
        ok = set()
        rng = random.Random(1)
        while time.monotonic() - t < timeout_s and not self.stop_ev.is_set():
            for front in ("zmq", "http"):
                if front not in ok and self.driver.run(front, "short" if front == "zmq" else "stream",
                                                       rng).outcome == "audio":
                    ok.add(front)
            if len(ok) == 2:
                return round(time.monotonic() - t, 2)
            time.sleep(0.5)
        return None

    def _run(self) -> None:
        for f in self.plan:
            if self.stop_ev.wait(max(0.0, f["at_s"] - (time.monotonic() - self.t0))):
                return
            role = f["target"]
            t = time.monotonic()
            rec = dict(f, t=round(t - self.t0, 2))
            if f["kind"] == "kill":
                rec["pid"] = self.cl.signal(role, signal.SIGKILL)
                restarts = self.cl.restarts[role]
                while self.cl.restarts[role] == restarts and time.monotonic() - t < 150 and rec["pid"]:
                    time.sleep(0.1)
                rec["restarted_s"] = round(time.monotonic() - t, 2)
            else:
                rec["pid"] = self.cl.signal(role, signal.SIGSTOP)
                self.stop_ev.wait(f["stop_s"])
                self.cl.signal(role, signal.SIGCONT)
            rec["recovered_s"] = self._recovered()
            self.log(f"[{rec['t']:7.1f} s] fault {len(self.done) + 1}/{self.n}: {f['kind']} {role}"
                     + (f" ({f['stop_s']} s)" if f["kind"] == "stop" else "")
                     + f" -> serving again after {rec['recovered_s']} s")
            self.done.append(rec)

    def start(self):
        self.thread.start()

    def stop(self):
        self.stop_ev.set()
        self.thread.join(200)


# --- the report -----------------------------------------------------------------------------------------
def _pct(xs, q):
    xs = sorted(xs)
    return None if not xs else round(xs[min(len(xs) - 1, int(q * len(xs)))], 4)


def summarize(results: list[Outcome], samples: list[dict], faults: list[dict], cl: Cluster | None,
              duration_s: float, args, run_t0: float) -> dict:
    outcomes: dict[str, int] = {}
    by_front: dict[str, dict[str, int]] = {}
    for o in results:
        outcomes[o.outcome] = outcomes.get(o.outcome, 0) + 1
        f = by_front.setdefault(o.front, {})
        f[o.outcome] = f.get(o.outcome, 0) + 1
    lat = {}
    for front in sorted({o.front for o in results}):
        a = [o for o in results if o.front == front and o.outcome == "audio"]
        lat[front] = {"n": len(a), "ttfa_median_s": _pct([o.ttfa_s for o in a if o.ttfa_s is not None], 0.5),
                      "ttfa_p95_s": _pct([o.ttfa_s for o in a if o.ttfa_s is not None], 0.95),
                      "wall_median_s": _pct([o.wall_s for o in a], 0.5), "wall_p95_s": _pct([o.wall_s for o in a], 0.95)}
    procs = {}
    for r in ORDER:
        ss = [(s["t"], s[r]) for s in samples if s.get(r)]
        if not ss:
            continue
        at5 = next((v for t, v in ss if t >= 300), None)
        segs: dict[int, list] = {}
        for t, v in ss:
            segs.setdefault(v["pid"], []).append((t, v))
        pid, seg = max(segs.items(), key=lambda kv: kv[1][-1][0] - kv[1][0][0])
        # the longest-lived instance: growth from a third of its life (past warm-up) to its end
        base = seg[len(seg) // 3][1]
        procs[r] = {"rss_start": ss[0][1]["rss"], "rss_after_5min": at5["rss"] if at5 else None,
                    "rss_end": ss[-1][1]["rss"], "rss_max": max(v["rss"] for _, v in ss),
                    "fds_start": ss[0][1]["fds"], "fds_end": ss[-1][1]["fds"], "fds_max": max(v["fds"] for _, v in ss),
                    "instances": len(segs), "restarts": cl.restarts[r] if cl else 0,
                    "longest_instance": {"pid": pid, "span_s": round(seg[-1][0] - seg[0][0], 1),
                                         "from_s": seg[len(seg) // 3][0], "rss_from": base["rss"],
                                         "rss_end": seg[-1][1]["rss"],
                                         "rss_growth_pct": round(100 * (seg[-1][1]["rss"] / base["rss"] - 1), 2),
                                         "fds_from": base["fds"], "fds_end": seg[-1][1]["fds"]}}
        if at5:
            procs[r]["rss_growth_after_5min_pct"] = round(100 * (ss[-1][1]["rss"] / at5["rss"] - 1), 2)
    fault_counts: dict[str, int] = {}
    for f in faults:
        k = f"{f['kind']}:{f['target']}"
        fault_counts[k] = fault_counts.get(k, 0) + 1
    lost = [vars(o) for o in results if o.outcome == "lost"]
    # requests running at the moment of a fault (start <= fault <= end), by outcome
    in_flight: dict[str, dict[str, int]] = {}
    for f in faults:
        t = f["t"]  # relative to the run's start, like `start` below
        k = in_flight.setdefault(f"{f['kind']}:{f['target']}", {})
        for o in results:
            start = o.t0 - run_t0
            if start <= t <= start + (o.wall_s or 0):
                k[o.outcome] = k.get(o.outcome, 0) + 1
    return {"args": vars(args), "duration_s": round(duration_s, 1), "requests": len(results),
            "lost": len(lost), "lost_requests": lost[:50], "outcomes": dict(sorted(outcomes.items())),
            "by_front": {k: dict(sorted(v.items())) for k, v in sorted(by_front.items())},
            "latency": lat, "processes": procs,
            "faults_injected": len(faults), "faults_by_kind_target": dict(sorted(fault_counts.items())),
            "faults_not_recovered": sum(f.get("recovered_s") is None for f in faults),
            "recovered_s_median": _pct([f["recovered_s"] for f in faults if f.get("recovered_s") is not None], 0.5),
            "recovered_s_max": max((f["recovered_s"] for f in faults if f.get("recovered_s") is not None),
                                   default=None),
            "in_flight_at_faults": {k: dict(sorted(v.items())) for k, v in sorted(in_flight.items())},
            "faults": faults,
            "unexpected_exits": [] if cl is None else
            [{**e, "t": round(e["t"], 2)} for e in cl.exits if not e["caused"]],
            "queue_depth_max": max((s["queue"] for s in samples if s.get("queue") is not None), default=None),
            "samples": samples}


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["samples"]
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=[3, 1])
    for r in ORDER:
        pts = [(x["t"] / 60, x[r]["rss"] / 2 ** 20) for x in s if x.get(r)]
        if pts:
            a1.plot(*zip(*pts), ".", ms=2, label=r)
    for f in report["faults"]:
        a1.axvline(f["t"] / 60, color="red" if f["kind"] == "kill" else "orange", lw=0.5, alpha=0.5)
    a1.set_ylabel("RSS (MiB)")
    a1.set_title(f"soak: {report['requests']} requests, {report['lost']} lost, {report['faults_injected']} faults "
                 "(red: kill -9, orange: SIGSTOP)")
    a1.legend(loc="upper left", fontsize=8)
    q = [(x["t"] / 60, x["queue"]) for x in s if x.get("queue") is not None]
    if q:
        a2.step(*zip(*q), where="post", lw=0.8)
    a2.set_ylabel("talker queue")
    a2.set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--png", type=Path, help="default: the --json path with .png")
    ap.add_argument("--faults", type=int, default=0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--size", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--model", type=Path, help="a converted model directory (default: by --size)")
    ap.add_argument("--workers", type=int, default=3, help="concurrent clients")
    ap.add_argument("--max-requests", type=int, default=100000)
    ap.add_argument("--sample-s", type=float, default=3.0)
    ap.add_argument("--attach", action="store_true", help="drive running daemons (QWEN3_TTS_CONFIG); no faults")
    args = ap.parse_args(argv)
    if args.attach and args.faults:
        ap.error("--attach cannot inject faults (the soak restarts only processes it started)")
    log = lambda m: print(m, flush=True)  # noqa: E731
    # `kill` / Ctrl-C: unwind through the finally blocks below, which stop the daemons this soak started
    # (the default SIGTERM action would leave them running, orphaned)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    duration = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="qwen3-soak-") as tmpd:
        if args.attach:
            cl = Attached()
        else:
            cl = Cluster(args.model or demo_model(args.size), Path(tmpd), log=log)
            log(f"starting the four processes in {cl.run_dir} ...")
            try:
                cl.start()
            except BaseException:
                cl.stop()
                raise
        driver = Driver(cl, cl.voice.to_json())
        t0 = time.monotonic()
        sampler = Sampler(cl, args.sample_s, t0) if not args.attach else None
        load = Load(driver, args.seed, args.workers, args.max_requests, cl.queue_size)
        inj = Injector(cl, driver, args.faults, args.seed, 0.08 * duration, 0.85 * duration, t0, log) \
            if args.faults else None
        try:
            if sampler:
                sampler.start()
            load.start()
            if inj:
                inj.start()
            while time.monotonic() - t0 < duration and any(t.is_alive() for t in load.threads):
                time.sleep(1)
                n = len(load.results)
                if n and int(time.monotonic() - t0) % 60 == 0:
                    log(f"[{time.monotonic() - t0:7.1f} s] {n} requests, lost "
                        f"{sum(o.outcome == 'lost' for o in load.results)}")
            if inj:
                inj.stop()
            load.stop(HARD_S + 30)
            # the next ones succeed: after the last fault, one request of each kind on every front
            final = [driver.run(f, s, random.Random(i)) for i, (f, s) in
                     enumerate([("zmq", "short"), ("zmq", "inline"), ("http", "stream"), ("http", "whole"),
                                ("wyoming", "short"), ("ws", "short")])]
        finally:
            if sampler:
                sampler.stop()
            if not args.attach:
                cl.stop()
        duration_s = time.monotonic() - t0
        rep = summarize(load.results, sampler.samples if sampler else [], inj.done if inj else [],
                        None if args.attach else cl, duration_s, args, t0)
        rep["final_probe"] = {f"{o.front}:{o.scenario}": o.outcome for o in final}
        rep["final_probe_ok"] = all(o.outcome == "audio" for o in final)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    rep["args"] = {k: str(v) for k, v in rep["args"].items()}
    args.json.write_text(json.dumps(rep, indent=1))
    png = args.png or args.json.with_suffix(".png")
    if rep["samples"]:
        plot(rep, png)
    log(json.dumps({k: rep[k] for k in ("requests", "lost", "outcomes", "faults_injected", "faults_not_recovered",
                                        "unexpected_exits", "final_probe_ok", "latency")}, indent=1))
    for r, p in rep["processes"].items():
        log(f"{r:9s} RSS start {p['rss_start'] / 2**20:7.1f} MiB  5 min "
            f"{(p['rss_after_5min'] or 0) / 2**20:7.1f}  end {p['rss_end'] / 2**20:7.1f}  fds {p['fds_start']}->"
            f"{p['fds_end']}  restarts {p['restarts']}  longest instance {p['longest_instance']['span_s']} s: "
            f"{p['longest_instance']['rss_growth_pct']:+.1f} % RSS")
    ok = rep["lost"] == 0 and not rep["unexpected_exits"] and rep["final_probe_ok"] and not rep["faults_not_recovered"]
    return 0 if ok else 1


class Attached:
    """Daemons already running (`bash launch.sh --daemon`): endpoints from the configuration."""

    def __init__(self):
        from daemons.config import load_config
        from daemons.engine.voice import Voice

        cfg = load_config(discover=True)
        self.endpoint = cfg.endpoints["talker"]
        self.base = f"http://127.0.0.1:{cfg.gateway.port}"
        self.ws = f"ws://127.0.0.1:{cfg.gateway.port}/api/v1/speak"
        self.wport = int(cfg.gateway.wyoming_uri.rsplit(":", 1)[1]) if cfg.gateway.wyoming_uri.startswith("tcp") else 0
        self.queue_size = cfg.limits.queue_size
        hidden = json.loads((Path(cfg.model_dir) / "manifest.json").read_text())["talker"]["hidden_size"]
        self.voice = Voice(np.random.default_rng(7).standard_normal(hidden).astype(np.float32), language="english")


if __name__ == "__main__":
    sys.exit(main())
