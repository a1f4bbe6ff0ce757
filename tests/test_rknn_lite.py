"""The RKNN backend against rknn-toolkit-lite2's real API (issue 16 item 2).

On x86 a stand-in `rknnlite` package (written below, put on sys.path for one test) behaves as the real
2.5.0 aarch64 wheel was recorded to behave in the emulated arm64 root (scripts/aarch64_check.sh,
docs/BOARD.md): the same signatures and constants, its log and tracebacks printed on stderr by the library
itself, `load_rknn()` 0, `init_runtime()` -1. Under aarch64 with the real wheel installed,
`test_real_rknnlite_falls_back` loads a real converted `.rknn` (QWEN3_TTS_RKNN_TEST_MODEL, a model dir with
vocoder.onnx + vocoder.rknn made by scripts/convert_rknn.py on x86) and takes the fallback for real."""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from daemons.config import VocoderBackend
from daemons.engine.vocoder import VocoderEngine
from daemons.engine.vocoder_rknn import (DEVICE_TREE, RKNN_META_FORMAT, RKNN_META_VERSION, RknnUnavailable,
                                         RknnVocoderEngine, _import_rknnlite, _open_rknnlite, library_reason)
from daemons.vocoder_backend import open_vocoder

# What rknn-toolkit-lite2 2.5.0 printed on stderr (verbatim, from the emulated arm64 root; docs/BOARD.md).
# init_runtime(target=None) where /proc/device-tree/compatible is absent (it cannot find the SoC):
REAL_NO_SOC = """\
W rknn-toolkit-lite2 version: 2.5.0
E Catch exception when init runtime!
E Traceback (most recent call last):
  File "/opt/rk-scratch/lib/python3.11/site-packages/rknnlite/api/rknn_lite.py", line 168, in init_runtime
    self.rknn_runtime = RKNNRuntime(root_dir=self.root_dir, target=target, device_id=device_id,
                        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "rknnlite/api/rknn_runtime.py", line 372, in rknnlite.api.rknn_runtime.RKNNRuntime.__init__
  File "rknnlite/api/rknn_runtime.py", line 490, in rknnlite.api.rknn_runtime.RKNNRuntime._get_target_soc
Exception: Please specify the target in init_runtime!
"""
# the device tree says rk3588 but /usr/lib/librknnrt.so is missing (a board without the runtime library):
REAL_NO_LIBRKNNRT = """\
W rknn-toolkit-lite2 version: 2.5.0
E Catch exception when init runtime!
E Traceback (most recent call last):
  File "/opt/rk-scratch/lib/python3.11/site-packages/rknnlite/api/rknn_lite.py", line 168, in init_runtime
    self.rknn_runtime = RKNNRuntime(root_dir=self.root_dir, target=target, device_id=device_id,
                        ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "rknnlite/api/rknn_runtime.py", line 382, in rknnlite.api.rknn_runtime.RKNNRuntime.__init__
  File "rknnlite/api/rknn_runtime.py", line 632, in rknnlite.api.rknn_runtime.RKNNRuntime._load_library
  File "rknnlite/api/rknn_runtime.py", line 608, in rknnlite.api.rknn_runtime.RKNNRuntime._get_rknn_api_lib_path
Exception: Can not find dynamic library on RK3588!
Please download the librknnrt.so from https://github.com/airockchip/rknn-toolkit2/tree/master/rknpu2/runtime/\
Linux/librknn_api/aarch64 and move it to directory /usr/lib/


"""
NO_SOC_REASON = "Please specify the target in init_runtime!"
NO_LIBRKNNRT_REASON = ("Can not find dynamic library on RK3588! Please download the librknnrt.so from "
                       "https://github.com/airockchip/rknn-toolkit2/tree/master/rknpu2/runtime/Linux/librknn_api/"
                       "aarch64 and move it to directory /usr/lib/")


def _lines(text: str) -> list[str]:
    return [ln.rstrip() for ln in text.splitlines() if ln.strip()]


def test_library_reason_is_the_exception_it_printed():
    assert library_reason(_lines(REAL_NO_SOC)) == NO_SOC_REASON
    assert library_reason(_lines(REAL_NO_LIBRKNNRT)) == NO_LIBRKNNRT_REASON
    # error lines without a traceback (e.g. load_rknn of a missing file), and nothing at all
    assert library_reason(["W rknn-toolkit-lite2 version: 2.5.0", "E Invalid RKNN model path: /x.rknn"]) == \
        "Invalid RKNN model path: /x.rknn"
    assert library_reason(["W rknn-toolkit-lite2 version: 2.5.0"]) == ""


# The stand-in: rknn_lite.py's public surface as in the 2.5.0 wheel (constants, signatures, return codes),
# printing what the real one printed, the way it prints it: its version line on fd 2, its init_runtime errors
# through the Python logger `acuityLogger`, whose StreamHandler is made at import time and so keeps the
# sys.stderr of that moment (under pytest: pytest's capture, not fd 2; the real wheel's tracebacks escaped
# a fd-only capture exactly so under emulation). QWEN3_TTS_STANDIN_CASE picks the recorded outcome.
STANDIN = '''
import json, logging, os, sys
CALLS = []
OUTPUT = {"no_soc": %r, "no_librknnrt": %r}
# the wheel's import renames logging's levels for the whole process (C/E/W/I/D, standard names dropped)
for _lvl, _name in ((50, "C"), (40, "E"), (30, "W"), (20, "I"), (10, "D")):
    logging.addLevelName(_lvl, _name)
for _name in ("CRITICAL", "FATAL", "ERROR", "WARN", "WARNING", "INFO", "DEBUG", "NOTSET"):
    logging._nameToLevel.pop(_name, None)
_log = logging.getLogger("acuityLogger")
for _h in list(_log.handlers):   # this stand-in is imported afresh per test; the wheel once per process
    _log.removeHandler(_h)
_handler = logging.StreamHandler(sys.stderr)
_handler.setFormatter(logging.Formatter("%%(levelname)s %%(message)s"))
_handler.setLevel(logging.INFO)
_log.addHandler(_handler)
_log.setLevel(logging.DEBUG)


def _log_text(text):
    """One record per `E `/`W ` line, with the unprefixed lines after it (a traceback is one record)."""
    records = []
    for line in text.splitlines():
        if line[:2] in ("E ", "W "):
            records.append([line[0], line[2:]])
        elif records:
            records[-1][1] += "\\n" + line
    for level, msg in records:
        _log.log(logging.ERROR if level == "E" else logging.WARNING, msg)

class RKNNLite:
    NPU_CORE_AUTO = 0
    NPU_CORE_0 = 1
    NPU_CORE_1 = 2
    NPU_CORE_2 = 4
    NPU_CORE_0_1 = 3
    NPU_CORE_0_1_2 = 7
    NPU_CORE_ALL = 0xffff

    def __init__(self, verbose=False, verbose_file=None):
        os.write(2, b"W rknn-toolkit-lite2 version: 2.5.0\\n")   # the library's own logger, on fd 2
        self.rknn_data = None
        CALLS.append(("RKNNLite", verbose))

    def load_rknn(self, path, key_path=None):
        CALLS.append(("load_rknn", path))
        if not os.path.exists(path):
            os.write(2, ("E Invalid RKNN model path: " + path + "\\n").encode())
            return -1
        with open(path, "rb") as f:
            self.rknn_data = f.read()
        return 0

    def init_runtime(self, target=None, device_id=None, async_mode=False, core_mask=NPU_CORE_AUTO):
        CALLS.append(("init_runtime", target, core_mask))
        if self.rknn_data is None:
            os.write(2, b"E Model is not loaded yet, this interface should be called after load_rknn!\\n")
            return -1
        if os.environ.get("QWEN3_TTS_STANDIN_CASE") == "ok" and target is None:
            import onnxruntime
            self.sess = onnxruntime.InferenceSession(self.rknn_data, providers=["CPUExecutionProvider"])
            os.write(1, b"I RKNN: [00:00:00.000] RKNN Runtime Information, librknnrt version: 2.5.0\\n")
            return 0
        if target is not None:   # the real one then looks for an adb/ntb host library
            text = OUTPUT["no_soc"].rsplit("Exception:", 1)[0] + "Exception: Unsupported run platform: Linux aarch64\\n"
        else:
            text = OUTPUT[os.environ.get("QWEN3_TTS_STANDIN_CASE", "no_soc")]
        _log.debug("target set by user is: %%s", target)
        _log_text(text.split("\\n", 1)[1])
        return -1

    def inference(self, inputs, data_type=None, data_format=None, inputs_pass_through=None, get_frame_id=False,
                  reuse_outputs=False):
        CALLS.append(("inference", len(inputs), data_type, data_format))
        names = [i.name for i in self.sess.get_inputs()]
        return self.sess.run(None, dict(zip(names, inputs)))

    def release(self):
        CALLS.append(("release",))
''' % (REAL_NO_SOC, REAL_NO_LIBRKNNRT)


@pytest.fixture()
def standin(tmp_path, monkeypatch):
    """The stand-in `rknnlite` importable for this test only; yields its module (CALLS records the calls)."""
    pkg = tmp_path / "standin" / "rknnlite"
    (pkg / "api").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "api" / "__init__.py").write_text(textwrap.dedent(STANDIN))
    for m in [m for m in sys.modules if m == "rknnlite" or m.startswith("rknnlite.")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.syspath_prepend(str(tmp_path / "standin"))
    names = dict(logging._nameToLevel), dict(logging._levelToName)
    _import_rknnlite()  # first import through the daemon's own path (its import renames logging's levels)
    import rknnlite.api
    assert Path(rknnlite.api.__file__).is_relative_to(tmp_path)
    yield rknnlite.api
    for m in [m for m in sys.modules if m == "rknnlite" or m.startswith("rknnlite.")]:
        del sys.modules[m]
    for table, saved in zip((logging._nameToLevel, logging._levelToName), names):  # whatever the test did
        table.clear()
        table.update(saved)


@pytest.fixture()
def converted(tiny_model, tmp_path) -> Path:
    """A split model dir as scripts/convert_rknn.py writes it, from the tiny vocoder cut by scripts/rknn_graph.py
    (exact in fp32): the real CPU head, and as "vocoder.rknn" the tail's ONNX bytes (the stand-in runs them on
    onnxruntime when asked to succeed)."""
    from scripts import rknn_graph as G

    d = tmp_path / "m"
    d.mkdir()
    for f in ("vocoder.onnx", "vocoder.json"):
        shutil.copy(tiny_model / f, d / f)
    spec = json.loads((d / "vocoder.json").read_text())
    head, tail, info = G.split_vocoder(G.load_model(d / "vocoder.onnx"), spec)
    (d / "vocoder.rknn.head.onnx").write_bytes(head.SerializeToString())
    (d / "vocoder.rknn").write_bytes(tail.SerializeToString())
    (d / "vocoder.rknn.json").write_text(json.dumps({
        "format": RKNN_META_FORMAT, "format_version": RKNN_META_VERSION, "precision": "int16", "chunk": 4,
        "graph": "split", "head_states": info["head_states"], "tail_states": info["tail_states"],
        "head_onnx": "vocoder.rknn.head.onnx", "inputs": [G.LATENT] + ["state_in_" + n for n in info["tail_states"]]}))
    return d


def _records(caplog):
    return [r for r in caplog.records if r.name == "test.vocoder"]


def _assert_level_names_intact():
    """The library's import renamed logging's levels process-wide; _import_rknnlite put them back."""
    assert [logging.getLevelName(v) for v in (10, 20, 30, 40, 50)] == ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
    logging.getLogger("test.levels").setLevel("WARNING")  # raises ValueError while the names are gone


@pytest.mark.skipif(DEVICE_TREE.exists(), reason="a device tree is present: the stand-in's outcome is not this "
                                                 "machine's")
@pytest.mark.parametrize("case, reason", [("no_soc", NO_SOC_REASON), ("no_librknnrt", NO_LIBRKNNRT_REASON)])
@pytest.mark.parametrize("mask, value", [("auto", 0), ("0", 1), ("all", 7)])
def test_fallback_reports_the_library_reason(standin, converted, caplog, capfd, monkeypatch, case, reason, mask,
                                             value):
    monkeypatch.setenv("QWEN3_TTS_STANDIN_CASE", case)
    caplog.set_level(logging.DEBUG, "test.vocoder")
    capfd.readouterr()
    eng = open_vocoder(converted / "vocoder.onnx", None, VocoderBackend(backend="rknn", npu_core_mask=mask),
                       threads=1, log=logging.getLogger("test.vocoder"))
    out, err = capfd.readouterr()
    # nothing of the library's reached the console: its output is folded into our one line
    assert "rknn-toolkit-lite2 version" not in out + err and "Traceback" not in out + err, (out, err)
    assert isinstance(eng, VocoderEngine) and eng.backend == "onnx"
    recs = _records(caplog)
    assert len(recs) == 1 and recs[0].levelno == logging.WARNING, [r.getMessage() for r in recs]
    msg = recs[0].getMessage()
    assert msg.startswith("vocoder backend: onnxruntime (RKNN driver unavailable: rknn-toolkit-lite2 init_runtime "
                          "returned -1: " + reason), msg
    assert f"{DEVICE_TREE} is absent" in msg and "\n" not in msg
    assert eng.fallback_reason.startswith("driver: rknn-toolkit-lite2 init_runtime returned -1: " + reason)
    _assert_level_names_intact()
    # the real API: the board's own NPU is target=None ("NPU inside"), the mask as RKNNLite.NPU_CORE_* bits
    assert standin.CALLS == [("RKNNLite", False), ("load_rknn", str(converted / "vocoder.rknn")),
                             ("init_runtime", None, value), ("release",)]


def test_npu_path_through_the_real_api(standin, converted, caplog, capfd, monkeypatch):
    """init_runtime() 0: the engine runs full chunks through `inference(inputs=..., data_format=...)` (here the
    stand-in runs the tail on onnxruntime, so the audio must equal vocoder.onnx's to float rounding) and the rest on
    onnxruntime; the library's start-up print stays out of the console."""
    monkeypatch.setenv("QWEN3_TTS_STANDIN_CASE", "ok")
    caplog.set_level(logging.INFO, "test.vocoder")
    capfd.readouterr()
    eng = open_vocoder(converted / "vocoder.onnx", None, VocoderBackend(backend="rknn", npu_core_mask="0-1"),
                       threads=1, log=logging.getLogger("test.vocoder"))
    out, err = capfd.readouterr()
    assert "librknnrt" not in out + err
    assert isinstance(eng, RknnVocoderEngine) and eng.graph == "split" and eng.chunk == 4
    assert any("librknnrt version" in ln for ln in eng.runtime_log)
    recs = _records(caplog)
    assert len(recs) == 1 and recs[0].getMessage().startswith("vocoder backend: rknn (")
    codes = np.random.default_rng(3).integers(0, eng.codebook_size, (11, eng.num_quantizers))
    ref = VocoderEngine(converted / "vocoder.onnx", threads=1).new_stream()
    got = eng.new_stream()
    # 1 chunk; 1 chunk + 1 frame on the CPU; 2 frames on the CPU. Head + tail is the same function as
    # vocoder.onnx; onnxruntime fuses the pieces differently, so float rounding differs (measured ~1.4e-5)
    for a, b in ((0, 4), (4, 9), (9, 11)):
        np.testing.assert_allclose(got.decode(codes[a:b]), ref.decode(codes[a:b]), rtol=0, atol=1e-4)
    inf = [c for c in standin.CALLS if c[0] == "inference"]
    assert len(inf) == 2 and all(c[3] == ["nchw"] * c[1] for c in inf)
    assert ("init_runtime", None, 3) in standin.CALLS
    eng.close()
    assert standin.CALLS[-1] == ("release",)


def test_load_failure_is_a_model_error_with_the_library_reason(standin, tmp_path, capfd):
    """load_rknn() of a file that is not there (e.g. removed after the sidecar check): the library's own
    error line, as a "model" fallback; init_runtime is not called."""
    capfd.readouterr()
    with pytest.raises(RknnUnavailable) as e:
        _open_rknnlite(standin.RKNNLite, tmp_path / "gone.rknn", None)
    out, err = capfd.readouterr()
    assert "Invalid RKNN model path" not in out + err
    assert e.value.what == "model"
    assert str(e.value).startswith("rknn-toolkit-lite2 load_rknn returned -1: Invalid RKNN model path: ")
    assert [c[0] for c in standin.CALLS] == ["RKNNLite", "load_rknn", "release"]


def test_console_capture_restores_the_fds(capfd):
    """Around the library only: what is printed afterwards reaches the console again (fd and sys level)."""
    from daemons.engine.console_capture import captured_console

    with captured_console() as c:
        os.write(1, b"fd1\n")
        os.write(2, b"fd2\n")
        print("py-out")
        print("py-err", file=sys.stderr)
    print("after-out")
    os.write(2, b"after-err\n")
    out, err = capfd.readouterr()
    assert sorted(c.lines()) == ["fd1", "fd2", "py-err", "py-out"]
    assert out == "after-out\n" and err == "after-err\n"


# --------------------------------------------------------------- the real wheel (aarch64 root or a board)

def _real_rknnlite() -> bool:
    if platform.machine() != "aarch64":
        return False
    from daemons.engine.vocoder_rknn import RknnUnavailable, _import_rknnlite

    try:  # the daemon's own import path: the real wheel's import renames logging's levels, this undoes it
        _import_rknnlite()
    except RknnUnavailable:
        return False
    return True


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.mark.skipif(not _real_rknnlite(), reason="needs the real rknn-toolkit-lite2 (aarch64 only; "
                                                 "scripts/aarch64_check.sh runs this under emulation)")
@pytest.mark.skipif(DEVICE_TREE.exists(), reason="a real board: the NPU may really work here (scripts/bench.py)")
def test_real_rknnlite_falls_back(tmp_path, caplog, capfd):
    """The real library, a real converted .rknn, no NPU: load_rknn() 0, init_runtime() -1 with the library's
    reason in our one line, its console output captured, and the onnxruntime vocoder's exact audio."""
    src = os.environ.get("QWEN3_TTS_RKNN_TEST_MODEL", "")
    if not src or not (Path(src) / "vocoder.rknn").is_file():
        (pytest.fail if _in_ci() else pytest.skip)(
            "QWEN3_TTS_RKNN_TEST_MODEL: a model dir with a converted vocoder.rknn (scripts/aarch64_check.sh sets it)")
    d = tmp_path / "m"
    shutil.copytree(src, d)
    meta = json.loads((d / "vocoder.rknn.json").read_text())
    assert meta["graph"] == "split" and (d / meta["head_onnx"]).is_file()
    caplog.set_level(logging.INFO, "test.vocoder")
    capfd.readouterr()
    eng = open_vocoder(d / "vocoder.onnx", None, VocoderBackend(backend="auto", npu_core_mask="all"), threads=1,
                       log=logging.getLogger("test.vocoder"))
    out, err = capfd.readouterr()
    recs = _records(caplog)
    print("\nour one line:", recs[0].getMessage() if recs else None)
    assert "Catch exception when init runtime" not in out + err and "rknn-toolkit-lite2 version" not in out + err
    assert len(recs) == 1 and recs[0].levelno == logging.INFO
    assert eng.backend == "onnx" and eng.fallback_reason.startswith(
        f"driver: rknn-toolkit-lite2 init_runtime returned -1: {NO_SOC_REASON}; {DEVICE_TREE} is absent")
    _assert_level_names_intact()
    codes = np.random.default_rng(0).integers(0, eng.codebook_size, (6, eng.num_quantizers))
    np.testing.assert_array_equal(eng.decode_all(codes), VocoderEngine(d / "vocoder.onnx", threads=1).decode_all(codes))
