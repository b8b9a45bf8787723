"""The validation matrix of the Numba backend, shared by the simulator and the GPU tests.

Each case builds float64 inputs, rounds them to the dtype under test, runs the backend and
compares with SciPy (or ``cusoft._numerics`` where SciPy has no such function) evaluated in
float64 on the rounded inputs.  ``to_dev``/``from_dev`` move arrays to the backend's array
kind (NumPy under the simulator, Numba device arrays on a GPU).
"""

from __future__ import annotations

import numpy as np
import scipy.special as sp

from cusoft import _numerics as ref
from cusoft._numba._launch import launch_override

DTYPES = (np.float16, np.float32, np.float64)
#: max |got - ref| / max(1, |ref|) per dtype (outputs are rounded to the dtype)
TOL = {np.dtype(np.float16): 4e-3, np.dtype(np.float32): 4e-6, np.dtype(np.float64): 1e-12}

#: (variant, (outer, n, inner)): every variant at a small shape with an odd length
SHAPES = {
    "warp": (11, 37, 1),     # 3 blocks of 2 warps, a partial last block, n not a multiple of 32
    "block": (10, 100, 1),   # 64-thread blocks: threads loop over the row
    "split": (8, 101, 1),    # parts of 40 elements: 3 parts, the last one short
    "col": (2, 9, 7),        # column layout, 14 columns (the 8 special rows included)
}
SIM_LAUNCH = dict(max_block=64, split_chunk=40)


def special_rows(n, rng):
    """Rows exercising every special-value rule (8 of them), then nothing else."""
    base = rng.standard_normal((8, n)) * 3
    rows = base.copy()
    rows[1] += 1000.0
    rows[2] -= 1000.0
    rows[3, ::3] = -np.inf                   # some -inf
    rows[4] = -np.inf                        # all -inf
    rows[5, n // 2] = np.nan                 # NaN
    rows[6, n // 3] = np.inf                 # one +inf
    rows[7, 1] = rows[7, n - 2] = np.inf     # two +inf and a -inf
    rows[7, 0] = -np.inf
    return rows


def make_input(shape, rng, specials=True):
    """(outer, n, inner) logits: random rows with outliers, the special rows first."""
    outer, n, inner = shape
    rows = rng.standard_normal((outer * inner, n)) * 2
    rows[:, rng.integers(0, n)] += 6.0       # an outlier, so probabilities are not all tiny
    if specials:
        k = min(8, outer * inner)
        rows[:k] = special_rows(n, rng)[:k]
    return np.ascontiguousarray(rows.reshape(outer, inner, n).transpose(0, 2, 1))


def assert_close(got, want, dtype, what):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    big = np.abs(want) > np.finfo(dtype).max
    want = np.where(big, np.copysign(np.inf, want), want)
    nan_w, nan_g = np.isnan(want), np.isnan(got)
    assert np.array_equal(nan_w, nan_g), (
        f"{what}: NaN positions differ: want {np.argwhere(nan_w)[:6].tolist()}, "
        f"got {np.argwhere(nan_g)[:6].tolist()}")
    inf = np.isinf(want)
    assert np.array_equal(got[inf], want[inf]), (
        f"{what}: infinities differ at {np.argwhere(inf & (got != want))[:6].tolist()}")
    fin = ~(nan_w | inf)
    if fin.any():
        err = np.abs(got[fin] - want[fin]) / np.maximum(1.0, np.abs(want[fin]))
        tol = TOL[np.dtype(dtype)]
        assert err.max() <= tol, (
            f"{what}: max error {err.max():.3g} > {tol:.1g} at "
            f"{np.argwhere(fin)[np.argmax(err)].tolist()}")


class Runner:
    """Runs one backend method on host data through ``to_dev``/``from_dev``."""

    def __init__(self, backend, to_dev, from_dev, empty, launch=None):
        self.be = backend
        self.to_dev = to_dev
        self.from_dev = from_dev
        self.empty = empty
        self.launch = launch or {}

    def _ctx(self, variant):
        return launch_override(variant=variant, **self.launch)

    def softmax(self, x, log, variant):
        xd = self.to_dev(x)
        out = self.empty(x.shape, x.dtype)
        with self._ctx(variant):
            self.be.softmax(xd, out, log)
        return self.from_dev(out)

    def logsumexp(self, x, b, return_sign, variant):
        outer, _, inner = x.shape
        out = self.empty((outer, inner), x.dtype)
        sign = self.empty((outer, inner), x.dtype) if return_sign else None
        with self._ctx(variant):
            self.be.logsumexp(self.to_dev(x), None if b is None else self.to_dev(b), out, sign)
        return self.from_dev(out), (self.from_dev(sign) if return_sign else None)

    def partial(self, x, b, variant):
        outer, _, inner = x.shape
        acc = np.float64 if x.dtype == np.float64 else np.float32
        m, c, r = (self.empty((outer, inner), acc) for _ in range(3))
        with self._ctx(variant):
            self.be.partial(self.to_dev(x), None if b is None else self.to_dev(b), m, c, r)
        return self.from_dev(m), self.from_dev(c), self.from_dev(r)

    def backward(self, y, dy, log, variant):
        out = self.empty(y.shape, y.dtype)
        with self._ctx(variant):
            self.be.softmax_backward(self.to_dev(y), self.to_dev(dy), out, log)
        return self.from_dev(out)

    def xent(self, x, labels, probs, weight, ignore_index, smoothing, grad_scale, variant):
        outer, _, inner = x.shape
        loss = self.empty((outer, inner), x.dtype)
        grad = self.empty(x.shape, x.dtype)
        dev = (lambda a: None if a is None else self.to_dev(a))
        gs = grad_scale if np.isscalar(grad_scale) else self.to_dev(grad_scale)
        with self._ctx(variant):
            self.be.cross_entropy(self.to_dev(x), dev(labels), dev(probs), dev(weight),
                                  ignore_index, smoothing, loss, grad, gs)
        return self.from_dev(loss), self.from_dev(grad)


# -- the checks: each returns nothing and asserts ------------------------------------------

def check_softmax(run, variant, dtype, log, seed=0):
    rng = np.random.default_rng(seed)
    x = make_input(SHAPES[variant], rng).astype(dtype)
    got = run.softmax(x, log, variant)
    with np.errstate(all="ignore"):
        f = sp.log_softmax if log else sp.softmax
        want = f(x.astype(np.float64), axis=1)
    assert_close(got, want, dtype, f"{'log_' if log else ''}softmax {variant} {dtype.__name__}")


def rows_of(a):
    """(outer, n, inner) -> a (outer*inner, n) copy: one reduction row per line."""
    outer, n, inner = a.shape
    return a.transpose(0, 2, 1).reshape(outer * inner, n).copy()


def from_rows(rows, shape):
    outer, n, inner = shape
    return np.ascontiguousarray(rows.reshape(outer, inner, n).transpose(0, 2, 1))


def lse_input(shape, rng):
    """Logits and weights: negatives, zeros on some NaN/+inf elements (dropped), one row with
    a negative sum (sign -1, NaN without return_sign) and one whose weights cancel at the
    max (SciPy's direct-sum fallback)."""
    x = rows_of(make_input(shape, rng))
    b = rng.uniform(0.5, 2.0, x.shape)
    b[rng.random(x.shape) < 0.15] *= -0.05
    b[np.isnan(x) & (rng.random(x.shape) < 0.5)] = 0
    pinf = np.isposinf(x)
    b[pinf] = np.where(rng.random(pinf.sum()) < 0.5, 0.0, 1.0)
    if x.shape[0] > 9:
        b[8] = -np.abs(b[8])
        j = int(np.argmax(x[9]))
        k = (j + 1) % x.shape[1]
        x[9, k] = x[9, j]
        b[9, j], b[9, k] = 1.0, -1.0
    return from_rows(x, shape), from_rows(b, shape)


def check_logsumexp(run, variant, dtype, weighted, return_sign, seed=1):
    rng = np.random.default_rng(seed)
    x, b = lse_input(SHAPES[variant], rng)
    b = b.astype(dtype) if weighted else None
    x = x.astype(dtype)
    got, sgn = run.logsumexp(x, b, return_sign, variant)
    with np.errstate(all="ignore"):
        want = sp.logsumexp(x.astype(np.float64), axis=1,
                            b=None if b is None else b.astype(np.float64),
                            return_sign=return_sign)
    what = f"logsumexp {variant} {dtype.__name__} b={weighted} sign={return_sign}"
    if return_sign:
        want, wsgn = want
        assert_close(sgn, wsgn, dtype, what + " (sign)")
    assert_close(got, want, dtype, what)


def check_partial(run, variant, dtype, weighted, seed=2):
    rng = np.random.default_rng(seed)
    x, b = lse_input(SHAPES[variant], rng)
    b = b.astype(dtype) if weighted else None
    x = x.astype(dtype)
    m, c, r = run.partial(x, b, variant)
    wm, wc, wr = ref.partial_block(x.astype(np.float64),
                                   None if b is None else b.astype(np.float64))
    acc = np.float64 if dtype == np.float64 else np.float32
    what = f"partial {variant} {dtype.__name__} b={weighted}"
    assert_close(m, wm, acc, what + " m")
    assert_close(c, wc, acc, what + " c")
    assert_close(r, wr, dtype, what + " r")


def check_backward(run, variant, dtype, log, seed=3):
    rng = np.random.default_rng(seed)
    x = make_input(SHAPES[variant], rng, specials=False)
    x[0] += 1000.0                                  # a shifted row: y has exact zeros
    with np.errstate(all="ignore"):
        y = (sp.log_softmax if log else sp.softmax)(x, axis=1).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    got = run.backward(y, dy, log, variant)
    want = np.empty(x.shape)
    ref.softmax_backward_block(y.astype(np.float64), dy.astype(np.float64), want, log)
    assert_close(got, want, dtype, f"softmax_backward {variant} {dtype.__name__} log={log}")


XENT_CASES = {
    # name: (targets, weighted, smoothing, scale as an array)
    "labels": ("labels", False, 0.0, False),
    "labels_w_smooth": ("labels", True, 0.1, True),
    "probs_smooth": ("probs", True, 0.2, False),
}


def check_xent(run, variant, dtype, case, seed=4):
    targets, weighted, eps, scale_array = XENT_CASES[case]
    rng = np.random.default_rng(seed)
    shape = SHAPES[variant]
    outer, C, inner = shape
    rows = rows_of(make_input(shape, rng, specials=False))
    rows[0, 1] = -np.inf                      # a -inf logit off the target (class 0)
    ignore = -100
    labels = probs = None
    if targets == "labels":
        lab = rng.integers(0, C, outer * inner).astype(np.int64)
        lab[0] = 0
        lab[1::4] = ignore
        if lab.size > 5:
            rows[5] = np.nan                  # a NaN row that is ignored
            lab[5] = ignore
        labels = lab.reshape(outer, inner)
    else:
        probs = sp.softmax(rng.standard_normal(shape), axis=1).astype(dtype)
    x = from_rows(rows, shape).astype(dtype)
    weight = rng.uniform(0.2, 2.0, C).astype(dtype) if weighted else None
    scale = (rng.uniform(0.5, 1.5, (outer, inner)).astype(dtype) if scale_array
             else 1.0 / (outer * inner))
    loss, grad = run.xent(x, labels, probs, weight, ignore, eps, scale, variant)
    f64 = (lambda a: None if a is None else a.astype(np.float64))
    wl, wg = ref.cross_entropy_block(x.astype(np.float64), labels, f64(probs), f64(weight),
                                     ignore, eps, scale if np.isscalar(scale) else f64(scale),
                                     True)
    what = f"cross_entropy {variant} {dtype.__name__} {case}"
    assert_close(loss, wl, dtype, what + " loss")
    assert_close(grad, wg, dtype, what + " grad")
