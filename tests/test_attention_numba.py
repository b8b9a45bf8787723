"""The Numba-CUDA twin of the attention kernel (cusoft/_numba/attention.py).

Without a GPU it runs on Numba's CUDA simulator, which must be chosen before numba is first
imported, so the cases run in a process of their own with NUMBA_ENABLE_CUDASIM=1.  Same
oracle and bound as tests/test_attention.py, tiny sizes (the simulator runs every CUDA thread
as a Python thread), every head-dim bucket and dtype.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import numpy as np
    from test_attention import check, make
    from cusoft._attention import attention, merge_attention

    rng = np.random.default_rng(40)
    cases = [
        ((1, 2, 9, 19), (1, 1, 11, 19), (1, 1, 11, 5)),
        ((2, 1, 5, 40), (2, 1, 7, 40), (2, 1, 7, 40)),
        ((1, 1, 3, 65), (1, 1, 20, 65), (1, 1, 20, 65)),
        ((1, 1, 2, 130), (1, 1, 9, 130), (1, 1, 9, 256)),
    ]
    n = 0
    for dt in (np.float32, np.float64, np.float16):
        for shapes in cases:
            q, k, v = make(*shapes, dt, rng)
            Lq, Lk = q.shape[-2], k.shape[-2]
            mask = rng.random((Lq, Lk)) > 0.3
            mask[0] = False
            out, lse = check(q, k, v, backend="numba", causal=True, mask=mask,
                             bias=rng.standard_normal((q.shape[-3], 1, Lk)))
            assert (out[..., 0, :] == 0).all() and (lse[..., 0] == -np.inf).all()
            n += 1
    q, k, v = make((1, 2, 6, 8), (1, 2, 10, 8), (1, 2, 10, 8), np.float32, rng)
    check(q, k, v, backend="numba", method="naive")
    check(q[:, :, ::2], k, v, backend="numba")          # non-contiguous q
    check(q, k[:, :, :0], v[:, :, :0], backend="numba")  # no keys
    full = attention(q, k, v, return_lse=True, backend="numba")
    parts = [attention(q, k[:, :, s], v[:, :, s], return_lse=True, backend="numba")
             for s in (slice(0, 4), slice(4, 10))]
    mo, ml = merge_attention(*parts)
    assert np.abs(mo - full[0]).max() < 1e-5 and np.abs(ml - full[1]).max() < 1e-5
    kn = k.copy()
    kn[0, 1, 7, 2] = np.nan  # causal: rows 3.. of head 1 see key 7 (offset 4)
    out, lse = attention(q, kn, v, causal=True, return_lse=True, backend="numba")
    clean = attention(q, k, v, causal=True, return_lse=True, backend="numba")
    bad = np.zeros(lse.shape, bool)
    bad[0, 1, 3:] = True
    assert np.isnan(out[bad]).all() and np.isnan(lse[bad]).all()
    assert np.array_equal(out[~bad], clean[0][~bad]) and np.array_equal(lse[~bad], clean[1][~bad])
    print("numba attention cases passed:", n + 5)
""")


@pytest.mark.slow
def test_numba_twin_on_the_cuda_simulator():
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), str(ROOT / "tests"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-20000:]
    assert "cases passed" in out, out[-5000:]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numba_twin_on_gpu(dtype):
    from numba import cuda

    from test_attention import FLOOR, err, make, reference

    from cusoft._attention import attention

    rng = np.random.default_rng(41)
    q, k, v = make((2, 4, 70, 64), (2, 2, 90, 64), (2, 2, 90, 64), dtype, rng)
    for causal in (False, True):
        out, lse = attention(cuda.to_device(q), cuda.to_device(k), cuda.to_device(v),
                             causal=causal, return_lse=True)
        ro, rl = reference(q, k, v, causal=causal)
        lo, _ = reference(q, k, v, causal=causal, dtype=dtype)
        assert err(out.copy_to_host(), ro) <= FLOOR[np.dtype(dtype)] + 2 * err(lo, ro)
