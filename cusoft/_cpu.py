"""The fast CPU path for NumPy arrays.

SciPy's softmax makes five full-size passes with three temporaries.  Here the canonical
``(outer, n, inner)`` array is cut into blocks of rows small enough to stay in the L2 cache
(``_BLOCK_BYTES``), every block runs the in-place ufunc sequence of ``_numerics`` (max,
subtract, exp, sum, scale: one read and one write of DRAM per element), and blocks are shared
between threads (NumPy ufuncs release the GIL).  One very long row (``axis=None`` on a big
array) is split along the row instead: per-chunk (m, c, r) states merged with the online rule,
then a parallel normalisation pass.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _cpu_kernels
from . import _numerics as nm
from ._backend import Backend

#: bytes of compute-dtype data per block: fits a 512 KiB..2 MiB L2 with its temporaries
_BLOCK_BYTES = 1024 * 1024
_MIN_PARALLEL_BYTES = 1 << 20
#: one long row is cut into chunks of this many elements, handed out _SPLIT_ROWS at a time
_SPLIT = 1 << 14
_SPLIT_ROWS = 16

_pool = None


def _threads():
    env = os.environ.get("CUSOFT_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def _map(fn, items, nbytes):
    """Run ``fn`` over ``items`` in order; in threads when the data is worth it.

    Each thread takes one contiguous share of the items (static partition: one pool
    dispatch per thread, neighbouring blocks stay on one core)."""
    items = list(items)
    nthreads = min(_threads(), len(items))
    if nthreads <= 1 or nbytes < _MIN_PARALLEL_BYTES:
        return [fn(it) for it in items]
    global _pool
    if _pool is None or _pool._max_workers < nthreads:
        _pool = ThreadPoolExecutor(nthreads, thread_name_prefix="cusoft-cpu")
    bounds = [len(items) * t // nthreads for t in range(nthreads + 1)]
    shares = [items[bounds[t]:bounds[t + 1]] for t in range(nthreads)]
    parts = list(_pool.map(lambda share: [fn(it) for it in share], shares))
    return [r for part in parts for r in part]


def _blocks(outer, n, inner, itemsize):
    """Slices of the canonical array, each about ``_BLOCK_BYTES``: over ``outer`` when
    there are enough rows, else over ``inner``.  ``None`` when one row alone is too big."""
    row_bytes = n * itemsize
    if outer * inner == 1 and row_bytes > 4 * _BLOCK_BYTES:
        return None
    if outer >= inner:
        per = max(1, _BLOCK_BYTES // max(1, row_bytes * inner))
        return [(slice(o, min(o + per, outer)), slice(None)) for o in range(0, outer, per)]
    per = max(1, _BLOCK_BYTES // max(1, row_bytes))
    return [(slice(o, o + 1), slice(i, min(i + per, inner)))
            for o in range(outer) for i in range(0, inner, per)]


def _column_tasks(outer, n, inner, itemsize):
    """For the column layout with large (n, inner) slabs: chunks of whole rows of one slab,
    each about ``_BLOCK_BYTES`` and contiguous, as (o, row slice); None when slabs are small
    (then blocks of whole slabs do better)."""
    slab = n * inner * itemsize
    if inner == 1 or slab < _BLOCK_BYTES // 4:
        return None
    per = max(1, _BLOCK_BYTES // (inner * itemsize))
    return [(o, slice(j, min(j + per, n))) for o in range(outer) for j in range(0, n, per)]


def _fused_rows(x2, o2, cdt, log):
    """The Numba row kernel on a (rows, n) block; False when a row max is not finite
    (the block then takes the NumPy rules)."""
    xw = x2 if x2.dtype == cdt else x2.astype(cdt)
    with np.errstate(invalid="ignore"):
        m = xw.max(axis=1)
    if not np.isfinite(m).all():
        return False
    ow = o2 if o2.dtype == cdt else np.empty_like(xw)
    _cpu_kernels.softmax_rows(xw, m, ow, log)
    if ow is not o2:
        with np.errstate(over="ignore"):
            o2[...] = ow
    return True


def _compute_dtype(dtype):
    return np.dtype(np.float32) if dtype == np.float16 else np.dtype(dtype)


class CpuBackend(Backend):
    name = "cpu"

    def available(self):
        return True, "NumPy is always there"

    # -- forward -------------------------------------------------------------------------
    def softmax(self, x, out, log):
        outer, n, inner = x.shape
        cdt = _compute_dtype(x.dtype)
        tasks = _column_tasks(outer, n, inner, cdt.itemsize)
        if tasks is not None and self._softmax_columns(x, out, log, tasks, cdt):
            return out
        blocks = _blocks(outer, n, inner, np.dtype(cdt).itemsize)
        if blocks is None:
            return self._softmax_split(x, out, log)

        def run(sl):
            xb = x[sl[0], :, sl[1]]
            ob = out[sl[0], :, sl[1]]
            if inner == 1 and _fused_rows(xb[:, :, 0], ob[:, :, 0], cdt, log):
                return
            if cdt == x.dtype:
                nm.softmax_block(xb, ob, log)
            else:
                tmp = xb.astype(cdt)
                nm.softmax_block(tmp, tmp, log)
                with np.errstate(over="ignore"):
                    ob[...] = tmp

        _map(run, blocks, x.nbytes)
        return out

    def _column_states(self, x, b, tasks, cdt):
        """(m, c, r) of every column of the column layout, from per-chunk states merged in
        row order (exact: the maxima keep their counts)."""
        outer, _, inner = x.shape

        def st(task):
            o, js = task
            xb = x[o:o + 1, js, :].astype(cdt, copy=False)
            bb = None if b is None else b[o:o + 1, js, :].astype(cdt, copy=False)
            return nm.partial_block(xb, bb)

        states = _map(st, tasks, x.nbytes)
        m = np.empty((outer, inner), cdt)
        c = np.empty_like(m)
        r = np.empty_like(m)
        done = set()
        for (o, _), stt in zip(tasks, states):
            if o in done:
                mm, cc, rr = nm.merge_state(m[o:o + 1], c[o:o + 1], r[o:o + 1], *stt)
            else:
                mm, cc, rr = stt
                done.add(o)
            m[o:o + 1], c[o:o + 1], r[o:o + 1] = mm, cc, rr
        return m, c, r

    def _softmax_columns(self, x, out, log, tasks, cdt):
        """softmax over axis 1 of large column-layout slabs: per-chunk column (max, sum-exp)
        by the Numba kernels, merged with the online rule, then one normalising pass over
        contiguous row chunks.  False (nothing written) when a column max is not finite: the
        NumPy rules of the block path handle those."""
        outer, _, inner = x.shape

        def state(task):
            o, js = task
            xb = x[o, js, :].astype(cdt, copy=False)
            with np.errstate(invalid="ignore"):
                mb = xb.max(axis=0)
            if not np.isfinite(mb).all():
                return mb, None
            return mb, _cpu_kernels.col_exp_sum(xb, mb)

        states = _map(state, tasks, x.nbytes)
        if any(sb is None for _, sb in states):
            return False
        M = np.full((outer, inner), -np.inf, cdt)
        for (o, _), (mb, _) in zip(tasks, states):
            np.maximum(M[o], mb, out=M[o])
        S = np.zeros((outer, inner), np.float64)
        for (o, _), (mb, sb) in zip(tasks, states):
            S[o] += sb * np.exp(mb.astype(np.float64) - M[o])
        shift = (M + np.log(S)).astype(cdt)
        inv = (1.0 / S).astype(cdt)

        def norm(task):
            o, js = task
            xb = x[o, js, :].astype(cdt, copy=False)
            ob = out[o, js, :]
            if ob.dtype == cdt:
                _cpu_kernels.col_normalize(xb, M[o], inv[o], shift[o], ob, log)
            else:
                tmp = np.empty_like(xb)
                _cpu_kernels.col_normalize(xb, M[o], inv[o], shift[o], tmp, log)
                with np.errstate(over="ignore"):
                    ob[...] = tmp

        _map(norm, tasks, x.nbytes)
        return True

    def _chunks(self, n, itemsize):
        per = max(1, _BLOCK_BYTES // itemsize)
        return [slice(j, min(j + per, n)) for j in range(0, n, per)]

    def _softmax_split(self, x, out, log):
        # One long row, seen as (rows, _SPLIT) chunks plus a tail: per-chunk (m, s) in
        # parallel, merged with the online rule, then a parallel normalisation pass.
        row = x.reshape(-1)
        orow = out.reshape(-1)
        cdt = _compute_dtype(x.dtype)
        if cdt != x.dtype:
            tmp = row.astype(cdt)
            self._softmax_split(tmp.reshape(1, -1, 1), tmp.reshape(1, -1, 1), log)
            with np.errstate(over="ignore"):
                orow[...] = tmp
            return out
        N = row.shape[0]
        L = _SPLIT
        R = N // L
        pieces = [(row[:R * L].reshape(R, L), orow[:R * L].reshape(R, L))] if R else []
        if N > R * L:
            pieces.append((row[R * L:].reshape(1, -1), orow[R * L:].reshape(1, -1)))
        work = [(xi[a:a + _SPLIT_ROWS], oi[a:a + _SPLIT_ROWS])
                for xi, oi in pieces for a in range(0, xi.shape[0], _SPLIT_ROWS)]
        with np.errstate(invalid="ignore"):
            ms = _map(lambda w: w[0].max(axis=1), work, x.nbytes)
        mall = np.concatenate(ms)
        if not np.isfinite(mall).all():
            # rare: hand the whole row to the NumPy rules (same results as SciPy's)
            tmp = row.reshape(1, -1, 1)
            nm.softmax_block(tmp, out.reshape(1, -1, 1), log)
            return out
        ss = _map(lambda wm: _cpu_kernels.exp_sum_rows(wm[0][0], wm[1]),
                  list(zip(work, ms)), x.nbytes)
        sall = np.concatenate(ss)
        M = mall.max()
        S = float(np.sum(sall * np.exp(mall.astype(np.float64) - M)))
        _map(lambda w: _cpu_kernels.normalize_rows(w[0], M, S, w[1], log), work, x.nbytes)
        return out

    def _states(self, x, b):
        """(m, c, r) per row, (outer, inner) each, in the compute dtype."""
        outer, n, inner = x.shape
        cdt = _compute_dtype(x.dtype)
        if b is None and inner == 1 and cdt == x.dtype:
            st = self._states_fused(x[:, :, 0])
            if st is not None:
                return st
        tasks = _column_tasks(outer, n, inner, cdt.itemsize)
        if tasks is not None:
            return self._column_states(x, b, tasks, cdt)
        blocks = _blocks(outer, n, inner, np.dtype(cdt).itemsize)
        if blocks is None:
            chunks = self._chunks(n, np.dtype(cdt).itemsize)

            def st(sl):
                xb = x[:, sl, :].astype(cdt, copy=False)
                bb = None if b is None else b[:, sl, :].astype(cdt, copy=False)
                return nm.partial_block(xb, bb)

            states = _map(st, chunks, x.nbytes)
            m, c, r = states[0]
            for s in states[1:]:
                m, c, r = nm.merge_state(m, c, r, *s)
            return m, c, r
        m = np.empty((outer, inner), cdt)
        c = np.empty_like(m)
        r = np.empty_like(m)

        def run(sl):
            xb = x[sl[0], :, sl[1]].astype(cdt, copy=False)
            bb = None if b is None else b[sl[0], :, sl[1]].astype(cdt, copy=False)
            mm, cc, rr = nm.partial_block(xb, bb)
            m[sl], c[sl], r[sl] = mm, cc, rr

        _map(run, blocks, x.nbytes)
        return m, c, r

    def _states_fused(self, x2):
        """(m, c, r) of the rows of a 2-D float32/64 array with the Numba kernel, cutting a
        long row into chunks whose states merge exactly; None if some max is not finite."""
        outer, n = x2.shape
        L = _SPLIT
        split = outer == 1 and n > 4 * L
        if split:
            R = n // L
            parts = [x2[0, :R * L].reshape(R, L)] + ([x2[0, R * L:].reshape(1, -1)]
                                                     if n > R * L else [])
            work = [p[a:a + _SPLIT_ROWS] for p in parts for a in range(0, p.shape[0],
                                                                        _SPLIT_ROWS)]
        else:
            per = max(1, _BLOCK_BYTES // max(1, n * x2.itemsize))
            work = [x2[a:a + per] for a in range(0, outer, per)]
        with np.errstate(invalid="ignore"):
            ms = _map(lambda w: w.max(axis=1), work, x2.nbytes)
        if not all(np.isfinite(m).all() for m in ms):
            return None
        crs = _map(lambda wm: _cpu_kernels.state_rows(*wm), list(zip(work, ms)), x2.nbytes)
        m = np.concatenate(ms)
        c = np.concatenate([cr[0] for cr in crs])
        r = np.concatenate([cr[1] for cr in crs])
        if split:
            # chunks of one row: merge their states (exactly: maxima keep their counts)
            M = m.max()
            top = m == M
            w = np.exp(m[~top].astype(np.float64) - M)
            r1 = r[top].sum() + np.sum((c[~top] + r[~top]) * w)
            return (np.full((1, 1), M, x2.dtype), np.full((1, 1), c[top].sum(), x2.dtype),
                    np.full((1, 1), r1, x2.dtype))
        dt = x2.dtype
        return m.reshape(outer, 1), c.astype(dt).reshape(outer, 1), r.astype(dt).reshape(outer, 1)

    def logsumexp(self, x, b, out, sign):
        m, c, r = self._states(x, b)
        cdt = m.dtype

        def direct(bad):
            with np.errstate(**nm._ERR):
                xx = x.astype(cdt, copy=False)
                e = np.exp(xx) if b is None else b.astype(cdt, copy=False) * np.exp(xx)
                return np.sum(e, axis=1)[bad]

        o, s = nm.logsumexp_from_partial(m, c, r, direct, sign is not None)
        out[...] = o
        if sign is not None:
            sign[...] = s
        return out

    def partial(self, x, b, m, c, r):
        mm, cc, rr = self._states(x, b)
        m[...], c[...], r[...] = mm, cc, rr

    # -- backward ------------------------------------------------------------------------
    def softmax_backward(self, y, dy, out, log):
        outer, n, inner = y.shape
        cdt = _compute_dtype(y.dtype)
        blocks = _blocks(outer, n, inner, np.dtype(cdt).itemsize) or [(slice(None), slice(None))]
        if 1 < inner and outer < inner:
            # few wide slabs: whole slabs, as NumPy's reductions over narrow strided column
            # slices are slow (4096x4096 axis=0: 56 ms in 64-column blocks, 35 ms whole)
            blocks = [(slice(o, o + 1), slice(None)) for o in range(outer)]

        def run(sl):
            yb = y[sl[0], :, sl[1]].astype(cdt, copy=False)
            db = dy[sl[0], :, sl[1]].astype(cdt, copy=False)
            if inner == 1 and (not log or yb.max(initial=-np.inf) <= 0):
                # the fused row kernel; log_softmax's needs log-probabilities (no NaN, <= 0)
                ob = out[sl[0], :, 0]
                o2 = ob if ob.dtype == cdt else np.empty_like(yb[:, :, 0])
                _cpu_kernels.softmax_backward_rows(yb[:, :, 0], db[:, :, 0], o2, log)
                if o2 is not ob:
                    with np.errstate(over="ignore"):
                        ob[...] = o2
                return
            ob = out[sl[0], :, sl[1]]
            if ob.dtype == cdt:    # in place: each formula reads y and dy before the write
                nm.softmax_backward_block(yb, db, ob, log)
            else:
                ob[...] = nm.softmax_backward_block(yb, db, np.empty_like(yb), log)

        _map(run, blocks, y.nbytes)
        return out

    def cross_entropy(self, x, labels, probs, weight, ignore_index, smoothing, loss, grad,
                      grad_scale):
        """Blocks of rows through the fused Numba kernels (one exp per element, the block
        in cache; the column layout has a kernel of its own), in threads.  A block holding
        a computed row whose max is not finite takes the NumPy rules of ``_numerics``."""
        outer, n, inner = x.shape
        cdt = _compute_dtype(x.dtype)
        ww = None if weight is None else weight.astype(cdt, copy=False)
        per_row = np.ndim(grad_scale) != 0
        blocks = _blocks(outer, n, inner, cdt.itemsize) or [(slice(None), slice(None))]

        def run(sl):
            xb = x[sl[0], :, sl[1]].astype(cdt, copy=False)
            lb = None if labels is None else labels[sl[0], sl[1]]
            pb = None if probs is None else probs[sl[0], :, sl[1]].astype(cdt, copy=False)
            sb = grad_scale[sl[0], sl[1]] if per_row else grad_scale
            if self._fused_xent(xb, lb, pb, ww, ignore_index, smoothing, sb, loss, grad, sl):
                return
            lo, gr = nm.cross_entropy_block(xb, lb, pb, ww, ignore_index, smoothing, sb,
                                            grad is not None)
            loss[sl[0], sl[1]] = lo
            if grad is not None:
                grad[sl[0], :, sl[1]] = gr

        _map(run, blocks, x.nbytes)

    @staticmethod
    def _fused_xent(xb, lb, pb, ww, ignore_index, smoothing, sb, loss, grad, sl):
        """The Numba kernels on block ``sl`` (xb: (a, n, b)): rows when b == 1, else one
        column kernel per slab.  False when a computed row's max is not finite (nothing
        written)."""
        a, n, b = xb.shape
        cols = b > 1
        # C-contiguous operands (one in-cache copy of a slab's columns) keep the kernels'
        # loops vectorised
        xs = [np.ascontiguousarray(xb[o]) for o in range(a)] if cols else [xb[:, :, 0]]
        with np.errstate(invalid="ignore"):
            ms = [x2.max(axis=0 if cols else 1) for x2 in xs]
        labs = [None] * len(xs) if lb is None else (list(lb) if cols else [lb[:, 0]])
        for m, l2 in zip(ms, labs):
            live = slice(None) if l2 is None else l2 != ignore_index
            if not np.isfinite(m[live]).all():
                return False
        gout = None if grad is None else grad[sl[0], :, sl[1]]
        l64 = np.empty((a, b), np.float64)
        for o, (x2, m, l2) in enumerate(zip(xs, ms, labs)):
            g2 = scratch = None
            if gout is not None:
                g2 = gout[o] if cols else gout[:, :, 0]
                if g2.dtype != x2.dtype or not g2.flags.c_contiguous:
                    g2 = scratch = np.empty_like(x2)   # float16 (float32 rows), column slab
            p2 = None if pb is None else np.ascontiguousarray(pb[o] if cols else pb[:, :, 0])
            sc = sb if np.ndim(sb) == 0 else (sb[o] if cols else sb[:, 0])
            _cpu_kernels.xent_rows(x2, np.where(np.isfinite(m), m, 0).astype(x2.dtype), l2,
                                   p2, ww, ignore_index, smoothing, sc,
                                   l64[o] if cols else l64[:, 0], g2, columns=cols)
            if scratch is not None:
                with np.errstate(over="ignore"):
                    if cols:
                        gout[o] = scratch
                    else:
                        gout[:, :, 0] = scratch
        with np.errstate(over="ignore"):
            loss[sl[0], sl[1]] = l64
        return True
