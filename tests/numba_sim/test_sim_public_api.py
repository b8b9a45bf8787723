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


def test_every_public_function_on_device_arrays():
    # CAI/device-array input picks the numba backend by itself and returns a device array
    from numba import cuda

    import cusoft

    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 33))
    xd = cuda.to_device(x)
    from cusoft._numba.arrays import to_host

    # (the simulator's scratch arrays are NumPy arrays; on a GPU they are device arrays)
    M.assert_close(to_host(cusoft.softmax(xd, axis=1)), sp.softmax(x, axis=1), np.float64,
                   "softmax dev")
    M.assert_close(to_host(cusoft.logsumexp(xd, axis=0)), sp.logsumexp(x, axis=0),
                   np.float64, "logsumexp dev")
    m, s = cusoft.logsumexp_partial(x, axis=1, backend="numba")
    M.assert_close(np.asarray(m) + np.log(np.asarray(s)), sp.logsumexp(x, axis=1),
                   np.float64, "partial")
    y = sp.softmax(x, axis=1)
    dy = rng.standard_normal(x.shape)
    ref = y * (dy - np.sum(dy * y, axis=1, keepdims=True))
    M.assert_close(cusoft.softmax_backward(y, dy, axis=1, backend="numba"), ref, np.float64,
                   "softmax_backward")
    ly = sp.log_softmax(x, axis=1)
    lref = dy - np.exp(ly) * np.sum(dy, axis=1, keepdims=True)
    M.assert_close(cusoft.log_softmax_backward(ly, dy, axis=1, backend="numba"), lref,
                   np.float64, "log_softmax_backward")
    lab = rng.integers(0, 33, 4)
    loss, grad = cusoft.softmax_cross_entropy(x, lab, backend="numba", return_grad=True)
    loss_c, grad_c = cusoft.softmax_cross_entropy(x, lab, backend="cpu", return_grad=True)
    M.assert_close(np.asarray(loss), np.asarray(loss_c), np.float64, "xent loss")
    M.assert_close(grad, grad_c, np.float64, "xent grad")
    # ignored rows: gradient exactly 0, even with NaN/inf logits or nothing to average
    xs = x.copy()
    xs[1, 2], xs[3, 0] = np.nan, np.inf
    for lab_i in (np.full(4, 7), np.array([0, 7, 5, 7])):
        loss, grad = cusoft.softmax_cross_entropy(xs, lab_i, ignore_index=7, backend="numba",
                                                  return_grad=True)
        assert np.all(grad[lab_i == 7] == 0), grad
        assert np.isnan(loss) == bool(np.all(lab_i == 7))
    # integer input on the device path promotes like SciPy
    xi = rng.integers(-5, 5, (3, 7))
    M.assert_close(cusoft.softmax(xi, axis=1, backend="numba"),
                   sp.softmax(xi.astype(np.float64), axis=1), np.float64, "int input")
