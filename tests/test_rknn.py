"""RKNN vocoder: backend selection and fallback (runtime absent here), config keys, and the conversion +
simulator accuracy with rknn-toolkit2 in its own venv (.venv-rknn, made by scripts/setup_rknn_env.sh)."""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from daemons.config import ConfigError, VocoderBackend, load_config, parse_npu_core_mask
from daemons.engine.vocoder import VocoderEngine
from daemons.engine.vocoder_rknn import (RKNN_META_FORMAT, RKNN_META_VERSION, RknnUnavailable, RknnVocoderEngine,
                                         read_rknn_meta)
from daemons.vocoder_backend import open_vocoder

ROOT = Path(__file__).resolve().parents[1]
VENV_PY = ROOT / ".venv-rknn" / "bin" / "python"
# a guard against a hung set-up, not a speed test (in CI running over it FAILS): measured ~85 s from scratch,
# 62 s with a warm pip cache; a no-op when the stamp is current
SETUP_BUDGET_S = 600


def _have_rknnlite() -> bool:
    from daemons.engine.vocoder_rknn import RknnUnavailable, _import_rknnlite

    try:  # the daemon's own import path: the real wheel's import renames logging's levels, this undoes it
        _import_rknnlite()
    except RknnUnavailable:
        return False
    return True


@pytest.fixture()
def model(tiny_model, tmp_path) -> Path:
    """A private copy of the tiny model's vocoder (tests add .rknn files to it)."""
    d = tmp_path / "m"
    d.mkdir()
    for f in ("vocoder.onnx", "vocoder.json"):
        shutil.copy(tiny_model / f, d / f)
    return d


def _records(caplog):
    return [r for r in caplog.records if r.name == "test.vocoder"]


# ------------------------------------------------------------------------------------------------ config

def test_config_defaults_and_keys(tmp_path):
    cfg = load_config(env={"HOME": str(tmp_path)})
    assert cfg.vocoder_backend == VocoderBackend("auto", "auto", "vocoder.rknn")
    p = tmp_path / "c.toml"
    p.write_text('[vocoder]\nthreads = 2\nbackend = "rknn"\nnpu_core_mask = "0-1"\nrknn_file = "/x/v.rknn"\n')
    cfg = load_config(p, env={"HOME": str(tmp_path)})
    assert cfg.vocoder_backend == VocoderBackend("rknn", "0-1", "/x/v.rknn") and cfg.roles["vocoder"].threads == 2
    cfg = load_config(p, env={"HOME": str(tmp_path), "QWEN3_TTS_VOCODER_BACKEND": "ONNX",
                              "QWEN3_TTS_VOCODER_NPU_CORE_MASK": "all"})
    assert (cfg.vocoder_backend.backend, cfg.vocoder_backend.npu_core_mask) == ("onnx", "all")
    assert json.loads(json.dumps(cfg.to_dict()))["vocoder_backend"]["backend"] == "onnx"


@pytest.mark.parametrize("text, err", [
    ('[vocoder]\nbackend = "npu"\n', r"vocoder\.backend: expected one of auto, onnx, rknn"),
    ('[vocoder]\nnpu_core_mask = "3"\n', r"vocoder\.npu_core_mask: bad NPU core list"),
    ('[vocoder]\nnpu_core_mask = 1\n', r"vocoder\.npu_core_mask: expected a non-empty string"),
    ('[talker]\nbackend = "rknn"\n', r"unknown key talker\.backend"),
])
def test_config_errors(tmp_path, text, err):
    p = tmp_path / "c.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=err):
        load_config(p, env={"HOME": str(tmp_path)})


def test_npu_core_mask_values():
    # bit i = NPU core i (rknnlite's NPU_CORE_0 = 1, NPU_CORE_1 = 2, NPU_CORE_2 = 4, NPU_CORE_0_1_2 = 7)
    assert [parse_npu_core_mask(v, "k") for v in ("auto", "0", "1", "2", "0-1", "0,2", "all", "0-2")] == \
        [None, 1, 2, 4, 3, 5, 7, 7]


# ------------------------------------------------------------------------------ selection and fallback

def test_backend_onnx(model, caplog):
    caplog.set_level(logging.INFO, "test.vocoder")
    eng = open_vocoder(model / "vocoder.onnx", None, VocoderBackend(backend="onnx"), threads=1,
                       log=logging.getLogger("test.vocoder"))
    assert isinstance(eng, VocoderEngine) and eng.backend == "onnx"
    recs = _records(caplog)
    assert len(recs) == 1 and 'backend = "onnx"' in recs[0].getMessage()


def test_auto_falls_back_when_the_rknn_file_is_missing(model, caplog):
    caplog.set_level(logging.INFO, "test.vocoder")
    eng = open_vocoder(model / "vocoder.onnx", None, VocoderBackend(), threads=1,
                       log=logging.getLogger("test.vocoder"))
    assert isinstance(eng, VocoderEngine) and eng.backend == "onnx"
    recs = _records(caplog)
    assert len(recs) == 1, [r.getMessage() for r in recs]          # one clear line, nothing else
    msg = recs[0].getMessage()
    assert recs[0].levelno == logging.INFO
    assert "onnxruntime" in msg and "RKNN file unavailable" in msg and str(model / "vocoder.rknn") in msg
    assert eng.fallback_reason.startswith("file:")
    # the fallback is the plain onnxruntime vocoder: same audio as VocoderEngine
    codes = np.random.default_rng(0).integers(0, eng.codebook_size, (6, eng.num_quantizers))
    ref = VocoderEngine(model / "vocoder.onnx", threads=1).decode_all(codes)
    np.testing.assert_array_equal(eng.decode_all(codes), ref)


def _fake_converted(model: Path, name="vocoder.rknn", graph="split") -> Path:
    """A .rknn file + sidecar (+ CPU head for the split layout) as scripts/convert_rknn.py writes them (the
    .rknn bytes are never read unless rknn-toolkit-lite2 is installed; the head is a copy of vocoder.onnx,
    which is only opened after the runtime check)."""
    spec = json.loads((model / "vocoder.json").read_text())
    names = [s["name"] for s in spec["states"]]
    p = model / name
    p.write_bytes(b"RKNN\0not-a-real-model")
    meta = {"format": RKNN_META_FORMAT, "format_version": RKNN_META_VERSION, "precision": "int16", "chunk": 4,
            "graph": graph}
    if graph == "split":
        head, tail = names[:8], names[8:]
        meta.update(head_states=head, tail_states=tail, head_onnx=p.name + ".head.onnx",
                    inputs=["latent"] + ["state_in_" + n for n in tail])
        shutil.copy(model / "vocoder.onnx", p.with_name(p.name + ".head.onnx"))
    else:
        meta["inputs"] = ["codes"] + ["state_in_" + n for n in names]
    p.with_name(p.name + ".json").write_text(json.dumps(meta))
    return p


@pytest.mark.skipif(_have_rknnlite(), reason="rknn-toolkit-lite2 is installed: the 'runtime missing' case "
                                             "cannot happen on this machine")
@pytest.mark.parametrize("backend, level", [("auto", logging.INFO), ("rknn", logging.WARNING)])
def test_falls_back_when_the_runtime_is_missing(model, caplog, backend, level):
    (model / "npu").mkdir()
    rk = _fake_converted(model, "npu/v.rknn" if backend == "rknn" else "vocoder.rknn")
    b = VocoderBackend(backend=backend, npu_core_mask="0",
                       rknn_file="npu/v.rknn" if backend == "rknn" else "vocoder.rknn")
    caplog.set_level(logging.INFO, "test.vocoder")
    eng = open_vocoder(model / "vocoder.onnx", None, b, threads=1, model_dir=model,
                       log=logging.getLogger("test.vocoder"))
    assert rk.is_file() and isinstance(eng, VocoderEngine) and eng.backend == "onnx"
    recs = _records(caplog)
    assert len(recs) == 1 and recs[0].levelno == level
    assert "RKNN runtime unavailable" in recs[0].getMessage() and "rknn-toolkit-lite2" in recs[0].getMessage()
    assert eng.fallback_reason.startswith("runtime:")


@pytest.mark.parametrize("graph", ["split", "full"])
def test_stale_rknn_file_is_rejected(model, caplog, graph):
    """A .rknn converted from another vocoder (tensor list or state split differs) is never used."""
    p = _fake_converted(model, graph=graph)
    meta = json.loads(p.with_name(p.name + ".json").read_text())
    meta["inputs"] = meta["inputs"][:-1]
    if graph == "split":
        meta["tail_states"] = meta["tail_states"][:-1]
    p.with_name(p.name + ".json").write_text(json.dumps(meta))
    caplog.set_level(logging.INFO, "test.vocoder")
    eng = open_vocoder(model, None, VocoderBackend(), threads=1, log=logging.getLogger("test.vocoder"))
    assert eng.backend == "onnx" and eng.fallback_reason.startswith("model:")
    assert len(_records(caplog)) == 1


def test_version_1_sidecar_is_a_full_graph(model):
    """Sidecars of the first converter (format_version 1, no "graph" key) stay readable: whole step on the NPU."""
    p = _fake_converted(model, graph="full")
    meta = json.loads(p.with_name(p.name + ".json").read_text())
    del meta["graph"]
    p.with_name(p.name + ".json").write_text(json.dumps(dict(meta, format_version=1)))
    assert read_rknn_meta(p)["graph"] == "full"
    p.with_name(p.name + ".json").write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(RknnUnavailable, match="not a qwen3-tts-vocoder-rknn"):
        read_rknn_meta(p)


def test_split_model_without_its_cpu_head_is_rejected(model):
    """The split layout's CPU head (<file>.rknn.head.onnx) is part of the converted model."""
    p = _fake_converted(model)
    p.with_name(p.name + ".head.onnx").unlink()
    with pytest.raises(RknnUnavailable, match=r"CPU head .*head\.onnx is missing") as e:
        RknnVocoderEngine(p, VocoderEngine(model / "vocoder.onnx", threads=1))
    assert e.value.what == "file"


def test_daemon_configuration_selects_onnx_here(tiny_model, tmp_path):
    """What the vocoder daemon's load() does, from the environment/config in a fresh process (no NPU
    runtime here): onnxruntime, and exactly one log line saying why."""
    env = dict(os.environ, QWEN3_TTS_MODEL_DIR=str(tiny_model), QWEN3_TTS_RUNTIME_DIR=str(tmp_path / "rt"),
               QWEN3_TTS_VOCODER_CPUS="0", QWEN3_TTS_VOCODER_THREADS="1", HOME=str(tmp_path),
               QWEN3_TTS_CONFIG="")
    env.pop("QWEN3_TTS_CONFIG")
    r = subprocess.run([sys.executable, "-c",
                        "import logging, sys\n"
                        "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(name)s %(message)s')\n"
                        "from daemons.config import load_config\n"
                        "from daemons.vocoder_backend import open_vocoder\n"
                        "from daemons.engine.manifest import ModelDir\n"
                        "cfg = load_config(); md = ModelDir(cfg.model_dir)\n"
                        "e = open_vocoder(md.file(md.vocoder['onnx']), md.vocoder, cfg.vocoder_backend, threads=1,"
                        " model_dir=md.path, log=logging.getLogger('qwen3_tts.vocoder'))\n"
                        "print('BACKEND', e.backend)\n"],
                       cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("qwen3_tts.vocoder")]
    assert len(lines) == 1 and "vocoder backend: onnxruntime (RKNN file unavailable" in lines[0]
    assert "BACKEND onnx" in r.stdout


# ------------------------------------------------------------------ conversion + simulator (x86_64 only)

def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.fixture(scope="module")
def rknn_python():
    """.venv-rknn's python. In CI (CI=true) a missing prerequisite FAILS: CI builds .venv-rknn from scratch
    every run, and a broken set-up (or a runner that no longer matches the wheel) must not turn into a quiet
    skip. On a developer's machine (no CI variable) it skips with the reason: rknn-toolkit2 is an optional,
    x86_64-only conversion tool fetched from the package index, and a laptop offline or on arm64 should
    still be able to run the rest of the suite."""
    missing = pytest.fail if _in_ci() else pytest.skip
    if platform.machine() != "x86_64" or sys.version_info[:2] != (3, 11):
        missing("rknn-toolkit2 2.5.0 is used here through its x86_64 CPython 3.11 wheel only "
                f"(this is {platform.machine()}, CPython {sys.version_info[0]}.{sys.version_info[1]})")
    try:
        r = subprocess.run(["bash", str(ROOT / "scripts" / "setup_rknn_env.sh")], cwd=ROOT, capture_output=True,
                           text=True, timeout=SETUP_BUDGET_S)
    except subprocess.TimeoutExpired:
        missing(f"scripts/setup_rknn_env.sh took over {SETUP_BUDGET_S} s")
    if r.returncode != 0:
        missing(f"rknn-toolkit2 could not be installed/imported in .venv-rknn (exit code {r.returncode}): "
                + ((r.stderr.strip() or r.stdout.strip()).splitlines() or ["no output"])[-1])
    return VENV_PY


DEFAULT_MIN_SNR_DB = 30.0  # issue 6: the default precision in the simulator, tiny model, closed loop
# the converter's own figures in the sidecar: enough chunks for its per-step minimum to mean something
EVAL_CHUNKS = 40
# The test's own decode, scored here against onnxruntime FP32 (the sidecar is not trusted): 100 closed-loop
# chunks of 4 frames (docs/RKNN.md: with 24 calibration chunks 2 of 100 such chunks saturated a state tensor
# and fell to 20-30 dB), then calls of 7, 1, 3, 4, 2 frames (full chunks on the NPU, remainders on the CPU,
# state handed over both ways). Codes: seeded, not the converter's.
SCORE_CALLS = [4] * 100 + [7, 1, 3, 4, 2]
SCORE_SEED = 2024
# Measured (tiny model, seed-1234 checkpoint; the simulator is deterministic: two runs bit-identical):
#   int16 default (128 calibration chunks): whole 36.33 dB, worst 4-frame chunk 30.87 dB (next 34.58),
#            the mixed-size calls 39.41 dB;
#   int16 with --calib-chunks 24 (the old default, for scale): 34.95 dB, worst chunk 23.39, 3 chunks < 30;
#   int8 (8 calibration chunks): 10.03 dB, worst chunk 9.14 dB, mixed calls 12.40 dB.
INT16_FLOORS = dict(whole=35.8, worst_chunk=30.0, mixed_calls=38.9)
INT8_FLOORS = dict(whole=9.5, worst_chunk=8.6, mixed_calls=11.9)

# Run inside .venv-rknn: scripts/convert_rknn.py's CLI, with its evaluate() wrapped so that the engine it
# builds (RknnVocoderEngine with the simulator as runtime: the board's chunk code) first decodes the test's
# codes in the test's calls; the audio goes to a .npy for the test to score.
_SCORE_SCRIPT = """
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import scripts.convert_rknn as C
codes, calls, wav_out = np.load(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
inner = C.evaluate
def evaluate(ref, engine, *a, **k):
    assert type(engine).__name__ == "RknnVocoderEngine", type(engine)
    stream, parts, at = engine.new_stream(), [], 0
    for n in calls:
        parts.append(stream.decode(codes[at:at + n]))
        at += n
    np.save(wav_out, np.concatenate(parts))
    return inner(ref, engine, *a, **k)
C.evaluate = evaluate
sys.exit(C.main(sys.argv[5:]))
"""


def _snr(ref, x) -> float:
    ref, x = np.asarray(ref, np.float64), np.asarray(x, np.float64)
    err = float(np.sum((ref - x) ** 2))
    return float("inf") if err == 0 else float(10 * np.log10(float(np.sum(ref ** 2)) / err))


def _convert(py, model: Path, precision: str | None, *args: str) -> tuple[dict, dict]:
    """scripts/convert_rknn.py (CLI) with EVAL_CHUNKS evaluation chunks, precision None = the script's default;
    returns (its metadata, the test's own scores of the SCORE_CALLS decode against onnxruntime FP32)."""
    out = model / f"vocoder-{precision or 'default'}.rknn"
    codes = np.random.default_rng(SCORE_SEED).integers(0, 32, (sum(SCORE_CALLS), 16)).astype(np.int64)
    cpu = VocoderEngine(model / "vocoder.onnx", threads=1)
    assert cpu.codebook_size == 32 and cpu.num_quantizers == 16
    np.save(model / "score_codes.npy", codes)
    wav_out = model / f"score-{precision or 'default'}.npy"
    cmd = [str(py), "-c", _SCORE_SCRIPT, str(ROOT), str(model / "score_codes.npy"), json.dumps(SCORE_CALLS),
           str(wav_out), str(model), "--chunk", "4", "--out", str(out), "--eval-chunks", str(EVAL_CHUNKS),
           *args] + (["--precision", precision] if precision else [])
    r = subprocess.run(cmd, cwd=model, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    meta = json.loads(Path(str(out) + ".json").read_text())
    assert out.is_file() and meta["chunk"] == 4 and meta["format_version"] == RKNN_META_VERSION
    acc = meta["accuracy"]
    print(f"\n{meta['precision']} ({meta['graph']} graph), converter's sidecar over {acc['chunks']} chunks: "
          f"{acc['snr_db']} dB (closed loop), {acc['snr_db_step_mean']} dB per step "
          f"(min {acc['snr_db_step_min']}), {acc['snr_db_mixed']} dB with a CPU remainder")

    # the test's own score: the same calls through onnxruntime FP32
    wav = np.load(wav_out)
    stream, ref, at = cpu.new_stream(), [], 0
    for n in SCORE_CALLS:
        ref.append(stream.decode(codes[at:at + n]))
        at += n
    ref = np.concatenate(ref)
    assert wav.shape == ref.shape == (sum(SCORE_CALLS) * 1920,) and np.isfinite(wav).all()
    n4 = SCORE_CALLS.index(7)
    per = [_snr(ref[i * 7680:(i + 1) * 7680], wav[i * 7680:(i + 1) * 7680]) for i in range(n4)]
    score = dict(whole=_snr(ref, wav), worst_chunk=min(per), mixed_calls=_snr(ref[n4 * 7680:], wav[n4 * 7680:]),
                 chunks_below_30=sum(x < 30 for x in per))
    print(f"test's own score, {n4} closed-loop chunks + calls {SCORE_CALLS[n4:]}: whole {score['whole']:.2f} dB, "
          f"worst chunk {score['worst_chunk']:.2f} dB (chunk {int(np.argmin(per))}), mixed calls "
          f"{score['mixed_calls']:.2f} dB, {score['chunks_below_30']} chunks < 30 dB")
    return meta, score


def _assert_floors(score: dict, floors: dict, what: str) -> None:
    low = {k: (round(score[k], 2), f) for k, f in floors.items() if not score[k] >= f}
    assert not low, f"{what}: below the floor (measured, floor): {low}"


def test_convert_default_and_int8_in_the_simulator(rknn_python, model):
    """The default conversion (int16, FP32 CPU head + NPU conv decoder, default calibration) reaches the
    issue's 30 dB in the simulator in every one of 100 closed-loop chunks (a saturating chunk would show),
    through RknnVocoderEngine's own chunk code (the simulator stands in for the NPU), scored here; the split
    is exact in fp32. INT8 converts and runs too, far below (see docs/RKNN.md), above its own floor."""
    meta, score = _convert(rknn_python, model, None)
    acc = meta["accuracy"]
    assert meta["precision"] == "int16" and meta["graph"] == "split"
    assert meta["calibration_chunks"] == 128
    assert meta["split_check"]["snr_db_wav"] == "inf" and meta["split_check"]["max_abs_diff"] == 0.0
    assert (model / meta["head_onnx"]).is_file()
    assert acc["chunks"] == EVAL_CHUNKS and acc["snr_db"] >= DEFAULT_MIN_SNR_DB, acc
    assert acc["snr_db_step_min"] >= DEFAULT_MIN_SNR_DB and acc["snr_db_mixed"] >= DEFAULT_MIN_SNR_DB, acc
    assert score["chunks_below_30"] == 0, score
    _assert_floors(score, INT16_FLOORS, "int16 (default)")
    meta8, score8 = _convert(rknn_python, model, "int8", "--calib-chunks", "8")
    assert meta8["precision"] == "int8" and np.isfinite(meta8["accuracy"]["snr_db"])
    assert meta8["accuracy"]["snr_db"] < acc["snr_db"] and score8["whole"] < score["whole"]
    _assert_floors(score8, INT8_FLOORS, "int8")
