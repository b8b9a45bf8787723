"""Numba kernels of the CPU path: one fused pass per row, the row kept in L1/L2.

NumPy's ``exp`` is vectorised, but the ufunc sequence (max, subtract, exp, sum, scale) costs
five sweeps of the block and a Python call each.  Here each row is handled in chunks of
``_CHUNK`` elements: shifted exponentials by Cody-Waite range reduction (k = round(d/ln2),
r = d - k*ln2 in two parts, e^r by a Taylor polynomial of degree 7 (float32) or 13 (float64)
whose truncation error is below half an ulp for |r| <= ln2/2), scaled by 2^k built from the
exponent bits.  Every loop is branch-free, so LLVM vectorises it; the row sum is accumulated
in float64 (float32 rows) and reassociated (vectorised) only in the summing loop.

Inputs reaching these kernels have finite row maxima (``d = x - m <= 0``); rows whose max is
not finite are left to the NumPy rules in ``_numerics``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_CHUNK = 1024

# Cody-Waite splits of ln 2: the high parts have trailing zero bits, so k*ln2_hi is exact.
_SPEC = {
    np.dtype(np.float32): dict(ln2_hi=0.693145751953125, ln2_lo=1.428606820309417e-06,
                               degree=7, lo=-104.0, off=64, bias=127, mant=23,
                               itype=np.int32, acc=np.float64),
    np.dtype(np.float64): dict(ln2_hi=6.93147180369123816490e-01,
                               ln2_lo=1.90821492927058770002e-10,
                               degree=13, lo=-746.0, off=1000, bias=1023, mant=52,
                               itype=np.int64, acc=np.float64),
}


def _make(dtype):
    sp = _SPEC[np.dtype(dtype)]
    ftype = np.dtype(dtype).type
    itype = sp["itype"]
    LOG2E = ftype(1.4426950408889634)
    HI, LO = ftype(sp["ln2_hi"]), ftype(sp["ln2_lo"])
    TLO = ftype(sp["lo"])
    OFF, BIAS, MANT = sp["off"], sp["bias"], sp["mant"]
    DOWN = ftype(2.0 ** -OFF)
    # 1/j! for the Horner evaluation of e^r
    coef = np.array([1.0 / math.factorial(j) for j in range(sp["degree"] + 1)], ftype)
    deg = sp["degree"]
    suffix = np.dtype(dtype).name

    def exp_shifted(x, m, out, kbits):
        # out[j] = exp(x[j] - m), for x[j] - m <= 0 (a -inf x gives 0)
        n = x.shape[0]
        for j in range(n):
            d = x[j] - m
            d = d if d > TLO else TLO
            k = np.floor(d * LOG2E + ftype(0.5))
            r = (d - k * HI) - k * LO
            p = coef[deg]
            for c in range(deg - 1, -1, -1):
                p = p * r + coef[c]
            out[j] = p
            kbits[j] = (itype(k) + itype(OFF + BIAS)) << itype(MANT)
        scale = kbits.view(ftype)
        for j in range(n):
            out[j] = out[j] * scale[j] * DOWN

    def row_sum(v):
        s = 0.0
        for j in range(v.shape[0]):
            s += np.float64(v[j])
        return s

    def softmax_rows(x, m, out, log):
        # x, out: (R, n) C-contiguous; m: (R,) finite row maxima
        R, n = x.shape
        kbits = np.empty(_CHUNK, itype)
        tmp = np.empty(_CHUNK, ftype)
        for i in range(R):
            mi = m[i]
            s = 0.0
            for a in range(0, n, _CHUNK):
                b = min(a + _CHUNK, n)
                dst = tmp[:b - a] if log else out[i, a:b]
                exp_shifted(x[i, a:b], mi, dst, kbits[:b - a])
                s += fsum(dst)
            if log:
                ls = ftype(math.log(s))
                for j in range(n):
                    out[i, j] = (x[i, j] - mi) - ls
            else:
                inv = ftype(1.0 / s)
                for j in range(n):
                    out[i, j] = out[i, j] * inv

    def exp_sum_rows(x, m, s):
        # s[i] = sum_j exp(x[i, j] - m[i]) (the state of a chunk of one long row)
        R, n = x.shape
        kbits = np.empty(_CHUNK, itype)
        tmp = np.empty(_CHUNK, ftype)
        for i in range(R):
            acc = 0.0
            for a in range(0, n, _CHUNK):
                b = min(a + _CHUNK, n)
                exp_shifted(x[i, a:b], m[i], tmp[:b - a], kbits[:b - a])
                acc += fsum(tmp[:b - a])
            s[i] = acc

    def state_rows(x, m, c, r):
        # c[i] = count of x[i, j] == m[i]; r[i] = sum of exp(x - m) over the others (the
        # maxima stay out of the sum so r keeps its small terms for log1p)
        R, n = x.shape
        kbits = np.empty(_CHUNK, itype)
        tmp = np.empty(_CHUNK, ftype)
        for i in range(R):
            acc = 0.0
            cnt = 0
            for a in range(0, n, _CHUNK):
                b = min(a + _CHUNK, n)
                t = tmp[:b - a]
                exp_shifted(x[i, a:b], m[i], t, kbits[:b - a])
                xs = x[i, a:b]
                for j in range(b - a):
                    hit = xs[j] == m[i]
                    cnt += 1 if hit else 0
                    t[j] = ftype(0) if hit else t[j]
                acc += fsum(t)
            c[i] = cnt
            r[i] = acc

    def col_exp_sum(x, m, s):
        # column layout chunk x (k, inner): s[i] += sum_j exp(x[j, i] - m[i])
        k, inner = x.shape
        kbits = np.empty(inner, itype)
        d = np.empty(inner, ftype)
        e = np.empty(inner, ftype)
        for j in range(k):
            for i in range(inner):
                d[i] = x[j, i] - m[i]
            exp_shifted(d, ftype(0), e, kbits)
            for i in range(inner):
                s[i] += e[i]

    def col_normalize(x, m, inv, shift, out, log):
        # out[j, i] = exp(x[j, i] - m[i]) * inv[i]  or  x[j, i] - shift[i]
        k, inner = x.shape
        kbits = np.empty(inner, itype)
        d = np.empty(inner, ftype)
        for j in range(k):
            if log:
                for i in range(inner):
                    out[j, i] = x[j, i] - shift[i]
            else:
                for i in range(inner):
                    d[i] = x[j, i] - m[i]
                o = out[j]
                exp_shifted(d, ftype(0), o, kbits)
                for i in range(inner):
                    o[i] = o[i] * inv[i]

    def normalize_rows(x, M, S, out, log):
        # every row shares the global (M, S): out = exp(x - M) / S or (x - M) - log S
        R, n = x.shape
        kbits = np.empty(_CHUNK, itype)
        shift = ftype(math.log(S))
        inv = ftype(1.0 / S)
        for i in range(R):
            for a in range(0, n, _CHUNK):
                b = min(a + _CHUNK, n)
                if log:
                    for j in range(a, b):
                        out[i, j] = (x[i, j] - M) - shift
                else:
                    o = out[i, a:b]
                    exp_shifted(x[i, a:b], M, o, kbits[:b - a])
                    for j in range(b - a):
                        o[j] = o[j] * inv

    def xent_rows(x, m, labels, probs, weight, ign, keep, base, wsum, scale, step, loss, grad,
                  mode):
        # Fused cross-entropy of rows with finite maxima m (labels: mode & 1, else probs;
        # gradient: mode & 2).  weight: (n,) (ones when absent), wsum = sum(weight).
        # wt_c = w_c * (keep * t_c + base); loss = W log s - D with W = sum wt_c,
        # D = sum_{wt_c != 0} wt_c (x_c - m), s = sum exp(x - m) (so a -inf logit with a
        # target gives +inf and one without adds nothing); grad = f (e W / s - wt).
        R, n = x.shape
        kbits = np.empty(_CHUNK, itype)
        tmp = np.empty(_CHUNK, ftype)
        with_labels = (mode & 1) != 0
        with_grad = (mode & 2) != 0
        for i in range(R):
            lab = labels[i] if with_labels else -1
            if with_labels and lab == ign:
                loss[i] = 0.0
                if with_grad:
                    for j in range(n):
                        grad[i, j] = ftype(0)
                continue
            mi = m[i]
            s = 0.0
            W = 0.0
            D = 0.0
            for a in range(0, n, _CHUNK):
                b = min(a + _CHUNK, n)
                e = grad[i, a:b] if with_grad else tmp[:b - a]
                exp_shifted(x[i, a:b], mi, e, kbits[:b - a])
                s += fsum(e)
                if not with_labels:
                    Wc, Dc = wt_sums(x[i, a:b], mi, probs[i, a:b], weight[a:b], keep, base)
                    W += Wc
                    D += Dc
                elif base != 0.0:
                    D += base * wdot(x[i, a:b], mi, weight[a:b])
            if with_labels:
                wl = np.float64(weight[lab]) * keep
                W = wl + base * wsum
                if wl != 0.0:
                    D += wl * (np.float64(x[i, lab]) - np.float64(mi))
            loss[i] = W * math.log(s) - D
            if with_grad:
                # f (p W - wt) with p = e / s, e already in the gradient row
                ff = ftype(scale[i * step])
                ws = ftype(W / s)
                fk, fb = ftype(keep), ftype(base)
                g = grad[i]
                if with_labels:
                    el = g[lab]
                    for j in range(n):
                        g[j] = ff * (g[j] * ws - weight[j] * fb)
                    g[lab] = ff * (el * ws - weight[lab] * (fb + fk))
                else:
                    pr = probs[i]
                    for j in range(n):
                        g[j] = ff * (g[j] * ws - weight[j] * (fk * pr[j] + fb))

    def xent_cols(x, m, labels, probs, weight, ign, keep, base, wsum, scale, step, loss,
                  grad, mode):
        # xent_rows for the column layout: x (n, k) holds k columns (one row each, the
        # classes down the column), walked a class at a time so every loop runs along the
        # contiguous k.  Same formulas; the label terms are gathered per column at the end.
        n, k = x.shape
        kbits = np.empty(k, itype)
        d = np.empty(k, ftype)
        e = np.empty(k, ftype)
        s = np.zeros(k, np.float64)
        W = np.zeros(k, np.float64)
        D = np.zeros(k, np.float64)
        with_labels = (mode & 1) != 0
        with_grad = (mode & 2) != 0
        for j in range(n):
            for i in range(k):
                d[i] = x[j, i] - m[i]
            ej = grad[j] if with_grad else e
            exp_shifted(d, ftype(0), ej, kbits)
            for i in range(k):
                s[i] += ej[i]
            wj = np.float64(weight[j])
            if with_labels:
                if base != 0.0 and wj != 0.0:
                    for i in range(k):
                        D[i] += base * wj * np.float64(d[i])
            else:
                for i in range(k):
                    wt = wj * (keep * np.float64(probs[j, i]) + base)
                    W[i] += wt
                    D[i] += wt * np.float64(d[i]) if wt != 0.0 else 0.0
        for i in range(k):
            if with_labels:
                lab = labels[i]
                if lab == ign:
                    loss[i] = 0.0
                    continue
                wl = np.float64(weight[lab]) * keep
                W[i] = wl + base * wsum
                if wl != 0.0:
                    D[i] += wl * (np.float64(x[lab, i]) - np.float64(m[i]))
            loss[i] = W[i] * math.log(s[i]) - D[i]
        if not with_grad:
            return
        fk, fb = ftype(keep), ftype(base)
        ws = np.empty(k, ftype)
        ff = np.empty(k, ftype)
        elab = np.empty(k, ftype)
        for i in range(k):
            ws[i] = ftype(W[i] / s[i]) if s[i] > 0.0 else ftype(0)   # s = 0: an ignored column
            ff[i] = ftype(scale[i * step])
            if with_labels:
                lab = labels[i]
                elab[i] = grad[lab, i] if lab != ign else ftype(0)
        for j in range(n):
            g = grad[j]
            if with_labels:
                wb = weight[j] * fb
                for i in range(k):
                    g[i] = ff[i] * (g[i] * ws[i] - wb)
            else:
                wj = weight[j]
                for i in range(k):
                    g[i] = ff[i] * (g[i] * ws[i] - wj * (fk * probs[j, i] + fb))
        if with_labels:
            for i in range(k):
                lab = labels[i]
                if lab == ign:
                    for j in range(n):
                        grad[j, i] = ftype(0)
                else:
                    grad[lab, i] = ff[i] * (elab[i] * ws[i] - weight[lab] * (fb + fk))

    def bwd_rows(y, dy, out, log):
        # out = y (dy - sum(dy y)) (softmax) or dy - exp(y) sum(dy) (log_softmax, y <= 0),
        # the row sums in float64; out may alias y or dy (each element is read first)
        R, n = y.shape
        kbits = np.empty(_CHUNK, itype)
        tmp = np.empty(_CHUNK, ftype)
        for i in range(R):
            s = fsum(dy[i]) if log else fdot(y[i], dy[i])
            sf = ftype(s)
            if log:
                for a in range(0, n, _CHUNK):
                    b = min(a + _CHUNK, n)
                    e = tmp[:b - a]
                    exp_shifted(y[i, a:b], ftype(0), e, kbits[:b - a])
                    o = out[i, a:b]
                    d = dy[i, a:b]
                    for j in range(b - a):
                        o[j] = d[j] - e[j] * sf
            else:
                o = out[i]
                yi = y[i]
                d = dy[i]
                for j in range(n):
                    o[j] = yi[j] * (d[j] - sf)

    def row_dot(u, v):
        t = 0.0
        for j in range(u.shape[0]):
            t += np.float64(u[j]) * np.float64(v[j])
        return t

    def wt_sums(x, m, p, w, keep, base):
        # (sum wt_j, sum_{wt_j != 0} wt_j (x_j - m)) with wt_j = w_j (keep p_j + base)
        W = 0.0
        D = 0.0
        for j in range(p.shape[0]):
            wt = np.float64(w[j]) * (keep * np.float64(p[j]) + base)
            W += wt
            D += wt * (np.float64(x[j]) - np.float64(m)) if wt != 0.0 else 0.0
        return W, D

    def wdot(x, m, w):
        t = 0.0
        for j in range(x.shape[0]):
            wj = np.float64(w[j])
            t += wj * (np.float64(x[j]) - np.float64(m)) if wj != 0.0 else 0.0
        return t

    for fn in (exp_shifted, row_sum, softmax_rows, exp_sum_rows, state_rows, normalize_rows,
               col_exp_sum, col_normalize, xent_rows, xent_cols, bwd_rows, row_dot, wt_sums,
               wdot):
        fn.__qualname__ = f"{fn.__name__}_{suffix}"
        fn.__name__ = fn.__qualname__
    jit = njit(nogil=True, cache=True)
    exp_shifted = njit(nogil=True, cache=True, fastmath={"contract"})(exp_shifted)
    fsum = njit(nogil=True, cache=True, fastmath={"reassoc"})(row_sum)
    fdot = njit(nogil=True, cache=True, fastmath={"reassoc"})(row_dot)
    wt_sums = njit(nogil=True, cache=True, fastmath={"reassoc"})(wt_sums)
    wdot = njit(nogil=True, cache=True, fastmath={"reassoc"})(wdot)
    return dict(softmax_rows=jit(softmax_rows), exp_sum_rows=jit(exp_sum_rows),
                normalize_rows=jit(normalize_rows), state_rows=jit(state_rows),
                col_exp_sum=jit(col_exp_sum), col_normalize=jit(col_normalize),
                xent_rows=jit(xent_rows), xent_cols=jit(xent_cols), bwd_rows=jit(bwd_rows))


_kernels = {}


def _get(dtype, name):
    dt = np.dtype(dtype)
    ks = _kernels.get(dt)
    if ks is None:
        ks = _kernels[dt] = _make(dt)
    return ks[name]


def softmax_rows(x, m, out, log):
    """Fused softmax/log_softmax of the rows of 2-D ``x`` (float32/64) with finite maxima m."""
    _get(x.dtype, "softmax_rows")(x, m, out, log)


def exp_sum_rows(x, m):
    """Per-row sum(exp(x - m)) in float64, for rows with finite maxima m."""
    s = np.empty(x.shape[0], np.float64)
    _get(x.dtype, "exp_sum_rows")(x, m, s)
    return s


def state_rows(x, m):
    """(c, r) per row for rows with finite maxima m: the count of the maxima and the sum of
    exp(x - m) over the other elements (float64)."""
    c = np.empty(x.shape[0], np.float64)
    r = np.empty(x.shape[0], np.float64)
    _get(x.dtype, "state_rows")(x, m, c, r)
    return c, r


def col_exp_sum(x, m):
    """Per-column sum(exp(x - m)) of a (k, inner) chunk with finite column maxima m."""
    s = np.zeros(x.shape[1], np.float64)
    _get(x.dtype, "col_exp_sum")(x, m, s)
    return s


def col_normalize(x, m, inv, shift, out, log):
    """out = exp(x - m) * inv (or x - shift) for a (k, inner) chunk, per column."""
    _get(x.dtype, "col_normalize")(x, m, inv, shift, out, log)


def normalize_rows(x, M, S, out, log):
    """out = exp(x - M) / S (or (x - M) - log S) with one global finite M and S >= 1."""
    ft = np.dtype(x.dtype).type
    _get(x.dtype, "normalize_rows")(x, ft(M), float(S), out, log)


def xent_rows(x, m, labels, probs, weight, ignore_index, smoothing, scale, loss, grad,
              columns=False):
    """Fused softmax cross-entropy of the rows of 2-D ``x`` (float32/64) with finite maxima
    ``m``: loss (float64, one per row) and, when ``grad`` is given, the gradient rows.
    Exactly one of ``labels`` (int64 per row) and ``probs`` (like x); ``weight`` (n,) or
    None; ``scale``: the gradient factor, a float or one per row.  ``columns``: x is
    (n, k), one row per column (the column layout; probs and grad laid out the same)."""
    n = x.shape[0] if columns else x.shape[1]
    ft = np.dtype(x.dtype).type
    w = np.ones(n, x.dtype) if weight is None else weight
    sc = np.asarray(scale, np.float64).reshape(-1)
    mode = (1 if labels is not None else 0) | (2 if grad is not None else 0)
    _get(x.dtype, "xent_cols" if columns else "xent_rows")(
        x, m, labels if labels is not None else np.zeros(1, np.int64),
        probs if probs is not None else np.zeros((1, 1), x.dtype), w, np.int64(ignore_index),
        1.0 - float(smoothing), float(smoothing) / n, float(np.sum(w, dtype=np.float64)),
        sc, 1 if sc.size > 1 else 0, loss, grad if grad is not None else np.zeros((1, 1), ft),
        mode)


def softmax_backward_rows(y, dy, out, log):
    """Fused softmax/log_softmax gradient of the rows of 2-D ``y``, ``dy`` (float32/64, one
    dtype); for ``log`` every y must be <= 0 (a log-probability; no NaN)."""
    _get(y.dtype, "bwd_rows")(y, dy, out, log)
