"""The layering contract (.importlinter): client and gateway -> daemon shells -> pure-compute engines,
and no sockets, systemd or shell module inside daemons/engine. A wrong import fails here."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


def lint(root: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(exe), "--config", str(root / ".importlinter"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(root), "PATH": ""})


def test_layers_contract_is_kept():
    r = lint(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 kept, 0 broken" in r.stdout


def test_a_wrong_import_breaks_it(tmp_path):
    """The contract can fail: a copy of the tree where an engine imports zmq and a shell module."""
    for name in ("daemons", "client"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path)
    p = tmp_path / "daemons" / "engine" / "sampling.py"
    p.write_text(p.read_text() + "\nimport zmq  # noqa\nfrom .. import protocol  # noqa\n")
    r = lint(tmp_path)
    assert r.returncode != 0
    assert "engines use no sockets" in r.stdout and "BROKEN" in r.stdout
    assert "daemons.engine.sampling -> zmq" in r.stdout
    assert "daemons.engine.sampling -> daemons.protocol" in r.stdout
