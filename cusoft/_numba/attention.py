"""Numba-CUDA twin of ``kernels_cu/attention.cu`` (attention_fwd): same algorithm, same layout.

A block owns BM query rows of one (batch, head) and walks the K/V tiles; Q, the K-or-V tile,
the logits/probabilities P and the per-row rescale factors live in dynamic shared memory, the
BM x Dv accumulator in the threads' local arrays; the row owner (thread < BM) keeps the running
(m, l).  Causal tiles above the diagonal are skipped by the loop bound; mask and bias are read
through four element strides (0 on broadcast axes).  Natural-log domain (``math.exp``), where
the CUDA C kernel uses exp2 with log2(e) folded into the scale.

Tiles differ from the CUDA C table: Numba cannot opt a kernel into more than 48 KB of dynamic
shared memory, so ``TILES`` keeps every variant under it (and uses 64 threads for float64 with
D > 128).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from numba import cuda, float32, float64

#: (accumulation itemsize, bucket) -> (threads, BM, BN); shared bytes stay under 48 KB
TILES = {
    (4, 32): (128, 64, 32), (4, 64): (128, 32, 32), (4, 128): (128, 16, 32),
    (4, 256): (128, 16, 16),
    (8, 32): (128, 32, 32), (8, 64): (128, 16, 32), (8, 128): (128, 16, 16),
    (8, 256): (64, 8, 8),
}
BUCKETS = (32, 64, 128, 256)


def launch_config(dtype, B, Hq, Lq, D, Dv):
    """(key, grid, block, shared bytes) for one call; key selects the compiled kernel."""
    dtype = np.dtype(dtype)
    bucket = next(b for b in BUCKETS if max(D, Dv) <= b)
    acc = 8 if dtype == np.float64 else 4
    nt, bm, bn = TILES[(acc, bucket)]
    shared = acc * (bm * bucket + bn * (bucket + 1) + bm * (bn + 1) + bm)
    return (dtype.name, bucket, nt, bm, bn), (B * Hq, -(-Lq // bm)), (nt,), shared


@functools.lru_cache(None)
def _kernel(key):
    dtname, DB, NT, BM, BN = key
    acc = float64 if dtname == "float64" else float32
    TCS = min(BN, 32)
    NRS = NT // TCS
    RS = BM // NRS
    CS = BN // TCS
    TCO = min(DB, 32)
    NRO = NT // TCO
    RO = BM // NRO
    CO = DB // TCO
    KLD = DB + 1
    PLD = BN + 1
    OFF_KV = BM * DB
    OFF_P = OFF_KV + BN * KLD
    OFF_A = OFF_P + BM * PLD
    assert RS >= 1 and RS * NRS == BM and CS * TCS == BN
    assert RO >= 1 and RO * NRO == BM and CO * TCO == DB
    NEG = -math.inf

    @cuda.jit
    def attention_fwd(q, k, v, mask, bias, out, lse, Hq, Hkv, Lq, Lk, D, Dv, scale, causal,
                      has_mask, has_bias, ms0, ms1, ms2, ms3, bs0, bs1, bs2, bs3):
        sm = cuda.shared.array(0, acc)
        tid = cuda.threadIdx.x
        bh = cuda.blockIdx.x
        b = bh // Hq
        h = bh - b * Hq
        hk = h // (Hq // Hkv)
        i0 = cuda.blockIdx.y * BM
        offset = Lk - Lq
        qbase = (bh * Lq + i0) * D
        kbase = (b * Hkv + hk) * Lk * D
        vbase = (b * Hkv + hk) * Lk * Dv
        mbase = b * ms0 + h * ms1
        bbase = b * bs0 + h * bs1

        for idx in range(tid, BM * DB, NT):
            r = idx // DB
            d = idx - r * DB
            sm[idx] = acc(q[qbase + r * D + d]) if (i0 + r < Lq and d < D) else acc(0)

        tsc = tid % TCS
        tsr = tid // TCS
        toc = tid % TCO
        tor = tid // TCO
        o = cuda.local.array((RO, CO), acc)
        for i in range(RO):
            for c in range(CO):
                o[i, c] = 0
        s = cuda.local.array((RS, CS), acc)
        m_run = acc(NEG)
        l_run = acc(0)

        kend = Lk
        if causal:
            last = min(i0 + BM - 1, Lq - 1)
            kend = max(0, min(Lk, last + offset + 1))

        for n0 in range(0, kend, BN):
            cuda.syncthreads()
            for idx in range(tid, BN * DB, NT):
                j = idx // DB
                d = idx - j * DB
                sm[OFF_KV + j * KLD + d] = (acc(k[kbase + (n0 + j) * D + d])
                                            if (n0 + j < kend and d < D) else acc(0))
            cuda.syncthreads()
            for i in range(RS):
                for c in range(CS):
                    s[i, c] = 0
            for d in range(D):
                for i in range(RS):
                    qv = sm[(tsr + i * NRS) * DB + d]
                    for c in range(CS):
                        s[i, c] += qv * sm[OFF_KV + (tsc + c * TCS) * KLD + d]
            for i in range(RS):
                r = tsr + i * NRS
                qi = i0 + r
                for c in range(CS):
                    cj = tsc + c * TCS
                    kj = n0 + cj
                    keep = qi < Lq and kj < kend and (not causal or kj <= qi + offset)
                    if keep and has_mask:
                        keep = mask[mbase + qi * ms2 + kj * ms3] != 0
                    val = s[i, c] * scale
                    if keep and has_bias:
                        val += acc(bias[bbase + qi * bs2 + kj * bs3])
                    sm[OFF_P + r * PLD + cj] = val if keep else acc(NEG)
            cuda.syncthreads()
            for idx in range(tid, BN * DB, NT):
                j = idx // DB
                d = idx - j * DB
                sm[OFF_KV + j * KLD + d] = (acc(v[vbase + (n0 + j) * Dv + d])
                                            if (n0 + j < kend and d < Dv) else acc(0))
            if tid < BM:
                mt = m_run
                for j in range(BN):
                    mt = max(mt, sm[OFF_P + tid * PLD + j])
                # a row that has seen only masked keys shifts by 0: exp(-inf) = 0, no NaN
                shift = acc(0) if mt == NEG else mt
                alpha = math.exp(m_run - shift)
                tot = acc(0)
                for j in range(BN):
                    p = math.exp(sm[OFF_P + tid * PLD + j] - shift)
                    sm[OFF_P + tid * PLD + j] = p
                    tot += p
                l_run = l_run * alpha + tot
                m_run = mt
                sm[OFF_A + tid] = alpha
            cuda.syncthreads()
            nvalid = min(BN, kend - n0)
            for i in range(RO):
                alpha = sm[OFF_A + tor + i * NRO]
                for c in range(CO):
                    o[i, c] *= alpha
            for j in range(nvalid):
                for i in range(RO):
                    p = sm[OFF_P + (tor + i * NRO) * PLD + j]
                    for c in range(CO):
                        o[i, c] += p * sm[OFF_KV + j * KLD + toc + c * TCO]

        cuda.syncthreads()
        if tid < BM:
            seen = l_run != 0  # NaN propagates
            sm[OFF_A + tid] = acc(1) / l_run if seen else acc(0)
            if i0 + tid < Lq:
                lse[bh * Lq + i0 + tid] = m_run + math.log(l_run) if seen else acc(NEG)
        cuda.syncthreads()
        for i in range(RO):
            r = tor + i * NRO
            if i0 + r < Lq:
                inv = sm[OFF_A + r]
                for c in range(CO):
                    d = toc + c * TCO
                    if d < Dv:
                        out[(bh * Lq + i0 + r) * Dv + d] = o[i, c] * inv

    return attention_fwd


def launch(q, k, v, mask, bias, out, lse, scale, causal, stream=0):
    """Canonical device arrays as for ``cusoft._attention_launch.launch_attention``; mask and
    bias are ``Operand``s whose ``array`` is already on the device (or None)."""
    from . import arrays

    B, Hq, Lq, D = (int(s) for s in q.shape)
    Hkv, Lk, Dv = int(k.shape[1]), int(k.shape[2]), int(v.shape[3])
    key, grid, block, shared = launch_config(q.dtype, B, Hq, Lq, D, Dv)
    if grid[1] > 65535:
        raise ValueError(f"Lq = {Lq} needs more query tiles than CUDA's grid limit; split it")
    dummy = arrays.device_scratch((1,), np.uint8, stream) if mask is None or bias is None \
        else None
    dummyb = arrays.device_scratch((1,), q.dtype, stream) if bias is None else None
    mk = arrays.flat(mask.array) if mask is not None else dummy
    bs = arrays.flat(bias.array) if bias is not None else dummyb
    ms = mask.strides if mask is not None else (0, 0, 0, 0)
    bst = bias.strides if bias is not None else (0, 0, 0, 0)
    fn = _kernel(key)
    fn[grid, block, stream, shared](
        arrays.flat(q), arrays.flat(k), arrays.flat(v), mk, bs, arrays.flat(out),
        arrays.flat(lse), Hq, Hkv, Lq, Lk, D, Dv, float(scale), bool(causal),
        mask is not None, bias is not None, *(int(s) for s in ms), *(int(s) for s in bst))
