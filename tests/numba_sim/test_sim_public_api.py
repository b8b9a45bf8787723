"""The public functions with backend="numba", end to end on the simulator."""

from __future__ import annotations

import numpy as np
import scipy.special as sp

import numba_matrix as M


def test_public_functions_with_numba_backend():
    import cusoft

    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, 40)).astype(np.float32)
    b = rng.uniform(-0.1, 1.0, x.shape).astype(np.float32)
    x64, b64 = x.astype(np.float64), b.astype(np.float64)
    M.assert_close(cusoft.softmax(x, axis=1, backend="numba"), sp.softmax(x64, axis=1),
                   np.float32, "softmax")
    M.assert_close(cusoft.log_softmax(x, axis=0, backend="numba"),
                   sp.log_softmax(x64, axis=0), np.float32, "log_softmax axis=0")
    got, sgn = cusoft.logsumexp(x, axis=1, b=b, return_sign=True, backend="numba")
    want, wsgn = sp.logsumexp(x64, axis=1, b=b64, return_sign=True)
    M.assert_close(got, want, np.float32, "logsumexp")
    M.assert_close(sgn, wsgn, np.float32, "logsumexp sign")
