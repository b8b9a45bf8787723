"""`python -m cusoft check` and `info` run, print their tables and report failure."""

import io
import subprocess
import sys

import numpy as np

from cusoft import _check


def test_check_cpu_passes_and_prints_table():
    buf = io.StringIO()
    assert _check.run(["cpu"], file=buf)
    text = buf.getvalue()
    for fn in ("softmax", "log_softmax", "logsumexp", "softmax_backward",
               "softmax_cross_entropy"):
        assert fn in text
    assert "0 failed" in text


def test_error_metric_catches_nan_and_inf_mismatch():
    assert _check.error([np.nan, 1.0], [0.5, 1.0], np.float64) == np.inf
    assert _check.error([np.inf], [1.0], np.float64) == np.inf
    assert _check.error([-np.inf], [-1e300], np.float16) == 0.0   # overflow in half is right
    assert _check.error([1.0 + 1e-9], [1.0], np.float64) > 0


def test_module_entry_points():
    r = subprocess.run([sys.executable, "-m", "cusoft", "info"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "backends:" in r.stdout
    r = subprocess.run([sys.executable, "-m", "cusoft", "nonsense"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
