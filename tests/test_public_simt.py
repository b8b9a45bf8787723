"""The public functions on backend="simt" (the real CUDA C on the CPU) and method="3pass"."""

import numpy as np
import pytest
import scipy.special as sp

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

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


@st.composite
def _case(draw):
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40))
    width = 16 if dtype == np.float16 else 32
    x = draw(hnp.arrays(dtype, shape, elements=st.floats(-60, 60, width=width)
                        | st.sampled_from([-np.inf, 1000.0 if dtype != np.float16 else 6e4])))
    nd = len(shape)
    axis = draw(st.one_of(st.none(), st.integers(-nd, nd - 1)))
    return x, axis


@settings(max_examples=150, deadline=None)
@given(case=_case())
def test_random_shapes_through_the_cuda_c(case):
    # the launch planner meets arbitrary (outer, n, inner) here, not only chosen ones
    x, axis = case
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        for fn, ref in ((cusoft.softmax, sp.softmax), (cusoft.log_softmax, sp.log_softmax),
                        (cusoft.logsumexp, sp.logsumexp)):
            assert_close(fn(x, axis=axis, backend="simt"), ref(x64, axis=axis), x.dtype,
                         what=f"{fn.__name__} {x.shape} axis={axis}")
        # the backward kernels on the same shapes (tame inputs: a softmax output)
        y = sp.softmax(np.nan_to_num(x64, neginf=-5.0) / 50.0, axis=axis)
        dy = np.cos(np.arange(x.size, dtype=np.float64)).reshape(x.shape)
        got = cusoft.softmax_backward(y.astype(x.dtype), dy.astype(x.dtype), axis=axis,
                                      backend="simt")
        yq, dq = y.astype(x.dtype).astype(np.float64), dy.astype(x.dtype).astype(np.float64)
        assert_close(got, yq * (dq - np.sum(dq * yq, axis=axis, keepdims=True)), x.dtype,
                     what=f"softmax_backward {x.shape} axis={axis}")
