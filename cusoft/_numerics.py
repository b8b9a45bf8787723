"""Each numerical rule of the softmax family, stated once in NumPy.

Every function works on one block of the canonical layout: a 3-D array ``(outer, n, inner)``
reduced over axis 1, in the *compute* dtype (float32 or float64; float16 is widened by the
caller).  The CPU backend runs these on cache-sized blocks in parallel threads; the GPU
kernels implement the same rules (``cusoft/_backend.py`` lists them in prose).

Numerics: never ``exp`` of an unshifted value except in SciPy's own fallback for results that
are not finite; the largest term of a log-sum-exp is kept out of the sum so ``log1p`` keeps
the small ones (``logsumexp([0, -40])`` is 4.25e-18, not 0).
"""

from __future__ import annotations

import numpy as np

_ERR = dict(divide="ignore", invalid="ignore", over="ignore", under="ignore")


def softmax_block(x, out, log):
    """softmax (or log_softmax) of ``x`` into ``out`` (may be ``x`` itself)."""
    with np.errstate(**_ERR):
        m = np.max(x, axis=1, keepdims=True)
        finite = np.isfinite(m)
        all_finite = bool(finite.all())
        if not all_finite:
            # SciPy's log_softmax shifts non-finite maxima by 0; softmax keeps them (so the
            # whole row becomes NaN below).  Keep the raw x for the +inf rule.
            raw = x[:, :, :].copy() if log else None
            m = np.where(finite, m, 0)
        np.subtract(x, m, out=out)
        if log:
            e = np.exp(out)
            # float64 sums: NumPy adds strided (column) reductions one by one, not pairwise
            s = np.sum(e, axis=1, keepdims=True, dtype=np.float64).astype(x.dtype)
            np.subtract(out, np.log(s), out=out)
            if not all_finite:
                _log_softmax_nonfinite(raw, m, finite, out)
        else:
            np.exp(out, out=out)
            s = np.sum(out, axis=1, keepdims=True, dtype=np.float64).astype(x.dtype)
            np.multiply(out, np.reciprocal(s), out=out)
            if not all_finite:
                np.copyto(out, np.nan, where=~finite)
    return out


def _log_softmax_nonfinite(raw, m, finite, out):
    # Rows whose max is not finite, per SciPy: +inf max (no NaN) -> NaN at the +inf
    # elements and -inf elsewhere; an all -inf row or a row with NaN -> all NaN.
    bad = ~finite[:, 0, :]
    rows = raw.transpose(0, 2, 1)[bad]           # (k, n)
    has_nan = np.isnan(rows).any(axis=1, keepdims=True)
    pinf = rows == np.inf
    has_pinf = pinf.any(axis=1, keepdims=True)
    val = np.where(has_pinf & ~has_nan, np.where(pinf, np.nan, -np.inf), np.nan)
    o = out.transpose(0, 2, 1)
    o[bad] = val


def partial_block(x, b=None):
    """(m, c, r): row max, sum of weights at the maxima, weighted sum of exp(x - m) elsewhere.

    Elements with ``b == 0`` are dropped.  An all -inf row gives (-inf, count, 0)."""
    with np.errstate(**_ERR):
        if b is not None:
            x = np.where(b == 0, -np.inf, x)
        m = np.max(x, axis=1, keepdims=True)
        at_max = x == m
        t = np.subtract(x, m)
        np.exp(t, out=t)
        if b is None:
            c = np.count_nonzero(at_max, axis=1).astype(x.dtype)
        else:
            c = np.sum(np.where(at_max, b, 0), axis=1, dtype=x.dtype)
            np.multiply(t, b, out=t)
        np.copyto(t, 0, where=at_max)
        r = np.sum(t, axis=1, dtype=np.float64).astype(x.dtype)
    return m[:, 0, :], c, r


def logsumexp_from_partial(m, c, r, direct, return_sign, xp=np):
    """Finish a log-sum-exp from its partial state, SciPy's way.

    ``direct`` is a callable returning the unshifted sum(b*exp(x)) of the selected rows; it
    is called only when some result is not finite (SciPy's fallback for those).  ``xp`` is
    the array module of the state (NumPy, or CuPy for Dask's CuPy chunks)."""
    with np.errstate(**_ERR):
        q = xp.where(r == 0, r, r / c)
        # arrays even for a 0-d state (NumPy arithmetic gives scalars, written into below)
        sgn = xp.asarray(xp.sign(q + 1) * xp.sign(c))
        q = xp.where(q < -1, -q - 2, q)
        out = xp.asarray(xp.log1p(q) + xp.log(xp.abs(c)) + m)
        if not return_sign:
            out = xp.where(sgn < 0, np.nan, out)
        bad = ~xp.isfinite(out)
        if bool(bad.any()):
            d = direct(bad)
            if return_sign:
                sgn[bad] = xp.sign(d)
                d = xp.abs(d)
            out[bad] = xp.log(d)
    return out, sgn


def logsumexp_block(x, b, return_sign):
    """logsumexp over axis 1 of a block: (out, sign) of shape (outer, inner)."""
    m, c, r = partial_block(x, b)

    def direct(bad):
        with np.errstate(**_ERR):
            e = np.exp(x) if b is None else b * np.exp(x)
            return np.sum(e, axis=1)[bad]

    return logsumexp_from_partial(m, c, r, direct, return_sign)


def merge_state(m1, c1, r1, m2, c2, r2):
    """Merge two (m, c, r) states exactly: the smaller max's terms move into r."""
    with np.errstate(**_ERR):
        m = np.maximum(m1, m2)
        w1 = np.where(m1 == m, 0.0, np.exp(m1 - m)).astype(r1.dtype, copy=False)
        w2 = np.where(m2 == m, 0.0, np.exp(m2 - m)).astype(r2.dtype, copy=False)
        c = np.where(m1 == m, c1, 0) + np.where(m2 == m, c2, 0)
        r = (np.where(m1 == m, r1, 0) + np.where(m2 == m, r2, 0)
             + (c1 + r1) * w1 + (c2 + r2) * w2)
        # -inf == -inf keeps both counts; NaN maxima propagate through c and r.
        nan = np.isnan(m)
        if nan.any():
            c = np.where(nan, np.nan, c)
            r = np.where(nan, np.nan, r)
    return m, c, r


def softmax_backward_block(y, dy, out, log):
    """Gradient of softmax (y = softmax) or log_softmax (y = log_softmax) w.r.t. its input."""
    if log:
        s = np.sum(dy, axis=1, keepdims=True)
        np.subtract(dy, np.exp(y) * s, out=out)
    else:
        s = np.sum(dy * y, axis=1, keepdims=True)
        np.multiply(y, dy - s, out=out)
    return out


def cross_entropy_block(x, labels, probs, weight, ignore_index, smoothing, grad_scale,
                        want_grad):
    """Per-row loss and fused gradient; see ``Backend.cross_entropy``.

    Returns ``(loss (outer, inner), grad or None)``."""
    C = x.shape[1]
    with np.errstate(**_ERR):
        logp = np.empty_like(x)
        softmax_block(x, logp, log=True)
        if probs is not None:
            t = probs
            if smoothing:
                t = (1.0 - smoothing) * t + smoothing / C
            keep = None
        else:
            keep = labels != ignore_index
            lab = np.where(keep, labels, 0)
            onehot = (np.arange(C).reshape(1, C, 1) == lab[:, None, :])
            t = onehot * (1.0 - smoothing) + (smoothing / C)
            t = t * keep[:, None, :]
            t = t.astype(x.dtype, copy=False)
        wt = t if weight is None else t * weight.reshape(1, C, 1)
        # 0 * (-inf) would be NaN: a class with zero target weight adds nothing.
        loss = -np.sum(np.where(wt == 0, 0, wt * logp), axis=1)
        grad = None
        if want_grad:
            tot = np.sum(wt, axis=1, keepdims=True)
            grad = np.exp(logp) * tot - wt
            scale = grad_scale if np.isscalar(grad_scale) else np.asarray(grad_scale)[:, None, :]
            grad = grad * scale
            if keep is not None:
                # ignored rows are exactly 0, whatever their logits or the factor (an
                # all-ignored "mean" has factor 1/0 = inf)
                grad = np.where(keep[:, None, :], grad, 0)
    return loss.astype(x.dtype, copy=False), grad
