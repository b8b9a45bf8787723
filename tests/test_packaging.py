"""The wheel ships kernels_cu/ and the simt harness as package data and imports outside
the source tree."""

import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_wheel_contains_sources_and_imports(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path), ROOT], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = [p for p in os.listdir(tmp_path) if p.endswith(".whl")]
    names = zipfile.ZipFile(tmp_path / whl).namelist()
    assert "cusoft/kernels_cu/softmax.cu" in names
    assert "cusoft/kernels_cu/common.cuh" in names
    assert any(n.startswith("cusoft/simt/") and n.endswith(".h") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(tmp_path / whl).extractall(site)
    code = ("import cusoft, importlib.resources as r, numpy as np;"
            "assert 'site' in cusoft.__file__, cusoft.__file__;"
            "src = r.files('cusoft.kernels_cu').joinpath('softmax.cu').read_text();"
            "assert '__global__' in src;"
            "print(cusoft.softmax(np.arange(3.0)))")
    env = dict(os.environ, PYTHONPATH=str(site))
    r = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
