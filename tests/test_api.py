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


# -- which GPU a call runs on ---------------------------------------------------------------

_ARRAY_FUNCTIONS = ["attention", "log_softmax", "log_softmax_backward", "logsumexp",
                    "logsumexp_partial", "merge_attention", "merge_partials", "softmax",
                    "softmax_backward", "softmax_cross_entropy"]


def test_every_array_function_runs_on_its_inputs_device():
    assert set(_ARRAY_FUNCTIONS) == {n for n in cusoft.__all__ if n[0].islower()} - {
        "precompile", "show_config", "use_backend"}
    for name in _ARRAY_FUNCTIONS:
        fn = getattr(cusoft, name)
        assert fn.__wrapped__.__name__ == name, name   # the public name and signature stay


class _FakeDevice:
    def __init__(self, i):
        self.id = i


class _FakeDeviceContext:
    """``with`` makes device i current in ``state`` (and records that it was entered)."""

    def __init__(self, state, i):
        self.state, self.i = state, i

    def __enter__(self):
        self.state["entered"].append(self.i)
        self.prev, self.state["current"] = self.state["current"], self.i

    def __exit__(self, *exc):
        self.state["current"] = self.prev


class _FakeCupyArray:
    """Enough of a cupy.ndarray for the device rule: its module and ``.device``."""
    __module__ = "cupy._core.core"
    shape = (2,)

    def __init__(self, dev):
        self.device = _FakeDevice(dev)


def test_device_rule_switches_to_the_arrays_device(monkeypatch):
    cupy = pytest.importorskip("cupy")
    from cusoft import _dispatch

    state = {"current": 0, "entered": []}
    monkeypatch.setattr(cupy.cuda.runtime, "getDevice", lambda: state["current"])
    monkeypatch.setattr(cupy.cuda, "Device", lambda i: _FakeDeviceContext(state, i))
    seen = []

    @_dispatch.on_input_device
    def f(*args, **kwargs):
        seen.append(state["current"])
        return "done"

    a1, b1, a0 = _FakeCupyArray(1), _FakeCupyArray(1), _FakeCupyArray(0)
    assert f(a1, mask=b1) == "done" and seen == [1] and state["current"] == 0
    assert f((a1, b1), (b1, a1)) == "done" and seen[-1] == 1       # merge-style pairs
    assert f(a0, np.zeros(3)) == "done" and seen[-1] == 0
    assert state["entered"] == [1, 1]                # no switch when already there
    assert f(np.zeros(3), out=None) == "done"        # no CuPy array: passes through
    with pytest.raises(ValueError, match=r"different devices \[0, 1\]"):
        f(a0, k=a1)
    with pytest.raises(ValueError, match="different devices"):
        f((a0, a1))
    assert len(seen) == 4


class _FakeCaiArray:
    """A non-CuPy ``__cuda_array_interface__`` array (as a PyTorch CUDA tensor is)."""
    shape = (2,)

    def __init__(self, dev):
        self.dev = dev
        self.__cuda_array_interface__ = {"data": (4096 * (dev + 1), False)}


def test_device_rule_for_numba_arrays(monkeypatch):
    from cusoft import _dispatch
    from cusoft._numba import arrays

    state = {"current": 0, "entered": []}

    class FakeCuda:
        gpus = [_FakeDeviceContext(state, 0), _FakeDeviceContext(state, 1)]

        @staticmethod
        def get_current_device():
            return _FakeDevice(state["current"])

    monkeypatch.setattr(arrays, "simulator_active", lambda: False)
    monkeypatch.setattr(arrays, "_cuda", lambda: FakeCuda)
    monkeypatch.setattr(arrays, "_pointer_device", lambda a: a.dev)
    seen = []

    @_dispatch.on_input_device
    def f(*args, **kwargs):
        seen.append(state["current"])

    f(_FakeCaiArray(1), bias=_FakeCaiArray(1))
    f(_FakeCaiArray(0))
    assert seen == [1, 0] and state["entered"] == [1] and state["current"] == 0
    with pytest.raises(ValueError, match=r"different GPUs \[0, 1\]"):
        f(_FakeCaiArray(0), _FakeCaiArray(1))
    FakeCuda.gpus = FakeCuda.gpus[:1]   # one GPU: nothing is queried or switched
    monkeypatch.setattr(arrays, "_pointer_device", lambda a: 1 / 0)
    f(_FakeCaiArray(1))
    assert seen == [1, 0, 0]
