"""Numba-CUDA kernels: the variants and names of ``kernels_cu/``, one family per op.

Variants (``family_variant``; families ``softmax_fwd``, ``logsumexp``, ``softmax_bwd``, ``xent``):

* ``_warp``  one warp per row, n <= 32 * WARP_ELEMS: the row stays in registers, max and sum
  are reduced with xor shuffles, so there is no shared memory and no barrier at all.
* ``_block`` one block per row: ``softmax_fwd_block`` keeps the row in dynamic shared memory
  (global memory is read once); reductions are warp shuffles plus one shared slot per warp.
* ``_split`` one long row over many blocks (``gridDim.y`` parts): each block writes the partial
  state of its part; ``*_split_norm`` / ``logsumexp_finish`` merge the partials.  Used when
  there are too few rows to fill the device or the row does not fit in shared memory.
* ``_col``   the column layout (inner > 1): one thread per (outer, inner) column, consecutive
  threads on consecutive columns so every load is coalesced; the state is kept online.

Every array argument is the 1-D view of a C-contiguous canonical array (``_backend.py``).
Accumulation is in ``ACC`` (float32 for float16/float32 input, float64 for float64): kernels
are built per accumulation type by ``_build`` and fetched with :func:`get_kernel`.
The generic device functions take typed constants (``one``, ``ninf``) as arguments so that
they stay generic and the kernels' closures hold nothing but the numeric type (which keeps
``cache=True`` keys stable across processes).

Special values follow the contract in ``cusoft/_backend.py`` (SciPy's rules).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

#: all 32 lanes of a warp: every shuffle here is executed by whole warps
FULL_MASK = 0xFFFFFFFF
#: elements each lane of a ``_warp`` kernel holds in registers (so n <= 32 * WARP_ELEMS)
WARP_ELEMS = 16
WARP_MAX_N = 32 * WARP_ELEMS

# xent flags (one int argument instead of four: fewer signatures to compile)
XENT_LABELS = 1
XENT_WEIGHT = 2
XENT_GRAD = 4
XENT_SCALE_ARRAY = 8


# -- generic device helpers (typed by their arguments) ---------------------------------------

@cuda.jit(device=True)
def nan_max(a, b):
    # NaN must win (a NaN row is all NaN), which a plain max does not guarantee
    if a != a or a > b:
        return a
    return b


@cuda.jit(device=True)
def sign_of(v, one):
    if v > 0:
        return one
    if v < 0:
        return -one
    return v  # 0, -0 or NaN, as np.sign


@cuda.jit(device=True)
def merge_ms(m1, s1, m2, s2):
    """Merge two online-softmax states (max, sum of exp(x - max) with 1 at the max)."""
    if m1 != m1 or m2 != m2:
        nan = m1 + m2
        return nan, nan
    # equal maxima (also both -inf or both +inf) must not form inf - inf
    if m1 == m2:
        return m1, s1 + s2
    if m1 > m2:
        return m1, s1 + s2 * math.exp(m2 - m1)
    return m2, s2 + s1 * math.exp(m1 - m2)


@cuda.jit(device=True)
def merge_mcr(m1, c1, r1, m2, c2, r2):
    """Merge two log-sum-exp states (max, weight at the max, weighted sum of the rest).

    The terms at the smaller max move into r, so log1p keeps the small ones."""
    if m1 != m1 or m2 != m2:
        nan = m1 + m2
        return nan, c1 + c2, nan
    if m1 == m2:
        return m1, c1 + c2, r1 + r2
    if m1 > m2:
        return m1, c1, r1 + (c2 + r2) * math.exp(m2 - m1)
    return m2, c2, r2 + (c1 + r1) * math.exp(m1 - m2)


@cuda.jit(device=True)
def softmax_elem(v, m, inv_s, log_s, log):
    """One output element of softmax / log_softmax given the row's (m, 1/s, log s)."""
    if math.isfinite(m):
        if log:
            return v - m - log_s
        return math.exp(v - m) * inv_s
    # SciPy: a +inf max gives log_softmax NaN at the +inf elements and -inf elsewhere;
    # everything else with a non-finite max (NaN, all -inf, softmax with +inf) is NaN.
    if log and m > 0:
        if v == m:
            return v - v
        return -m
    return m - m


# -- warp and block reductions ---------------------------------------------------------------
# Butterfly (xor) shuffles leave the result in every lane; each merge is commutative, so all
# lanes hold bit-identical values and branches on the result stay warp-uniform.

@cuda.jit(device=True)
def warp_max(v):
    off = 16
    while off > 0:
        v = nan_max(v, cuda.shfl_xor_sync(FULL_MASK, v, off))
        off >>= 1
    return v


@cuda.jit(device=True)
def warp_sum(v):
    off = 16
    while off > 0:
        v = v + cuda.shfl_xor_sync(FULL_MASK, v, off)
        off >>= 1
    return v


@cuda.jit(device=True)
def warp_ms(m, s):
    off = 16
    while off > 0:
        m2 = cuda.shfl_xor_sync(FULL_MASK, m, off)
        s2 = cuda.shfl_xor_sync(FULL_MASK, s, off)
        m, s = merge_ms(m, s, m2, s2)
        off >>= 1
    return m, s


@cuda.jit(device=True)
def warp_mcr(m, c, r):
    off = 16
    while off > 0:
        m2 = cuda.shfl_xor_sync(FULL_MASK, m, off)
        c2 = cuda.shfl_xor_sync(FULL_MASK, c, off)
        r2 = cuda.shfl_xor_sync(FULL_MASK, r, off)
        m, c, r = merge_mcr(m, c, r, m2, c2, r2)
        off >>= 1
    return m, c, r


# Block reductions: each warp reduces with shuffles, lane 0 parks the warp's value in shared
# memory, and after the barrier every thread folds the (<= 32) warp values in the same order,
# so all threads agree without a second shuffle round.  The trailing barrier lets the caller
# reuse the scratch for the next reduction.  blockDim.x must be a multiple of 32.

@cuda.jit(device=True)
def block_max(v, sh):
    v = warp_max(v)
    if (cuda.threadIdx.x & 31) == 0:
        sh[cuda.threadIdx.x >> 5] = v
    cuda.syncthreads()
    v = sh[0]
    for w in range(1, cuda.blockDim.x >> 5):
        v = nan_max(v, sh[w])
    cuda.syncthreads()
    return v


@cuda.jit(device=True)
def block_sum(v, sh):
    v = warp_sum(v)
    if (cuda.threadIdx.x & 31) == 0:
        sh[cuda.threadIdx.x >> 5] = v
    cuda.syncthreads()
    v = sh[0]
    for w in range(1, cuda.blockDim.x >> 5):
        v = v + sh[w]
    cuda.syncthreads()
    return v


@cuda.jit(device=True)
def block_ms(m, s, sh_m, sh_s):
    m, s = warp_ms(m, s)
    if (cuda.threadIdx.x & 31) == 0:
        sh_m[cuda.threadIdx.x >> 5] = m
        sh_s[cuda.threadIdx.x >> 5] = s
    cuda.syncthreads()
    m = sh_m[0]
    s = sh_s[0]
    for w in range(1, cuda.blockDim.x >> 5):
        m, s = merge_ms(m, s, sh_m[w], sh_s[w])
    cuda.syncthreads()
    return m, s


@cuda.jit(device=True)
def block_mcr(m, c, r, sh_m, sh_c, sh_r):
    m, c, r = warp_mcr(m, c, r)
    if (cuda.threadIdx.x & 31) == 0:
        sh_m[cuda.threadIdx.x >> 5] = m
        sh_c[cuda.threadIdx.x >> 5] = c
        sh_r[cuda.threadIdx.x >> 5] = r
    cuda.syncthreads()
    m = sh_m[0]
    c = sh_c[0]
    r = sh_r[0]
    for w in range(1, cuda.blockDim.x >> 5):
        m, c, r = merge_mcr(m, c, r, sh_m[w], sh_c[w], sh_r[w])
    cuda.syncthreads()
    return m, c, r


@cuda.jit(device=True)
def lse_element(m, c, r, v, w):
    """Fold one element x = v with weight w into a log-sum-exp state (w == 0 drops it)."""
    if w != 0:
        return merge_mcr(m, c, r, v, w, w - w)
    return m, c, r


@cuda.jit(device=True)
def lse_store(pm, pc, pr, k, m, c, r):
    pm[k] = m
    # as the NumPy reference: a NaN row has no element equal to its max, so c = 0
    if m != m:
        pc[k] = 0
    else:
        pc[k] = c
    pr[k] = r


@cuda.jit(device=True)
def xent_wt(cls, lab, keep, p, w, labels_mode, eps, eps_c, one):
    """w_c * t_c: the smoothed target of class ``cls`` times its class weight."""
    if labels_mode:
        if not keep:
            return one - one
        t = eps_c
        if cls == lab:
            t = t + (one - eps)
    else:
        t = (one - eps) * p + eps_c
    return w * t


# -- kernels, built per accumulation type ----------------------------------------------------

def _build(ACC):
    """All kernels accumulating in ``ACC`` (numba float32 or float64), keyed by name."""

    # ---- softmax / log_softmax forward ----------------------------------------------------

    def softmax_fwd_warp(x, out, rows, n, log):
        lane = cuda.threadIdx.x & 31
        row = cuda.blockIdx.x * (cuda.blockDim.x >> 5) + (cuda.threadIdx.x >> 5)
        if row >= rows:
            return  # the whole warp leaves: no shuffle below misses a lane
        base = row * n
        vals = cuda.local.array(WARP_ELEMS, ACC)
        m = ACC(-math.inf)
        for k in range(WARP_ELEMS):
            j = lane + 32 * k
            if j < n:
                v = ACC(x[base + j])
                vals[k] = v
                m = nan_max(m, v)
        m = warp_max(m)
        s = ACC(0)
        if math.isfinite(m):
            for k in range(WARP_ELEMS):
                if lane + 32 * k < n:
                    s += ACC(math.exp(vals[k] - m))
        s = warp_sum(s)
        inv_s = ACC(1) / s
        log_s = ACC(math.log(s))
        for k in range(WARP_ELEMS):
            j = lane + 32 * k
            if j < n:
                out[base + j] = softmax_elem(vals[k], m, inv_s, log_s, log)

    def softmax_fwd_block(x, out, n, log):
        # the row is read from global memory once, into shared memory; out may alias x
        # because every read of the row happens before the first barrier
        buf = cuda.shared.array(0, ACC)
        sh_m = cuda.shared.array(32, ACC)
        sh_s = cuda.shared.array(32, ACC)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        base = cuda.blockIdx.x * n
        m = ACC(-math.inf)
        for j in range(tid, n, nt):
            v = ACC(x[base + j])
            buf[j] = v
            m = nan_max(m, v)
        m = block_max(m, sh_m)
        s = ACC(0)
        if math.isfinite(m):
            for j in range(tid, n, nt):
                s += ACC(math.exp(buf[j] - m))
        s = block_sum(s, sh_s)
        inv_s = ACC(1) / s
        log_s = ACC(math.log(s))
        for j in range(tid, n, nt):
            out[base + j] = softmax_elem(buf[j], m, inv_s, log_s, log)

    def softmax_fwd_split(x, pm, ps, n, chunk):
        sh_m = cuda.shared.array(32, ACC)
        sh_s = cuda.shared.array(32, ACC)
        row = cuda.blockIdx.x
        part = cuda.blockIdx.y
        lo = part * chunk
        hi = min(n, lo + chunk)
        base = row * n
        one = ACC(1)
        m = ACC(-math.inf)
        s = ACC(0)
        for j in range(lo + cuda.threadIdx.x, hi, cuda.blockDim.x):
            m, s = merge_ms(m, s, ACC(x[base + j]), one)
        m, s = block_ms(m, s, sh_m, sh_s)
        if cuda.threadIdx.x == 0:
            k = row * cuda.gridDim.y + part
            pm[k] = m
            ps[k] = s

    def softmax_fwd_split_norm(x, out, pm, ps, n, chunk, log):
        row = cuda.blockIdx.x
        part = cuda.blockIdx.y
        nsplit = cuda.gridDim.y
        # every thread folds the partials in the same order: identical (m, s) everywhere
        m = pm[row * nsplit]
        s = ps[row * nsplit]
        for k in range(1, nsplit):
            m, s = merge_ms(m, s, pm[row * nsplit + k], ps[row * nsplit + k])
        inv_s = ACC(1) / s
        log_s = ACC(math.log(s))
        lo = part * chunk
        hi = min(n, lo + chunk)
        base = row * n
        for j in range(lo + cuda.threadIdx.x, hi, cuda.blockDim.x):
            out[base + j] = softmax_elem(ACC(x[base + j]), m, inv_s, log_s, log)

    def softmax_fwd_col(x, out, outer, n, inner, log):
        one = ACC(1)
        for col in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
            o = col // inner
            base = o * n * inner + (col - o * inner)
            m = ACC(-math.inf)
            s = ACC(0)
            for j in range(n):
                m, s = merge_ms(m, s, ACC(x[base + j * inner]), one)
            inv_s = one / s
            log_s = ACC(math.log(s))
            for j in range(n):
                out[base + j * inner] = softmax_elem(ACC(x[base + j * inner]), m, inv_s,
                                                     log_s, log)

    # ---- logsumexp: partial states (m, c, r), then the finish --------------------------

    def logsumexp_warp(x, b, has_b, pm, pc, pr, rows, n):
        lane = cuda.threadIdx.x & 31
        row = cuda.blockIdx.x * (cuda.blockDim.x >> 5) + (cuda.threadIdx.x >> 5)
        if row >= rows:
            return
        base = row * n
        one = ACC(1)
        m = ACC(-math.inf)
        c = ACC(0)
        r = ACC(0)
        for j in range(lane, n, 32):
            w = ACC(b[base + j]) if has_b else one
            m, c, r = lse_element(m, c, r, ACC(x[base + j]), w)
        m, c, r = warp_mcr(m, c, r)
        if lane == 0:
            lse_store(pm, pc, pr, row, m, c, r)

    def logsumexp_block(x, b, has_b, pm, pc, pr, n):
        sh_m = cuda.shared.array(32, ACC)
        sh_c = cuda.shared.array(32, ACC)
        sh_r = cuda.shared.array(32, ACC)
        row = cuda.blockIdx.x
        base = row * n
        one = ACC(1)
        m = ACC(-math.inf)
        c = ACC(0)
        r = ACC(0)
        for j in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            w = ACC(b[base + j]) if has_b else one
            m, c, r = lse_element(m, c, r, ACC(x[base + j]), w)
        m, c, r = block_mcr(m, c, r, sh_m, sh_c, sh_r)
        if cuda.threadIdx.x == 0:
            lse_store(pm, pc, pr, row, m, c, r)

    def logsumexp_split(x, b, has_b, pm, pc, pr, n, chunk):
        sh_m = cuda.shared.array(32, ACC)
        sh_c = cuda.shared.array(32, ACC)
        sh_r = cuda.shared.array(32, ACC)
        row = cuda.blockIdx.x
        part = cuda.blockIdx.y
        lo = part * chunk
        hi = min(n, lo + chunk)
        base = row * n
        one = ACC(1)
        m = ACC(-math.inf)
        c = ACC(0)
        r = ACC(0)
        for j in range(lo + cuda.threadIdx.x, hi, cuda.blockDim.x):
            w = ACC(b[base + j]) if has_b else one
            m, c, r = lse_element(m, c, r, ACC(x[base + j]), w)
        m, c, r = block_mcr(m, c, r, sh_m, sh_c, sh_r)
        if cuda.threadIdx.x == 0:
            lse_store(pm, pc, pr, row * cuda.gridDim.y + part, m, c, r)

    def logsumexp_col(x, b, has_b, pm, pc, pr, outer, n, inner):
        one = ACC(1)
        for col in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
            o = col // inner
            base = o * n * inner + (col - o * inner)
            m = ACC(-math.inf)
            c = ACC(0)
            r = ACC(0)
            for j in range(n):
                w = ACC(b[base + j * inner]) if has_b else one
                m, c, r = lse_element(m, c, r, ACC(x[base + j * inner]), w)
            lse_store(pm, pc, pr, col, m, c, r)

    def logsumexp_merge(pm, pc, pr, nsplit, m_out, c_out, r_out, total):
        # the partial state of each row from its nsplit parts (nsplit == 1: a copy)
        for row in range(cuda.grid(1), total, cuda.gridsize(1)):
            k = row * nsplit
            m = pm[k]
            c = pc[k]
            r = pr[k]
            for p in range(1, nsplit):
                m, c, r = merge_mcr(m, c, r, pm[k + p], pc[k + p], pr[k + p])
            lse_store(m_out, c_out, r_out, row, m, c, r)

    def logsumexp_finish(x, b, has_b, pm, pc, pr, nsplit, out, sgn, want_sign, n, inner,
                         total):
        one = ACC(1)
        for row in range(cuda.grid(1), total, cuda.gridsize(1)):
            k = row * nsplit
            m = pm[k]
            c = pc[k]
            r = pr[k]
            for p in range(1, nsplit):
                m, c, r = merge_mcr(m, c, r, pm[k + p], pc[k + p], pr[k + p])
            q = r / c if r != 0 else r
            sg = sign_of(q + one, one) * sign_of(c, one)
            if q < -one:
                q = -q - 2 * one
            res = ACC(math.log1p(q)) + ACC(math.log(abs(c))) + m
            if not want_sign and sg < 0:
                res = ACC(math.nan)
            if not math.isfinite(res):
                # SciPy's fallback for results that are not finite: the direct, unshifted
                # sum over the whole row (all weights, zeros too).  Rare rows, one thread.
                o = row // inner
                base = o * n * inner + (row - o * inner)
                d = ACC(0)
                for j in range(n):
                    e = ACC(math.exp(ACC(x[base + j * inner])))
                    if has_b:
                        e = ACC(b[base + j * inner]) * e
                    d += e
                if want_sign:
                    sg = sign_of(d, one)
                    d = abs(d)
                res = ACC(math.log(d))
            out[row] = res
            if want_sign:
                sgn[row] = sg

    # ---- backward --------------------------------------------------------------------------

    def softmax_bwd_warp(y, dy, out, rows, n, log):
        lane = cuda.threadIdx.x & 31
        row = cuda.blockIdx.x * (cuda.blockDim.x >> 5) + (cuda.threadIdx.x >> 5)
        if row >= rows:
            return
        base = row * n
        ys = cuda.local.array(WARP_ELEMS, ACC)
        ds = cuda.local.array(WARP_ELEMS, ACC)
        s = ACC(0)
        for k in range(WARP_ELEMS):
            j = lane + 32 * k
            if j < n:
                yv = ACC(y[base + j])
                dv = ACC(dy[base + j])
                ys[k] = yv
                ds[k] = dv
                s += dv if log else dv * yv
        s = warp_sum(s)
        for k in range(WARP_ELEMS):
            j = lane + 32 * k
            if j < n:
                if log:
                    out[base + j] = ds[k] - ACC(math.exp(ys[k])) * s
                else:
                    out[base + j] = ys[k] * (ds[k] - s)

    def softmax_bwd_block(y, dy, out, n, log):
        # streams the row twice; out may alias y or dy: all reads of the first pass end at
        # the barrier inside block_sum, and the second pass reads an element before the
        # same thread writes it
        sh = cuda.shared.array(32, ACC)
        base = cuda.blockIdx.x * n
        s = ACC(0)
        for j in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            dv = ACC(dy[base + j])
            s += dv if log else dv * ACC(y[base + j])
        s = block_sum(s, sh)
        for j in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            yv = ACC(y[base + j])
            dv = ACC(dy[base + j])
            if log:
                out[base + j] = dv - ACC(math.exp(yv)) * s
            else:
                out[base + j] = yv * (dv - s)

    def softmax_bwd_col(y, dy, out, outer, n, inner, log):
        for col in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
            o = col // inner
            base = o * n * inner + (col - o * inner)
            s = ACC(0)
            for j in range(n):
                dv = ACC(dy[base + j * inner])
                s += dv if log else dv * ACC(y[base + j * inner])
            for j in range(n):
                yv = ACC(y[base + j * inner])
                dv = ACC(dy[base + j * inner])
                if log:
                    out[base + j * inner] = dv - ACC(math.exp(yv)) * s
                else:
                    out[base + j * inner] = yv * (dv - s)

    # ---- fused cross-entropy -------------------------------------------------------------
    # Pass 1: the row's (m, s) and W = sum_c w_c t_c.  Pass 2: loss terms and the gradient
    # grad_c = scale * (exp(log_softmax_c) * W - w_c t_c), written where x was just read.

    def xent_warp(x, labels, probs, weight, loss, grad, scale, scale_val, ignore_index,
                  eps, flags, rows, n):
        lane = cuda.threadIdx.x & 31
        row = cuda.blockIdx.x * (cuda.blockDim.x >> 5) + (cuda.threadIdx.x >> 5)
        if row >= rows:
            return
        base = row * n
        one = ACC(1)
        eps_a = ACC(eps)
        eps_c = eps_a / ACC(n)
        lab_mode = (flags & XENT_LABELS) != 0
        lab = labels[row] if lab_mode else 0
        keep = lab != ignore_index
        m = ACC(-math.inf)
        s = ACC(0)
        tot = ACC(0)
        for j in range(lane, n, 32):
            m, s = merge_ms(m, s, ACC(x[base + j]), one)
            w = ACC(weight[j]) if (flags & XENT_WEIGHT) else one
            p = ACC(0) if lab_mode else ACC(probs[base + j])
            tot += xent_wt(j, lab, keep, p, w, lab_mode, eps_a, eps_c, one)
        m, s = warp_ms(m, s)
        tot = warp_sum(tot)
        g = ACC(scale[row]) if (flags & XENT_SCALE_ARRAY) else ACC(scale_val)
        inv_s = one / s
        log_s = ACC(math.log(s))
        acc = ACC(0)
        for j in range(lane, n, 32):
            lsm = softmax_elem(ACC(x[base + j]), m, inv_s, log_s, 1)
            w = ACC(weight[j]) if (flags & XENT_WEIGHT) else one
            p = ACC(0) if lab_mode else ACC(probs[base + j])
            wt = xent_wt(j, lab, keep, p, w, lab_mode, eps_a, eps_c, one)
            if wt != 0:  # 0 * (-inf) would be NaN: a class without target adds nothing
                acc += wt * lsm
            if flags & XENT_GRAD:  # an ignored row is 0, whatever its logits and g
                grad[base + j] = g * (ACC(math.exp(lsm)) * tot - wt) if keep else ACC(0)
        acc = warp_sum(acc)
        if lane == 0:
            loss[row] = -acc

    def xent_block(x, labels, probs, weight, loss, grad, scale, scale_val, ignore_index,
                   eps, flags, n):
        sh_m = cuda.shared.array(32, ACC)
        sh_s = cuda.shared.array(32, ACC)
        sh_t = cuda.shared.array(32, ACC)
        row = cuda.blockIdx.x
        base = row * n
        one = ACC(1)
        eps_a = ACC(eps)
        eps_c = eps_a / ACC(n)
        lab_mode = (flags & XENT_LABELS) != 0
        lab = labels[row] if lab_mode else 0
        keep = lab != ignore_index
        m = ACC(-math.inf)
        s = ACC(0)
        tot = ACC(0)
        for j in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            m, s = merge_ms(m, s, ACC(x[base + j]), one)
            w = ACC(weight[j]) if (flags & XENT_WEIGHT) else one
            p = ACC(0) if lab_mode else ACC(probs[base + j])
            tot += xent_wt(j, lab, keep, p, w, lab_mode, eps_a, eps_c, one)
        m, s = block_ms(m, s, sh_m, sh_s)
        tot = block_sum(tot, sh_t)
        g = ACC(scale[row]) if (flags & XENT_SCALE_ARRAY) else ACC(scale_val)
        inv_s = one / s
        log_s = ACC(math.log(s))
        acc = ACC(0)
        for j in range(cuda.threadIdx.x, n, cuda.blockDim.x):
            lsm = softmax_elem(ACC(x[base + j]), m, inv_s, log_s, 1)
            w = ACC(weight[j]) if (flags & XENT_WEIGHT) else one
            p = ACC(0) if lab_mode else ACC(probs[base + j])
            wt = xent_wt(j, lab, keep, p, w, lab_mode, eps_a, eps_c, one)
            if wt != 0:
                acc += wt * lsm
            if flags & XENT_GRAD:  # an ignored row is 0, whatever its logits and g
                grad[base + j] = g * (ACC(math.exp(lsm)) * tot - wt) if keep else ACC(0)
        acc = block_sum(acc, sh_s)
        if cuda.threadIdx.x == 0:
            loss[row] = -acc

    def xent_col(x, labels, probs, weight, loss, grad, scale, scale_val, ignore_index,
                 eps, flags, outer, n, inner):
        one = ACC(1)
        eps_a = ACC(eps)
        eps_c = eps_a / ACC(n)
        lab_mode = (flags & XENT_LABELS) != 0
        for col in range(cuda.grid(1), outer * inner, cuda.gridsize(1)):
            o = col // inner
            base = o * n * inner + (col - o * inner)
            lab = labels[col] if lab_mode else 0
            keep = lab != ignore_index
            m = ACC(-math.inf)
            s = ACC(0)
            tot = ACC(0)
            for j in range(n):
                m, s = merge_ms(m, s, ACC(x[base + j * inner]), one)
                w = ACC(weight[j]) if (flags & XENT_WEIGHT) else one
                p = ACC(0) if lab_mode else ACC(probs[base + j * inner])
                tot += xent_wt(j, lab, keep, p, w, lab_mode, eps_a, eps_c, one)
            g = ACC(scale[col]) if (flags & XENT_SCALE_ARRAY) else ACC(scale_val)
            inv_s = one / s
            log_s = ACC(math.log(s))
            acc = ACC(0)
            for j in range(n):
                lsm = softmax_elem(ACC(x[base + j * inner]), m, inv_s, log_s, 1)
                w = ACC(weight[j]) if (flags & XENT_WEIGHT) else one
                p = ACC(0) if lab_mode else ACC(probs[base + j * inner])
                wt = xent_wt(j, lab, keep, p, w, lab_mode, eps_a, eps_c, one)
                if wt != 0:
                    acc += wt * lsm
                if flags & XENT_GRAD:
                    grad[base + j * inner] = (g * (ACC(math.exp(lsm)) * tot - wt) if keep
                                              else ACC(0))
            loss[col] = -acc

    fns = [softmax_fwd_warp, softmax_fwd_block, softmax_fwd_split, softmax_fwd_split_norm,
           softmax_fwd_col, logsumexp_warp, logsumexp_block, logsumexp_split, logsumexp_col,
           logsumexp_merge, logsumexp_finish, softmax_bwd_warp, softmax_bwd_block,
           softmax_bwd_col, xent_warp, xent_block, xent_col]
    return {f.__name__: f for f in fns}


#: kernel names, as in kernels_cu/
KERNEL_NAMES = tuple(_build(float32))

_ACC = {np.dtype(np.float16): float32, np.dtype(np.float32): float32,
        np.dtype(np.float64): float64}
_py_funcs = {}
_compiled = {}


def acc_dtype(dtype):
    """The NumPy accumulation dtype for an input dtype (float16 accumulates in float32)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


def py_func(name, dtype):
    """The undecorated Python function of kernel ``name`` for input ``dtype``."""
    acc = _ACC[np.dtype(dtype)]
    funcs = _py_funcs.get(acc)
    if funcs is None:
        funcs = _py_funcs[acc] = _build(acc)
    return funcs[name]


def get_kernel(name, dtype):
    """The ``cuda.jit`` kernel ``name`` for input ``dtype``; compiled lazily per signature
    on first launch and cached on disk (``cache=True``)."""
    key = (name, _ACC[np.dtype(dtype)])
    k = _compiled.get(key)
    if k is None:
        k = _compiled[key] = cuda.jit(cache=True)(py_func(name, dtype))
    return k
