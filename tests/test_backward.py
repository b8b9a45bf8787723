"""Gradients of softmax/log_softmax against finite differences and a float64 formula."""

import numpy as np
import pytest
import scipy.special as sp

import cusoft
from conftest import assert_close


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("axis", [0, 1, -1, None, (0, 2)])
def test_backward_formulas(dtype, axis):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 9, 5))
    dy = rng.standard_normal(x.shape)
    y = sp.softmax(x, axis=axis)
    ly = sp.log_softmax(x, axis=axis)
    red = axis if axis is not None else None
    ref = y * (dy - np.sum(dy * y, axis=red, keepdims=True))
    lref = dy - np.exp(ly) * np.sum(dy, axis=red, keepdims=True)
    got = cusoft.softmax_backward(y.astype(dtype), dy.astype(dtype), axis=axis)
    lgot = cusoft.log_softmax_backward(ly.astype(dtype), dy.astype(dtype), axis=axis)
    assert got.dtype == dtype and lgot.dtype == dtype
    tol_dtype = np.float32 if dtype == np.float16 else dtype
    if dtype == np.float16:
        # inputs rounded to half: compare with the formula on the rounded inputs
        y16, ly16, dy16 = (a.astype(np.float16).astype(np.float64) for a in (y, ly, dy))
        ref = y16 * (dy16 - np.sum(dy16 * y16, axis=red, keepdims=True))
        lref = dy16 - np.exp(ly16) * np.sum(dy16, axis=red, keepdims=True)
        tol_dtype = np.float16
    assert_close(got, ref, tol_dtype)
    assert_close(lgot, lref, tol_dtype)


def test_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6))
    v = rng.standard_normal(x.shape)          # loss = sum(v * softmax(x))
    g = cusoft.softmax_backward(cusoft.softmax(x, axis=1), v, axis=1)
    lg = cusoft.log_softmax_backward(cusoft.log_softmax(x, axis=1), v, axis=1)
    h = 1e-6
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            e = np.zeros_like(x)
            e[i, j] = h
            fd = (np.sum(v * sp.softmax(x + e, axis=1)) - np.sum(v * sp.softmax(x - e, axis=1)))
            lfd = (np.sum(v * sp.log_softmax(x + e, axis=1))
                   - np.sum(v * sp.log_softmax(x - e, axis=1)))
            assert g[i, j] == pytest.approx(fd / (2 * h), abs=1e-7)
            assert lg[i, j] == pytest.approx(lfd / (2 * h), abs=1e-7)


def test_backward_errors():
    with pytest.raises(ValueError, match="shape"):
        cusoft.softmax_backward(np.zeros((2, 3)), np.zeros((3, 2)), axis=1)
    with pytest.raises(TypeError):
        cusoft.softmax_backward(np.zeros(3), np.array(["a", "b", "c"]))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_cpu_fused_rows(dtype, monkeypatch):
    """The CPU path's fused row kernel: rows longer than its chunk, several blocks in
    threads, out aliasing y or dy; log_softmax's gradient of anything but log-probabilities
    (a positive y, a NaN) takes the NumPy rules, with the same values."""
    from cusoft import _cpu, _cpu_kernels

    calls = []
    real = _cpu_kernels.softmax_backward_rows
    monkeypatch.setattr(_cpu_kernels, "softmax_backward_rows",
                        lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_cpu, "_BLOCK_BYTES", 64 * 1024)
    monkeypatch.setattr(_cpu, "_MIN_PARALLEL_BYTES", 0)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 2500)) * 3
    x[4, 9] = -np.inf
    dy = rng.standard_normal(x.shape)
    for log, fn in ((False, cusoft.softmax_backward), (True, cusoft.log_softmax_backward)):
        y = (sp.log_softmax if log else sp.softmax)(x, axis=1)
        yd, dyd = y.astype(dtype), dy.astype(dtype)
        y64, dy64 = yd.astype(np.float64), dyd.astype(np.float64)
        with np.errstate(invalid="ignore"):
            ref = (dy64 - np.exp(y64) * dy64.sum(1, keepdims=True) if log
                   else y64 * (dy64 - (dy64 * y64).sum(1, keepdims=True)))
        tol = np.float16 if dtype == np.float16 else dtype
        calls.clear()
        assert_close(fn(yd, dyd, axis=1), ref, tol, what=f"log={log}")
        assert len(calls) > 1
        for alias in ("y", "dy"):
            a, b = yd.copy(), dyd.copy()
            got = fn(a, b, axis=1, out=a if alias == "y" else b)
            assert_close(got, ref, tol, what=f"log={log} out={alias}")
        if log:   # not log-probabilities: the NumPy rules, the same formula
            for bad in (0.5, np.nan):
                yb = yd.copy()
                yb[7, 3] = bad
                y64b = yb.astype(np.float64)
                with np.errstate(invalid="ignore", over="ignore"):
                    refb = dy64 - np.exp(y64b) * dy64.sum(1, keepdims=True)
                calls.clear()
                assert_close(fn(yb, dyd, axis=1), refb, tol, what=f"y = {bad}")


def test_column_layout_out_aliases_an_input():
    """The column layout writes its blocks in place: out may be y or dy."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 50, 7))
    dy = rng.standard_normal(x.shape)
    for log, fn in ((False, cusoft.softmax_backward), (True, cusoft.log_softmax_backward)):
        y = (sp.log_softmax if log else sp.softmax)(x, axis=1)
        ref = fn(y, dy, axis=1)
        assert_close(ref, dy - np.exp(y) * dy.sum(1, keepdims=True) if log
                     else y * (dy - (dy * y).sum(1, keepdims=True)), np.float64)
        for alias in ("y", "dy"):
            a, b = y.copy(), dy.copy()
            got = fn(a, b, axis=1, out=a if alias == "y" else b)
            np.testing.assert_array_equal(got, ref)
