"""logsumexp, logsumexp_partial and merge_partials against scipy.special in float64."""

import itertools

import numpy as np
import pytest
import scipy.special as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cusoft
from conftest import assert_close

DTYPES = [np.float16, np.float32, np.float64]


def ref_lse(a, axis=None, b=None, keepdims=False, return_sign=False):
    a64 = np.asarray(a, dtype=np.float64)
    b64 = None if b is None else np.asarray(b, dtype=np.float64)
    with np.errstate(all="ignore"):
        return sp.logsumexp(a64, axis=axis, b=b64, keepdims=keepdims, return_sign=return_sign)


@st.composite
def lse_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=6))
    width = 16 if dtype == np.float16 else 32
    a = draw(hnp.arrays(dtype, shape, elements=st.floats(-50, 50, width=width)))
    b = None
    if draw(st.booleans()):
        # b broadcasts against a: drop leading dims or set some to 1
        bshape = list(shape[draw(st.integers(0, len(shape) - 1)):])
        bshape = [1 if draw(st.booleans()) else s for s in bshape]
        b = draw(hnp.arrays(dtype, tuple(bshape),
                            elements=st.floats(-3, 3, width=width)
                            | st.just(0.0)))
    nd = len(shape)
    axis = draw(st.one_of(
        st.none(), st.integers(-nd, nd - 1),
        st.lists(st.integers(0, nd - 1), min_size=0, max_size=nd, unique=True).map(tuple)))
    return a, b, axis, draw(st.booleans()), draw(st.booleans())


@settings(max_examples=200, deadline=None)
@given(case=lse_case())
def test_matches_scipy(case):
    a, b, axis, keepdims, return_sign = case
    got = cusoft.logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=return_sign)
    ref = ref_lse(a, axis=axis, b=b, keepdims=keepdims, return_sign=return_sign)
    dt = np.result_type(a, b) if b is not None else a.dtype
    if return_sign:
        assert_close(got[0], ref[0], dt, what="value")
        np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(ref[1]))
        got = got[0]
    else:
        assert_close(got, ref, dt)
    assert np.asarray(got).dtype == dt


VALUES = [1.0, -1.0, 0.0, np.inf, -np.inf, np.nan, 1000.0, -40.0]
WEIGHTS = [1.0, -1.0, 0.0, 2.0, 0.5]


@pytest.mark.parametrize("return_sign", [False, True])
def test_special_values_every_pair(return_sign):
    # every (a, b) pair of length 2 over the special values, compared element-wise
    pairs = list(itertools.product(VALUES, repeat=2))
    a = np.array(pairs)
    for wb in itertools.product(WEIGHTS, repeat=2):
        b = np.broadcast_to(np.array(wb), a.shape)
        got = cusoft.logsumexp(a, axis=1, b=b, return_sign=return_sign)
        ref = ref_lse(a, axis=1, b=b, return_sign=return_sign)
        if return_sign:
            assert_close(got[0], ref[0], np.float64, what=f"b={wb}")
            assert_close(got[1], ref[1], np.float64, what=f"sign b={wb}")
        else:
            assert_close(got, ref, np.float64, what=f"b={wb}")
    got = cusoft.logsumexp(a, axis=1)
    assert_close(got, ref_lse(a, axis=1), np.float64)


def test_accurate_small_terms():
    assert cusoft.logsumexp([0.0, -40.0]) == pytest.approx(4.248354255291589e-18, rel=1e-12)
    v = cusoft.logsumexp(np.array([0.0, -20.0], np.float32))
    assert v.dtype == np.float32 and v == pytest.approx(2.0611537e-09, rel=1e-6)


def test_dtype_rules():
    a32 = np.array([1.0, 2.0], np.float32)
    assert cusoft.logsumexp(a32, b=2.0).dtype == np.float32            # weak Python scalar
    assert cusoft.logsumexp(a32, b=np.array([2.0])).dtype == np.float64
    assert cusoft.logsumexp(np.array([1, 2])).dtype == np.float64
    assert cusoft.logsumexp(np.array([True, False])).dtype == np.float64
    assert np.isscalar(cusoft.logsumexp(a32))


def test_b_broadcasts_a():
    got = cusoft.logsumexp(np.zeros(3), b=np.ones((2, 3)), axis=-1)
    np.testing.assert_allclose(got, [np.log(3)] * 2)


def test_empty():
    assert cusoft.logsumexp(np.array([])) == -np.inf
    r, s = cusoft.logsumexp(np.array([]), return_sign=True)
    assert r == -np.inf and s == -1.0
    np.testing.assert_array_equal(cusoft.logsumexp(np.zeros((2, 0)), axis=1), [-np.inf] * 2)
    assert cusoft.logsumexp(np.zeros((0, 3)), axis=1).shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_blocks_and_long_row(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((700, 1500)) * 10).astype(dtype)
    x[3] = -np.inf
    x[7, 2] = np.inf
    for axis in (0, 1, None):
        assert_close(cusoft.logsumexp(x, axis=axis), ref_lse(x, axis=axis), dtype)
    y = (rng.standard_normal(2_000_003) * 30).astype(dtype)
    assert_close(cusoft.logsumexp(y), ref_lse(y), dtype)


def test_partial_and_merge():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 1000)) * 20
    x[1] = -np.inf
    x[2, :500] = -np.inf
    parts = [cusoft.logsumexp_partial(c, axis=1) for c in np.array_split(x, 7, axis=1)]
    m, s = cusoft.merge_partials(*parts)
    with np.errstate(divide="ignore"):
        assert_close(m + np.log(s), ref_lse(x, axis=1), np.float64)
    m1, s1 = cusoft.logsumexp_partial(x, axis=1)
    np.testing.assert_array_equal(m1, m)
    np.testing.assert_allclose(s1, s, rtol=1e-13)
    assert tuple(np.asarray(s)[1:2]) == (1000.0,)       # all -inf: (-inf, n), never NaN
    # order does not matter
    m2, s2 = cusoft.merge_partials(*parts[::-1])
    np.testing.assert_allclose(s2, s, rtol=1e-13)


def test_partial_half_is_float32():
    m, s = cusoft.logsumexp_partial(np.ones((2, 3), np.float16), axis=1)
    assert m.dtype == np.float32 and s.dtype == np.float32
    np.testing.assert_array_equal(s, [3.0, 3.0])


def test_merge_partials_errors():
    with pytest.raises(TypeError):
        cusoft.merge_partials()
    with pytest.raises(TypeError):
        cusoft.merge_partials(np.zeros(2))
