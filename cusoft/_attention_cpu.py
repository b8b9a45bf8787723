"""Attention on the host: the tiled online path and the materialised ("naive") path.

Both take the canonical layout built by ``cusoft/_attention.py``:

* ``q``  C-contiguous ``(B, Hq, Lq, D)``; ``k`` ``(B, Hkv, Lk, D)``; ``v`` ``(B, Hkv, Lk, Dv)``,
  one storage dtype (float16, float32 or float64), ``Hq % Hkv == 0``;
* ``mask`` ``None`` or a boolean ``(B, Hq, Lq, Lk)`` *view* whose broadcast axes have stride 0,
  ``bias`` ``None`` or a view like it in the storage dtype: neither is ever expanded;
* ``out`` ``(B, Hq, Lq, Dv)`` in the storage dtype and ``lse`` ``(B, Hq, Lq)`` in the
  accumulation dtype (float32 for float16 storage), both written.

The tiled path keeps, per block of query rows, the running row maximum ``m``, the running sum
``l`` of ``exp(s - m)`` and the unnormalised accumulator ``acc``; each key tile rescales them by
``exp(m_old - m_new)``.  Memory is ``O(rows * (D + Dv + tile))`` instead of ``O(Lq * Lk)``.
The naive path materialises ``Q Kᵀ``; it is the memory-wall baseline and works on any array
module with ``matmul`` (NumPy, CuPy).
"""

from __future__ import annotations

import numpy as np

#: keys per tile and query rows (times the GQA group) per block of the tiled path: a
#: (rows, keys) float32 tile is 4 MiB, large enough that one BLAS call hides the Python loop
_KEY_TILE = 1024
_ROW_TILE = 1024


def acc_dtype(dtype):
    """The accumulation (and lse) dtype for a storage dtype: float16 accumulates in float32."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype == np.float16 else dtype


class _OnlineRows:
    """The online-softmax state of a block of rows: (m, l, acc) and its rescaling.

    ``m`` is the running maximum of the scaled logits, ``l`` the running sum of
    ``exp(s - m)``, ``acc`` the running sum of ``exp(s - m) * v``.  A row that has seen only
    masked keys keeps ``m = -inf``; the shift then uses 0 instead of ``m`` so that
    ``-inf - (-inf)`` (NaN) never happens and its weights stay exactly 0.
    """

    def __init__(self, xp, lead, dv, dtype):
        self.xp = xp
        self.m = xp.full(lead, -np.inf, dtype=dtype)
        self.l = xp.zeros(lead, dtype=dtype)
        self.acc = xp.zeros(lead + (dv,), dtype=dtype)

    def update(self, s, vt):
        """Fold in one tile: ``s`` (..., rows, keys) scaled logits (-inf = masked),
        ``vt`` (..., keys, Dv) values of those keys."""
        xp = self.xp
        m_new = xp.maximum(self.m, s.max(axis=-1))
        shift = xp.where(m_new == -np.inf, 0, m_new)
        p = xp.exp(s - shift[..., None])
        alpha = xp.exp(self.m - shift)
        self.l = self.l * alpha + p.sum(axis=-1)
        self.acc = self.acc * alpha[..., None] + p @ vt
        self.m = m_new

    def finish(self):
        """``(out, lse)``: acc / l, and m + log(l); a row with l == 0 gives 0 and -inf."""
        xp = self.xp
        seen = self.l != 0  # 0: every key masked; NaN (a NaN logit) propagates
        inv = xp.where(seen, 1 / xp.where(seen, self.l, 1), 0)
        out = self.acc * inv[..., None]
        lse = xp.where(seen, self.m + xp.log(xp.where(seen, self.l, 1)), -np.inf)
        return out, lse


def _logits(q, kt, scale, mask, bias, i0, i1, j0, j1, causal, offset, xp):
    """Scaled logits of rows [i0, i1) against keys [j0, j1), -inf where masked.

    ``q`` (G, rows, D) and ``kt`` (D, keys) are already in the accumulation dtype;
    ``mask``/``bias`` are (G, Lq, Lk) broadcast views of one (batch, kv-head) group."""
    s = q @ kt
    s *= scale
    if bias is not None:
        s += bias[:, i0:i1, j0:j1]
    if mask is not None:
        s = xp.where(mask[:, i0:i1, j0:j1], s, -np.inf)
    if causal and j1 - 1 > i0 + offset:
        # query i sees key j <= i + offset (bottom-right aligned); only the tiles that
        # straddle the diagonal pay for this, the ones above it were never computed
        ii = xp.arange(i0, i1)[:, None]
        jj = xp.arange(j0, j1)[None, :]
        s = xp.where(jj <= ii + offset, s, -np.inf)
    return s


def attention_tiled(q, k, v, mask, bias, out, lse, scale, causal):
    """The online (m, l, acc) path, one (batch, kv-head) group and row block at a time."""
    B, Hq, Lq, _ = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    adt = acc_dtype(q.dtype)
    offset = Lk - Lq
    rows = max(1, _ROW_TILE // G)
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        for b in range(B):
            for hk in range(Hkv):
                hs = slice(hk * G, (hk + 1) * G)
                mk = None if mask is None else mask[b, hs]
                bs = None if bias is None else bias[b, hs]
                kk = k[b, hk]
                vv = v[b, hk]
                for i0 in range(0, Lq, rows):
                    i1 = min(Lq, i0 + rows)
                    qb = q[b, hs, i0:i1].astype(adt, copy=False)
                    state = _OnlineRows(np, (G, i1 - i0), v.shape[-1], adt)
                    kend = min(Lk, i1 + offset) if causal else Lk
                    for j0 in range(0, max(kend, 0), _KEY_TILE):
                        j1 = min(kend, j0 + _KEY_TILE)
                        kt = kk[j0:j1].astype(adt, copy=False).T
                        s = _logits(qb, kt, scale, mk, bs, i0, i1, j0, j1, causal, offset, np)
                        state.update(s, vv[j0:j1].astype(adt, copy=False))
                    o, ls = state.finish()
                    out[b, hs, i0:i1] = o
                    lse[b, hs, i0:i1] = ls


def attention_naive(xp, q, k, v, mask, bias, out, lse, scale, causal):
    """The materialised path: all of ``softmax(Q Kᵀ * scale + bias) V`` in one go, with the
    (B, Hq, Lq, Lk) logits in memory.  Same special values as the tiled path."""
    B, Hq, Lq, D = q.shape
    Hkv, Lk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    adt = acc_dtype(q.dtype)
    q5 = q.astype(adt, copy=False).reshape(B, Hkv, G, Lq, D)
    k5 = k.astype(adt, copy=False)[:, :, None]
    v5 = v.astype(adt, copy=False)[:, :, None]
    s = q5 @ xp.swapaxes(k5, -1, -2)
    s *= scale
    if bias is not None:
        s += bias.reshape(B, Hkv, G, Lq, Lk)
    if mask is not None:
        s = xp.where(mask.reshape(B, Hkv, G, Lq, Lk), s, -np.inf)
    if causal:
        keep = xp.arange(Lk)[None, :] <= xp.arange(Lq)[:, None] + (Lk - Lq)
        s = xp.where(keep, s, -np.inf)
    if Lk == 0:
        out[...] = 0
        lse[...] = -np.inf
        return
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        m = s.max(axis=-1)
        shift = xp.where(m == -np.inf, 0, m)
        p = xp.exp(s - shift[..., None])
        l = p.sum(axis=-1)
        seen = l != 0
        safe = xp.where(seen, l, 1)
        o = (p @ v5) * xp.where(seen, 1 / safe, 0)[..., None]
        ls = xp.where(seen, m + xp.log(safe), -np.inf)
    out[...] = o.reshape(out.shape)
    lse[...] = ls.reshape(lse.shape)

