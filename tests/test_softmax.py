"""softmax / log_softmax on the CPU backend against scipy.special in float64."""

import numpy as np
import pytest
import scipy.special as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cusoft
from conftest import assert_close

FUNCS = [("softmax", cusoft.softmax, sp.softmax),
         ("log_softmax", cusoft.log_softmax, sp.log_softmax)]
DTYPES = [np.float16, np.float32, np.float64]


def _ref(ref_fn, x, axis):
    with np.errstate(all="ignore"):
        return ref_fn(np.asarray(x, dtype=np.float64), axis=axis)


@st.composite
def array_and_axis(draw):
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7))
    elems = st.floats(-60, 60, width=16 if dtype == np.float16 else 32)
    x = draw(hnp.arrays(dtype, shape, elements=elems))
    nd = len(shape)
    axis = draw(st.one_of(
        st.none(), st.integers(-nd, nd - 1),
        st.lists(st.integers(0, nd - 1), min_size=0, max_size=nd, unique=True).map(tuple)))
    return x, axis


@pytest.mark.parametrize("name, fn, ref", FUNCS, ids=[f[0] for f in FUNCS])
@settings(max_examples=150, deadline=None)
@given(data=array_and_axis())
def test_matches_scipy(name, fn, ref, data):
    x, axis = data
    x0 = x.copy()
    got = fn(x, axis=axis)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert_close(got, _ref(ref, x, axis), x.dtype, what=f"{name} axis={axis}")
    np.testing.assert_array_equal(x, x0)  # the input is never modified


SPECIAL_ROWS = [
    [1.0, 2.0, 3.0],
    [np.inf, 1.0, 2.0],
    [np.inf, np.inf, 0.0],
    [-np.inf, -np.inf, -np.inf],
    [np.nan, 1.0, 2.0],
    [-np.inf, 0.0, 1.0],
    [1000.0, -1000.0, 0.0],
    [-1000.0, -1000.0, -1000.0],
    [np.inf, -np.inf, np.nan],
    [3.4e38, -3.4e38, 0.0],
]


@pytest.mark.parametrize("name, fn, ref", FUNCS, ids=[f[0] for f in FUNCS])
@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_elementwise(name, fn, ref, dtype):
    x = np.array(SPECIAL_ROWS, dtype=np.float64)
    if dtype == np.float16:
        x = np.where(np.abs(x) > 6e4, np.sign(x) * 6e4, x)
    x = x.astype(dtype)
    for axis in (1, 0):
        got = fn(x, axis=axis)
        assert_close(got, _ref(ref, x, axis), dtype, what=f"{name} axis={axis}")


@pytest.mark.parametrize("name, fn, ref", FUNCS, ids=[f[0] for f in FUNCS])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, axis", [
    ((300, 4099), 1), ((64, 513, 3), 1), ((3, 70000), None), ((2, 5, 7, 11), (1, 3)),
    ((1, 300000), 1), ((17, 9), 0), ((4096, 64), -1),
])
def test_sizes_and_layouts(name, fn, ref, dtype, shape, axis):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 20).astype(dtype)
    x.flat[::97] = -np.inf          # masked entries
    x.flat[5] = 900.0               # an outlier so probabilities are not all tiny
    assert_close(fn(x, axis=axis), _ref(ref, x, axis), dtype, what=f"{name} {shape}")


def test_special_rows_inside_big_blocks():
    # A non-finite row in the middle of a block taken by the fused kernel.
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2000, 700)).astype(np.float32)
    x[3, 5] = np.inf
    x[1500] = -np.inf
    x[1700, 9] = np.nan
    for name, fn, ref in FUNCS:
        assert_close(fn(x, axis=1), _ref(ref, x, 1), np.float32, what=name)


def test_long_single_row_split_path():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(3_000_001) * 30
    for name, fn, ref in FUNCS:
        assert_close(fn(x), _ref(ref, x, None), np.float64, what=name)
    x[17] = np.inf
    for name, fn, ref in FUNCS:
        assert_close(fn(x), _ref(ref, x, None), np.float64, what=name + " +inf")


def test_shift_invariance_and_normalisation():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 33))
    np.testing.assert_allclose(cusoft.softmax(x, axis=1), cusoft.softmax(x + 500.0, axis=1),
                               rtol=1e-12)
    np.testing.assert_allclose(cusoft.softmax(x, axis=1).sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(np.exp(cusoft.log_softmax(x, axis=0)).sum(axis=0), 1.0,
                               rtol=1e-14)


@pytest.mark.parametrize("name, fn, ref", FUNCS, ids=[f[0] for f in FUNCS])
def test_out_argument_and_aliasing(name, fn, ref):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 30)).astype(np.float32)
    expect = _ref(ref, x, 1)
    out = np.empty_like(x)
    assert fn(x, axis=1, out=out) is out
    assert_close(out, expect, np.float32)
    y = x.copy()
    assert fn(y, axis=1, out=y) is y           # in place
    assert_close(y, expect, np.float32)
    out_f = np.empty((30, 40), np.float32).T   # non-contiguous out
    fn(x, axis=1, out=out_f)
    assert_close(out_f, expect, np.float32)


def test_dtype_promotion_like_scipy():
    for dt in (np.int8, np.uint8, np.int16, np.int32, np.int64):
        x = np.array([[1, 0, 3], [2, 2, 2]], dtype=dt)
        for name, fn, ref in FUNCS:
            got = fn(x, axis=1)
            with np.errstate(all="ignore"):
                assert got.dtype == ref(x, axis=1).dtype, (name, dt)
            assert_close(got, _ref(ref, x, 1), got.dtype)
    got = cusoft.softmax(np.array([True, False]))
    assert got.dtype == np.float16


def test_complex_goes_through_scipy():
    x = np.array([1 + 1j, 2.0, -1j])
    np.testing.assert_allclose(cusoft.softmax(x), sp.softmax(x))


def test_scalars_and_empty():
    assert cusoft.softmax(np.float64(3.0)) == 1.0
    assert cusoft.log_softmax(np.array(3.0)) == 0.0
    assert cusoft.softmax([1.0, 2.0]).shape == (2,)
    assert cusoft.softmax(np.zeros((0, 3)), axis=1).shape == (0, 3)
    with pytest.raises(ValueError, match="zero-size"):
        cusoft.softmax(np.zeros((2, 0)), axis=1)


def test_noncontiguous_and_fortran_input():
    rng = np.random.default_rng(6)
    base = rng.standard_normal((30, 40, 5))
    for x in (base[:, ::2, 1], np.asfortranarray(base[:, :, 0]), base.transpose(2, 0, 1)):
        for axis in (0, -1, None, (0, 1)):
            assert_close(cusoft.softmax(x, axis=axis), _ref(sp.softmax, x, axis), np.float64)


def test_method_argument():
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="method must be"):
        cusoft.softmax(x, method="fast")
    with pytest.raises(ValueError, match="RawKernel backend"):
        cusoft.softmax(x, method="3pass")
    np.testing.assert_allclose(cusoft.softmax(x, axis=1, method="fused"), 1 / 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_column_slabs_accurate_with_special_columns(dtype):
    # axis=0 of a big array: the column path (states per row chunk, merged) and, for
    # non-finite columns, the NumPy rules; float32 sums are accumulated in float64 so the
    # error stays far below SciPy's own float32 error here (~7e-6)
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((3000, 300)) * 5).astype(dtype)
    for name, fn, ref in FUNCS:
        assert_close(fn(x, axis=0), _ref(ref, x, 0), dtype, what=name + " finite")
    x[:, 3] = -np.inf
    x[5, 7] = np.inf
    x[9, 8] = np.nan
    x[:, 9] = 1000.0
    for name, fn, ref in FUNCS:
        assert_close(fn(x, axis=0), _ref(ref, x, 0), dtype, what=name + " special")


def test_out_partially_overlapping_the_input():
    a = np.random.default_rng(8).standard_normal(300)
    x = a[0:200].reshape(20, 10)
    expect = sp.softmax(x.copy(), axis=1)
    out = a[50:250].reshape(20, 10)          # overlaps x by 150 elements, shifted
    cusoft.softmax(x, axis=1, out=out)
    assert_close(out, expect, np.float64)
