"""Runs tests/numba_sim in a process of its own with NUMBA_ENABLE_CUDASIM=1.

The simulator must be chosen before numba is first imported, which this process may
already have done; tests/numba_sim is therefore left out of the normal collection
(``--ignore`` in setup.cfg, and its conftest collects nothing without the variable).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_numba_backend_on_the_cuda_simulator():
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "pytest", "tests/numba_sim", "-q", "-o", "addopts=",
           "-p", "no:cacheprovider", "--strict-markers"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"simulator tests failed ({' '.join(cmd)}):\n{out[-20000:]}"
    assert " passed" in out, out[-5000:]
