"""Bad input gets NumPy-style errors before any work; dispatch and configuration."""

import io

import numpy as np
import pytest
from numpy.exceptions import AxisError

import cusoft

FWD = [cusoft.softmax, cusoft.log_softmax, cusoft.logsumexp, cusoft.logsumexp_partial]


@pytest.mark.parametrize("fn", FWD, ids=lambda f: f.__name__)
def test_bad_arrays(fn):
    with pytest.raises(TypeError, match="not None"):
        fn(None)
    with pytest.raises(TypeError):
        fn("abc")
    with pytest.raises(TypeError, match="dtype"):
        fn(np.array(["a", "b"]))
    with pytest.raises(TypeError, match="dtype"):
        fn(np.array([1.0, None], dtype=object))
    with pytest.raises(ValueError):
        fn([[1.0, 2.0], [3.0]])


@pytest.mark.parametrize("fn", FWD, ids=lambda f: f.__name__)
def test_bad_axes(fn):
    x = np.zeros((2, 3))
    with pytest.raises(AxisError, match="axis 2 is out of bounds for array of dimension 2"):
        fn(x, axis=2)
    with pytest.raises(AxisError):
        fn(x, axis=-3)
    with pytest.raises(AxisError):
        fn(x, axis=(0, 5))
    with pytest.raises(ValueError, match="duplicate"):
        fn(x, axis=(1, -1))
    with pytest.raises(TypeError, match="axis must be an integer"):
        fn(x, axis=1.0)


def test_bad_out():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        cusoft.softmax(x, axis=1, out=np.empty((3, 2), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        cusoft.softmax(x, axis=1, out=np.empty((2, 3), np.float64))
    with pytest.raises(TypeError, match="same type"):
        cusoft.softmax(x, axis=1, out=[[0.0] * 3] * 2)


def test_bad_b():
    with pytest.raises(ValueError, match="broadcast"):
        cusoft.logsumexp(np.zeros((2, 3)), b=np.ones(4), axis=1)
    with pytest.raises(TypeError, match="dtype"):
        cusoft.logsumexp(np.zeros(3), b=np.array(["x", "y", "z"]))


def test_errors_leave_input_alone():
    x = np.arange(6.0).reshape(2, 3)
    x0 = x.copy()
    with pytest.raises(TypeError):
        cusoft.softmax(x, axis=1, out=np.empty((2, 3), np.float32))
    np.testing.assert_array_equal(x, x0)


def test_backend_selection_and_errors():
    x = np.random.default_rng(0).standard_normal((3, 4))
    with cusoft.use_backend("cpu"):
        a = cusoft.softmax(x, axis=1)
    np.testing.assert_allclose(a, cusoft.softmax(x, axis=1, backend="cpu"))
    with pytest.raises(ValueError, match="unknown backend"):
        cusoft.softmax(x, backend="tpu")
    with pytest.raises(ValueError, match="unknown backend"):
        with cusoft.use_backend("nope"):
            pass


def test_unusable_backend_names_what_is_missing():
    from cusoft import _dispatch

    ok, why = _dispatch.probe("cupy")
    if ok:
        pytest.skip("cupy is usable on this machine")
    with pytest.raises(cusoft.BackendError, match="cupy"):
        cusoft.softmax(np.zeros(3), backend="cupy")


def test_show_config_lists_every_backend():
    buf = io.StringIO()
    cusoft.show_config(file=buf)
    text = buf.getvalue()
    for name in ("cpu", "cupy", "numba", "simt", "dask", "numpy", "scipy"):
        assert name in text


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
@pytest.mark.parametrize("axis", [0, -1, None, ()])
@pytest.mark.parametrize("x", [np.array(3.0), np.array([[1.0, np.inf], [-np.inf, 2.0]])],
                         ids=["0-d", "2-d"])
def test_scalar_and_empty_tuple_axes_like_scipy(name, axis, x):
    # NumPy reductions accept axis 0/-1 on 0-d arrays and axis=() anywhere; SciPy inherits
    # both, and so must we (same value, same type: scalar or array)
    import scipy.special as sp

    with np.errstate(all="ignore"):
        ref = getattr(sp, name)(x, axis=axis)
        got = getattr(cusoft, name)(x, axis=axis)
    assert type(got) is type(ref)
    np.testing.assert_array_equal(got, ref)
