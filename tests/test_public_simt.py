"""The public functions on backend="simt" (the real CUDA C on the CPU) and method="3pass"."""

import numpy as np
import pytest
import scipy.special as sp

import cusoft
from conftest import assert_close, simt_reason

pytestmark = pytest.mark.skipif(simt_reason() is not None, reason=f"simt harness: {simt_reason()}")


@pytest.mark.parametrize("method", [None, "3pass", "warp", "block", "online", "split"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_softmax_methods(method, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 301)) * 8).astype(dtype)
    x[1] = -np.inf
    x[2, 7] = np.nan
    x[3, 9] = np.inf
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        for fn, ref in ((cusoft.softmax, sp.softmax), (cusoft.log_softmax, sp.log_softmax)):
            got = fn(x, axis=1, backend="simt", method=method)
            assert got.dtype == dtype
            assert_close(got, ref(x64, axis=1), dtype, what=f"{fn.__name__} {method}")


@pytest.mark.parametrize("axis", [0, (0, 2), None])
def test_public_axes_and_logsumexp(axis):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 7, 5)) * 30
    b = rng.choice([-1.0, 0.0, 2.0], size=x.shape)
    assert_close(cusoft.softmax(x, axis=axis, backend="simt"), sp.softmax(x, axis=axis),
                 np.float64)
    got = cusoft.logsumexp(x, axis=axis, b=b, return_sign=True, backend="simt")
    ref = sp.logsumexp(x, axis=axis, b=b, return_sign=True)
    assert_close(got[0], ref[0], np.float64)
    assert_close(got[1], ref[1], np.float64)
    m, s = cusoft.logsumexp_partial(x, axis=axis, backend="simt")
    assert_close(m + np.log(s), sp.logsumexp(x, axis=axis), np.float64)
