"""The RawKernel backend on CuPy arrays, against SciPy (float64) and cupyx.scipy.special.

Runs only where CuPy sees a GPU (``pytest -m gpu``; ``bench/gpu_check.sh`` runs it); elsewhere
every test is skipped with the reason.  The same matrix runs on the CPU through the simt
emulator in tests/test_kernels_simt.py and tests/test_public_simt.py.
"""

import numpy as np
import pytest
import scipy.special as sp

import cusoft
from conftest import assert_close

pytestmark = pytest.mark.gpu

DTYPES = [np.float16, np.float32, np.float64]
# shapes reaching warp (short rows), block (medium), online/split (long), column layout
SHAPES = [((1000, 37), 1), ((300, 1500), 1), ((64, 12000), 1), ((3, 300001), 1),
          ((1, 2_000_003), None), ((40, 33, 17), 1), ((5000, 3), 0), ((6, 7, 8, 9), (1, 3))]


def _adversarial(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 8
    flat = x.reshape(-1)
    flat[::97] = -np.inf
    flat[5] = 1000.0 if dtype != np.float16 else 6e4
    return x.astype(dtype)


def _cp():
    import cupy

    return cupy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", SHAPES)
def test_forward_family_matches_scipy_and_cupyx(shape, axis, dtype):
    cp = _cp()
    import cupyx.scipy.special as cxs

    x = _adversarial(shape, dtype)
    xd = cp.asarray(x)
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        for fn, ref, peer in ((cusoft.softmax, sp.softmax, cxs.softmax),
                              (cusoft.log_softmax, sp.log_softmax, cxs.log_softmax)):
            got = fn(xd, axis=axis)
            assert isinstance(got, cp.ndarray) and got.dtype == dtype
            assert_close(cp.asnumpy(got), ref(x64, axis=axis), dtype, what=fn.__name__)
            if dtype != np.float16:
                # cupyx computes in the input dtype: agree within its own error
                other = cp.asnumpy(peer(xd, axis=axis)).astype(np.float64)
                fin = np.isfinite(other)
                # log_softmax at a row's dominant max is -log(s) with s = 1 + tiny: a
                # one-ulp difference in s (another summation order) is a large relative
                # error there, so its agreement is measured against max(1, |value|)
                tol = 1e-4 if dtype == np.float32 else 1e-12
                np.testing.assert_allclose(cp.asnumpy(got)[fin], other[fin], rtol=tol,
                                           atol=tol if fn is cusoft.log_softmax else 1e-30)
        got = cusoft.logsumexp(xd, axis=axis)
        assert_close(cp.asnumpy(got), sp.logsumexp(x64, axis=axis), dtype, what="logsumexp")


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_rows_every_variant(dtype):
    cp = _cp()
    rows = np.array([[1.0, 2.0, 3.0], [np.inf, 1.0, 2.0], [-np.inf] * 3, [np.nan, 1.0, 2.0],
                     [-np.inf, 0.0, 1.0], [1000.0, -1000.0, 0.0]])
    for n in (3, 700, 5000, 40000):
        x = np.tile(rows, (1, -(-n // 3)))[:, :n]
        if dtype == np.float16:
            x = np.clip(x, -6e4, 6e4)
        x = x.astype(dtype)
        x64 = x.astype(np.float64)
        with np.errstate(all="ignore"):
            for method in (None, "3pass"):
                for fn, ref in ((cusoft.softmax, sp.softmax), (cusoft.log_softmax,
                                                                 sp.log_softmax)):
                    got = cp.asnumpy(fn(cp.asarray(x), axis=1, method=method))
                    assert_close(got, ref(x64, axis=1), dtype, what=f"{fn.__name__} n={n}")
            r, s = cusoft.logsumexp(cp.asarray(x), axis=1, b=cp.asarray(np.ones_like(x) * -1),
                                    return_sign=True)
            rr, ss = sp.logsumexp(x64, axis=1, b=-np.ones_like(x64), return_sign=True)
            assert_close(cp.asnumpy(r), rr, dtype)
            assert_close(cp.asnumpy(s), ss, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_and_cross_entropy(dtype):
    cp = _cp()
    rng = np.random.default_rng(3)
    for shape, axis in ((500, 37), 1), ((50, 3000), 1), ((30, 20, 7), 1):
        z = rng.standard_normal(shape)
        y, ly = sp.softmax(z, axis=axis), sp.log_softmax(z, axis=axis)
        dy = rng.standard_normal(shape)
        for log, yy, fn in ((False, y, cusoft.softmax_backward),
                            (True, ly, cusoft.log_softmax_backward)):
            yq, dq = yy.astype(dtype), dy.astype(dtype)
            y64, d64 = yq.astype(np.float64), dq.astype(np.float64)
            ref = (d64 - np.exp(y64) * d64.sum(axis=axis, keepdims=True) if log
                   else y64 * (d64 - np.sum(d64 * y64, axis=axis, keepdims=True)))
            got = fn(cp.asarray(yq), cp.asarray(dq), axis=axis)
            assert_close(cp.asnumpy(got), ref, dtype)
    x = (rng.standard_normal((257, 1000)) * 3).astype(dtype)
    lab = rng.integers(0, 1000, 257)
    lab[:3] = -100
    w = rng.random(1000).astype(dtype)
    for kw in (dict(), dict(ignore_index=-100, label_smoothing=0.1, weight=w)):
        loss, grad = cusoft.softmax_cross_entropy(cp.asarray(x), cp.asarray(lab),
                                                  return_grad=True,
                                                  **{k: (cp.asarray(v) if k == "weight" else v)
                                                     for k, v in kw.items()})
        loss_c, grad_c = cusoft.softmax_cross_entropy(x.astype(np.float64), lab,
                                                      return_grad=True, **kw)
        assert_close(cp.asnumpy(loss), loss_c, dtype)
        assert_close(cp.asnumpy(grad), grad_c, dtype)


def test_out_in_place_stream_and_graph_capture():
    cp = _cp()
    x = cp.asarray(_adversarial((512, 1024), np.float32))
    ref = sp.softmax(cp.asnumpy(x).astype(np.float64), axis=1)
    y = x.copy()
    assert cusoft.softmax(y, axis=1, out=y) is y
    assert_close(cp.asnumpy(y), ref, np.float32)
    # kernels go to the current stream and never synchronise the host: capturable
    cusoft.softmax(x, axis=1)                       # compile outside the capture
    out = cp.empty_like(x)
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        s.begin_capture()
        cusoft.softmax(x, axis=1, out=out)
        g = s.end_capture()
    out.fill(0)
    g.launch(stream=s)
    s.synchronize()
    assert_close(cp.asnumpy(out), ref, np.float32)


def test_every_public_function_is_graph_capturable():
    """Each public call on CuPy arrays launches on the current stream and never waits on the
    GPU: a D2H copy or a synchronisation inside a capture raises.  The graph, launched
    after NaN-filling the outputs the capture allocated, rewrites them bit-identically.
    Each call runs once on the capturing stream first: it compiles there, and CuPy's
    per-stream pool then holds blocks for the capture's allocations (no cudaMalloc in it)."""
    cp = _cp()
    rng = np.random.default_rng(3)
    x = cp.asarray(_adversarial((300, 1500), np.float32))
    big = cp.asarray(rng.standard_normal(3_000_001).astype(np.float32))   # split rows
    col = cp.asarray(rng.standard_normal((40, 33, 17)).astype(np.float32))
    bb = cp.asarray(rng.uniform(-1, 1, 1500).astype(np.float32))
    y = cusoft.softmax(x, axis=1)
    dy = cp.asarray(rng.standard_normal((300, 1500)).astype(np.float32))
    lab = cp.asarray(rng.integers(0, 1500, 300))
    lab[::7] = -100
    w = cp.asarray(rng.uniform(0.5, 2, 1500).astype(np.float32))
    q = cp.asarray(rng.standard_normal((2, 4, 100, 64)).astype(np.float16))
    kv = cp.asarray(rng.standard_normal((2, 2, 130, 64)).astype(np.float16))
    keep = cp.asarray(rng.random((100, 130)) < 0.9)
    calls = {
        "softmax": lambda: cusoft.softmax(x, axis=1),
        "log_softmax col": lambda: cusoft.log_softmax(col, axis=1),
        "softmax split": lambda: cusoft.softmax(big),
        "logsumexp b sign": lambda: cusoft.logsumexp(x, axis=1, b=bb, return_sign=True),
        "logsumexp split": lambda: cusoft.logsumexp(big),
        "partial + merge": lambda: cusoft.merge_partials(cusoft.logsumexp_partial(x[:150]),
                                                         cusoft.logsumexp_partial(x[150:])),
        "softmax_backward": lambda: cusoft.softmax_backward(y, dy, axis=1),
        "log_softmax_backward": lambda: cusoft.log_softmax_backward(y, dy, axis=1),
        "xent mean weighted": lambda: cusoft.softmax_cross_entropy(
            x, lab, ignore_index=-100, weight=w, label_smoothing=0.1, return_grad=True),
        "xent probs": lambda: cusoft.softmax_cross_entropy(x, y, return_grad=True),
        "xent sum split": lambda: cusoft.softmax_cross_entropy(big.reshape(1, -1),
                                                               cp.zeros(1, cp.int64),
                                                               reduction="sum"),
        "attention": lambda: cusoft.attention(q, kv, kv, causal=True, mask=keep,
                                              return_lse=True),
    }
    s = cp.cuda.Stream(non_blocking=True)
    for name, fn in calls.items():
        with s:
            res = fn()
            ref = [cp.asnumpy(a) for a in (res if isinstance(res, tuple) else (res,))]
            del res
            s.begin_capture()
            try:
                res = fn()
            finally:
                g = s.end_capture()
        got = res if isinstance(res, tuple) else (res,)
        for a in got:
            a.fill(np.nan)
        cp.cuda.Device().synchronize()
        g.launch(stream=s)
        s.synchronize()
        for a, r in zip(got, ref):
            np.testing.assert_array_equal(cp.asnumpy(a), r, err_msg=name)


def test_out_of_range_label_under_capture_is_a_nan_row():
    """Outside a capture an out-of-range label raises; inside one the check would wait on
    the GPU, so the kernels' rule applies: that row's loss and gradient are NaN."""
    cp = _cp()
    x = cp.asarray(np.random.default_rng(4).standard_normal((6, 50)).astype(np.float32))
    lab = cp.asarray([1, 2, 50, 3, -1, 4])
    with pytest.raises(ValueError, match="out of bounds"):
        cusoft.softmax_cross_entropy(x, lab)
    good = cp.asarray([1, 2, 0, 3, 0, 4])
    s = cp.cuda.Stream(non_blocking=True)
    with s:
        ok = [cp.asnumpy(a) for a in cusoft.softmax_cross_entropy(x, good, reduction="none",
                                                                  return_grad=True)]
        s.begin_capture()
        res = cusoft.softmax_cross_entropy(x, lab, reduction="none", return_grad=True)
        g = s.end_capture()
    g.launch(stream=s)
    s.synchronize()
    loss, grad = cp.asnumpy(res[0]), cp.asnumpy(res[1])
    bad = np.array([False, False, True, False, True, False])
    assert np.isnan(loss[bad]).all() and np.isnan(grad[bad]).all()
    np.testing.assert_array_equal(loss[~bad], ok[0][~bad])
    np.testing.assert_array_equal(grad[~bad], ok[1][~bad])


def test_arrays_on_another_device_run_there():
    """With device 0 current, arrays of device 1 are computed on device 1 (outputs there
    too); arrays of two devices in one call raise ValueError."""
    cp = _cp()
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs (this machine has one)")
    x0 = _adversarial((64, 300), np.float32)
    with cp.cuda.Device(1):
        x = cp.asarray(x0)
        lab = cp.asarray(np.arange(64) % 300)
    with cp.cuda.Device(0):
        y = cusoft.softmax(x, axis=1)
        loss = cusoft.softmax_cross_entropy(x, lab)
        assert y.device.id == 1 and loss.device.id == 1
        assert cp.cuda.runtime.getDevice() == 0
        assert_close(cp.asnumpy(y), sp.softmax(x0.astype(np.float64), axis=1), np.float32)
        with pytest.raises(ValueError, match="different devices"):
            cusoft.softmax_cross_entropy(x, cp.asarray(np.arange(64) % 300))


@pytest.mark.slow
def test_more_than_2_31_elements():
    cp = _cp()
    free, _ = cp.cuda.runtime.memGetInfo()
    n = (1 << 31) + 4099
    if free < 3 * n * 2 + (1 << 30):
        pytest.skip(f"needs {3 * n * 2 / 2**30:.1f} GiB of GPU memory, {free / 2**30:.1f} free")
    x = cp.zeros(n, cp.float16)
    # 4096 logits at 13 carry about half the mass, so each has p ~ 1.1e-4 (a normal float16)
    # and the 2^31 zeros before them must all be counted; p of a zero (2.5e-10) is below
    # float16's smallest subnormal and is stored as 0
    k, c = 4096, 13.0
    x[-k:] = c
    den = k * np.exp(c) + (n - k)
    got = cusoft.softmax(x)                     # one row over 2^31 elements: split path
    assert float(got[-1]) == pytest.approx(np.exp(c) / den, rel=2e-3)
    assert float(got[-k]) == pytest.approx(np.exp(c) / den, rel=2e-3)
    assert float(got[12345]) == 0.0
    del got
    assert float(cusoft.logsumexp(x)) == pytest.approx(np.log(den), rel=2e-3)
    rows = x[: (n // 4096) * 4096].reshape(-1, 4096)      # still over 2^31 elements
    lse = cusoft.logsumexp(rows, axis=1)
    # the last row starts at 2^31 and holds the first 4093 logits at c
    last = np.log((4096 - 3) * np.exp(c) + 3)
    assert float(lse[-1]) == pytest.approx(last, rel=2e-3)
    assert np.allclose(cp.asnumpy(lse[:-1]).astype(np.float64), np.log(4096), rtol=2e-3)
