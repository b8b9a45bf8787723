"""Dask arrays: the softmax family over chunked arrays, on one machine or a cluster.

Every function returns a lazy ``dask.array`` (call ``.compute()`` or ``.persist()``).  Chunks
may be NumPy or CuPy arrays; each task runs on its chunk's own array module, so CuPy chunks
never leave their GPU.

How a call becomes a graph
--------------------------
* **The reduced axes lie in one chunk** (``x.numblocks[a] == 1`` for every reduced axis):
  ``map_blocks`` runs the public cusoft function on each chunk, which picks the chunk's
  backend (NumPy -> ``cpu``, CuPy -> ``cupy``).  One task per chunk, no communication.
* **A reduced axis spans several chunks**: a ``dask.array.reduction``

  - *chunk* step: the backend's ``partial`` on the chunk (canonical layout, see
    ``cusoft/_backend.py``) gives the mergeable state per row, a dict of arrays
    ``{"m", "c", "r"}`` (max, weight at the max, weighted sum of ``exp(x - m)`` elsewhere)
    — a dict because CuPy has no structured dtypes;
  - *combine*/*aggregate* steps: the exact online merge (the smaller maxima's terms move
    into ``r``; ``inf - inf`` never happens), tree-reduced ``split_every`` states at a time;
  - then a ``blockwise`` normalisation of every chunk with the broadcast final state.

  No task holds more than one input chunk plus a few per-row states, and no task depends on
  all chunks except the tiny merge tasks: ``axis=None`` on 10^9 elements is fine.  The axis
  is never rechunked into one chunk.  The input is read twice (states, then
  normalisation); Dask keeps the chunks between the two passes unless they are cheap to
  reload (``persist`` the input, or build it from storage).

logsumexp's fallback
--------------------
SciPy recomputes a result that is not finite as ``log(D)``, ``D = sum(b * exp(x))``
unshifted (``nan`` for ``inf - inf``, ``-inf`` for an all -inf slice, ...).  The logsumexp
state therefore carries a fourth field ``"d"`` that the merge adds up.  A chunk computes it
directly — the same unshifted sum as SciPy — for the rows whose max is not finite or where
a zero weight meets ``+inf``/``nan`` (SciPy's ``0 * inf``); elsewhere it is derived as
``exp(m) * (c + r)``, the direct sum up to rounding, so the common case costs no second
``exp`` pass.  Softmax states have no ``"d"`` (their special values depend on ``m`` alone).

Beyond one GPU
--------------
Several GPUs of one node (``pip install dask-cuda``)::

    from dask_cuda import LocalCUDACluster
    from distributed import Client
    import cupy, dask.array as da, cusoft

    client = Client(LocalCUDACluster())              # one worker per visible GPU
    x = da.random.random((2**15, 2**15), chunks=(4096, 2**15)).map_blocks(cupy.asarray)
    y = cusoft.softmax(x, axis=1)                    # rows in one chunk: map_blocks
    lse = cusoft.logsumexp(x)                        # axis=None: tree of partial states
    lse.compute()

Several nodes: start ``dask scheduler`` on one host and ``dask cuda worker
tcp://scheduler:8786`` (or ``dask worker`` for CPU nodes) on every node, then
``Client("tcp://scheduler:8786")``; the code above runs unchanged.  Only the per-row
states (a few floats per row and chunk) cross the network besides the chunks themselves.
Give each chunk ~100 MB–1 GB on GPUs so a task keeps the device busy.

Attention: split-KV
-------------------
``attention(q, k, v, ...)`` with any of q, k, v, mask, bias a Dask array (the others NumPy or
CuPy) is the Flash-Decoding scheme on a graph, never a rechunk of K/V into one chunk:

* **Layout.**  q may be chunked along batch, heads and queries (independent blocks); k and v
  along the key axis Lk, and along batch/heads consistently with q.  Query head blocks are
  cut only at multiples of the GQA group ``G = Hq // Hkv`` (query heads ``[G a, G b)`` meet
  key/value heads ``[a, b)``).  Every axis takes the coarsest refinement of the chunks the
  Dask inputs already have; NumPy/CuPy inputs are wrapped with those chunks.  A mask or
  bias follows q on its batch/head/query axes and k on its key axis; its broadcast
  (size-1) axes stay size 1, so a ``(Lq, Lk)`` mask is never expanded per head.
* **Parts.**  One task per (query block, key/value chunk) runs the public ``attention``
  with ``return_lse=True`` on the chunk's own backend (NumPy -> ``cpu``, CuPy -> ``cupy``;
  ``backend=`` other than "dask" names the chunk backend, e.g. ``"simt"``).  It reads one
  q block, one k and one v chunk and their mask/bias blocks, and returns ``(out, lse)``
  with ``out`` in the accumulation dtype (float16 merges in float32).
* **Merge.**  ``merge_attention``'s exact rule (weights ``exp(lse_c - lse)``; a chunk with
  ``lse = -inf`` weighs 0; all-``-inf`` rows give zeros and ``-inf``, never NaN), as a tree
  of ``split_every`` parts per task (``SPLIT_EVERY`` or Dask's ``split_every``, default 4).
  Merge tasks hold ``(..., Hq_blk, Lq_blk, Dv)`` states, never a key/value chunk.
* **Causal.**  The diagonal is aligned bottom-right over the *whole* key axis: query ``r``
  sees global key ``j <= r + Lk - Lq``.  For rows ``[r0, r1)`` and keys ``[o, o + n)``
  a chunk entirely above the diagonal (``o > r1 - 1 + Lk - Lq``) has no task at all (it
  would contribute ``(0, -inf)``); one entirely below it runs non-causal; a chunk that
  straddles it passes the private ``_causal_offset = r0 - o + Lk - Lq`` to
  ``cusoft.attention``, which rewrites it as ordinary bottom-right causal calls (dropping
  keys past the last visible one, or splitting off the rows that see every key), so the
  NumPy tiles and the CuPy/simt kernels still skip tiles above the diagonal with no
  kernel change; the numba backend gets the diagonal as a boolean mask instead.

Work is ``O(#query blocks x #key chunks)`` tasks (fewer when causal); each q block is read
once per key chunk, so long queries against a long cache want large query blocks.
"""

from __future__ import annotations

import itertools
import math
import operator

import numpy as np

from . import _dispatch
from . import _numerics as nm
from . import _validate as v
from ._logsumexp import _result_dtype, _xp_of

#: states merged per combine task; ``None`` takes Dask's ``split_every`` setting
SPLIT_EVERY = None

_ERR = dict(divide="ignore", invalid="ignore", over="ignore", under="ignore")
_NO_IGNORE = -(2 ** 63)


# -- helpers --------------------------------------------------------------------------------

def _da():
    import dask.array as da

    return da


def _is_dask(a):
    return _dispatch.array_kind(a) == "dask"


def _backend_name(a):
    return "cupy" if _xp_of(a).__name__ == "cupy" else "cpu"


def _state_dtype(dt):
    return np.dtype(np.float32) if np.dtype(dt) == np.float16 else np.dtype(dt)


def _meta(x, ndim, dtype):
    from dask.array.utils import meta_from_array

    return meta_from_array(x, ndim=ndim, dtype=dtype)


def _one_chunk(x, axes):
    return all(x.numblocks[a] == 1 for a in axes)


def _keep_shape(shape, axes):
    return tuple(1 if i in axes else s for i, s in enumerate(shape))


def _drop_shape(shape, axes):
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def _squeeze(a, axes):
    return a.squeeze(axis=axes) if axes else a


def _floor_float(dt, fname):
    dt = np.dtype(dt)
    if dt.kind in "biu":
        return np.dtype(np.float64)
    if dt not in v._FLOATS:
        raise TypeError(f"cusoft.{fname}: dtype {dt} is not supported on Dask arrays whose "
                        f"reduced axis spans several chunks; use float16, float32 or float64")
    return dt


# -- the mergeable state, per chunk and merged ------------------------------------------------

def _chunk_state(x, b=None, *, axis, keepdims=True, dtype, with_d=False,
                 computing_meta=False):
    """(m, c, r[, d]) of one chunk over ``axis``, keepdims-shaped, as a dict."""
    xp = _xp_of(x)
    axes = tuple(sorted(axis))
    sdt = _state_dtype(dtype)
    kshape = _keep_shape(x.shape, axes)
    keys = ("m", "c", "r", "d") if with_d else ("m", "c", "r")
    if computing_meta:
        # Dask's meta probe wants an array; real blocks carry the dict
        return xp.empty((0,) * x.ndim, sdt)
    if x.size == 0:
        st = {k: xp.zeros(kshape, sdt) for k in keys}
        st["m"] = xp.full(kshape, -np.inf, sdt)
        return st
    if b is not None:
        # a NumPy weight next to CuPy data moves to the chunk's device
        b = xp.broadcast_to(xp.asarray(b), x.shape)
    x3, _ = v.to_canonical(xp, x.astype(dtype, copy=False), axes)
    b3 = None if b is None else v.to_canonical(xp, b.astype(dtype, copy=False), axes)[0]
    m = xp.empty((x3.shape[0], x3.shape[2]), sdt)
    c = xp.empty_like(m)
    r = xp.empty_like(m)
    _dispatch.get_backend(_backend_name(x)).partial(x3, b3, m, c, r)
    st = {"m": m, "c": c, "r": r}
    if with_d:
        st["d"] = _direct_sum(xp, x3, b3, m, c, r, sdt)
    return {k: a.reshape(kshape) for k, a in st.items()}


def _direct_sum(xp, x3, b3, m, c, r, sdt):
    # SciPy's fallback sum(b*exp(x)), exact where it can differ from exp(m)*(c+r) by more
    # than rounding: a non-finite max, or 0*inf / 0*nan from a dropped element.
    with np.errstate(**_ERR):
        d = xp.exp(m) * (c + r)
        need = ~xp.isfinite(m)
        if b3 is not None:
            need |= xp.any((b3 == 0) & ~(x3 < np.inf), axis=1)
        if bool(need.any()):
            e = xp.exp(x3.astype(sdt, copy=False))
            if b3 is not None:
                e = b3.astype(sdt, copy=False) * e
            d = xp.where(need, e.sum(axis=1), d)
    return d


def _merge(st, axis, keepdims=True):
    """Merge states concatenated along ``axis`` (Dask's combine step); exact online rule."""
    m = st["m"]
    xp = _xp_of(m)
    axis = tuple(axis)
    with np.errstate(**_ERR):
        big = xp.max(m, axis=axis, keepdims=True)
        at = m == big
        # where m < M the weight is exp(m - M) in [0, 1); m == M (±inf included) keeps c
        w = xp.exp(xp.where(at, 0, m - big)).astype(m.dtype, copy=False)
        c = xp.sum(xp.where(at, st["c"], 0), axis=axis, keepdims=True)
        r = xp.sum(xp.where(at, st["r"], (st["c"] + st["r"]) * w), axis=axis, keepdims=True)
        nan = xp.isnan(big)
        c = xp.where(nan, np.nan, c).astype(m.dtype, copy=False)
        r = xp.where(nan, np.nan, r).astype(m.dtype, copy=False)
        out = {"m": big, "c": c, "r": r}
        if "d" in st:
            out["d"] = xp.sum(st["d"], axis=axis, keepdims=True)
    if not keepdims:
        out = {k: a.squeeze(axis=axis) for k, a in out.items()}
    return out


def _lse_from_state(st, return_sign, dtype):
    """SciPy's finish (``_numerics.logsumexp_from_partial``) on a merged Dask state, whose
    direct sum ``d`` travels with it."""
    d = st["d"]
    out, sgn = nm.logsumexp_from_partial(st["m"], st["c"], st["r"], lambda bad: d[bad],
                                         return_sign, xp=_xp_of(st["m"]))
    return out.astype(dtype, copy=False), sgn.astype(dtype, copy=False)


def _agg_lse(st, axis, keepdims, return_sign, out_dtype):
    # not called ``dtype``: da.reduction would pass its own (the state dtype) into it
    st = _merge(st, axis, keepdims)
    out, sgn = _lse_from_state(st, return_sign, out_dtype)
    return {"out": out, "sgn": sgn}


def _agg_norm(st, axis, keepdims):
    """The broadcast state of the normalisation pass: max and total sum."""
    st = _merge(st, axis, keepdims)
    return {"m": st["m"], "s": st["c"] + st["r"]}


def _reduce_state(x, b, axes, aggregate, dtype, keepdims, with_d):
    """A ``da.reduction`` whose blocks are the dicts ``aggregate`` returns (private)."""
    import functools

    da = _da()
    sdt = _state_dtype(dtype)
    chunk = functools.partial(_chunk_state, dtype=dtype, with_d=with_d)
    return da.reduction(x, chunk, aggregate, axis=axes, keepdims=keepdims, dtype=sdt,
                        combine=_merge, split_every=SPLIT_EVERY, concatenate=True,
                        meta=_meta(x, x.ndim if keepdims else x.ndim - len(axes), sdt),
                        weights=b, name="cusoft-state")


def _field(arr, key, dtype, meta):
    return arr.map_blocks(operator.getitem, key, dtype=dtype, meta=meta,
                          token=f"cusoft-{key}")


def _norm_state(x, axes, dtype):
    """Dask array (keepdims; numblocks 1 along ``axes``) of {"m", "s"} dict blocks."""
    return _reduce_state(x, None, axes, _agg_norm, dtype, True, False)


# -- softmax / log_softmax --------------------------------------------------------------------

def _normalise(x, st, *, log, dtype):
    xp = _xp_of(x)
    m, s = st["m"], st["s"]
    with np.errstate(**_ERR):
        t = x.astype(m.dtype, copy=True)
        t -= m
        if log:
            # x - m - log(s) gives SciPy's special values by itself: NaN rows stay NaN,
            # an all -inf row is -inf - -inf = NaN, a +inf max is NaN at +inf, -inf elsewhere.
            t -= xp.log(s)
        else:
            xp.exp(t, out=t)
            t *= xp.where(xp.isfinite(m), 1 / s, np.nan).astype(t.dtype, copy=False)
    return t.astype(dtype, copy=False)


def _softmax_block(x, *, axis, log):
    # the chunk's own backend, named: a ``use_backend("dask")`` around compute() must not
    # send the chunk back here
    from ._softmax import log_softmax, softmax as pub

    return (log_softmax if log else pub)(x, axis=axis, backend=_backend_name(x))


def softmax(x, axis=None, *, log=False, out=None):
    """softmax / log_softmax of a Dask array: lazy, chunk by chunk (see module docstring)."""
    import functools

    da = _da()
    fname = "log_softmax" if log else "softmax"
    x = da.asarray(x)
    dt = v.softmax_dtype(np.dtype(x.dtype))
    axes = v.normalize_axes(axis, x.ndim, fname)
    scalar = x.ndim == 0
    if scalar:
        x, axes = x.reshape(1), (0,)
    n = math.prod(x.shape[a] for a in axes)
    if n == 0:
        raise ValueError("zero-size array to reduction operation maximum which has no identity")
    meta = _meta(x, x.ndim, dt)
    if x.size == 0 or _one_chunk(x, axes):
        res = x.map_blocks(functools.partial(_softmax_block, axis=axes, log=log), dtype=dt,
                           meta=meta, token=f"cusoft-{fname}")
    else:
        dt = _floor_float(dt, fname)
        st = _norm_state(x, axes, dt)
        idx = tuple(range(x.ndim))
        res = da.blockwise(functools.partial(_normalise, log=log, dtype=dt), idx, x, idx, st,
                           idx, dtype=dt, meta=meta,
                           align_arrays=False, token=f"cusoft-{fname}-norm")
    if scalar:
        res = res.reshape(())
    if out is not None:
        return _handle_out(fname, out, res)
    return res


def _handle_out(fname, out, res):
    if not _is_dask(out):
        raise TypeError(f"cusoft.{fname}: out must be a Dask array when x is one, got "
                        f"{type(out).__name__}")
    if tuple(out.shape) != tuple(res.shape):
        raise ValueError(f"cusoft.{fname}: out has shape {tuple(out.shape)}, the result has "
                         f"shape {tuple(res.shape)}")
    if np.dtype(out.dtype) != np.dtype(res.dtype):
        raise TypeError(f"cusoft.{fname}: out has dtype {np.dtype(out.dtype)}, the result has "
                        f"dtype {np.dtype(res.dtype)}; pass an out of that dtype")
    from dask.array.core import handle_out

    return handle_out(out, res)


# -- logsumexp and its partial state ---------------------------------------------------------

def _lse_block(a, b=None, *, axis, return_sign):
    # rows in one chunk: the public function picks the chunk's backend; keepdims so every
    # block keeps its rank, and (res, sign) travel stacked along a new leading axis
    from ._logsumexp import logsumexp as pub

    xp = _xp_of(a)
    res = pub(a, axis=axis, b=b, keepdims=True, return_sign=return_sign,
              backend=_backend_name(a))
    if not return_sign:
        return xp.asarray(res)
    return xp.stack([xp.asarray(res[0]), xp.asarray(res[1])])


def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False):
    """logsumexp of a Dask array (``b``: Dask, NumPy/CuPy or scalar, broadcasting)."""
    da = _da()
    fname = "logsumexp"
    if b is not None:
        bmeta = b if hasattr(b, "dtype") else np.asarray(b)
        dt = _result_dtype(a if hasattr(a, "dtype") else np.asarray(a), b, bmeta)
        try:
            shape = np.broadcast_shapes(tuple(np.shape(a)), tuple(np.shape(b)))
        except ValueError:
            raise ValueError(
                f"cusoft.logsumexp: a with shape {tuple(np.shape(a))} and b with shape "
                f"{tuple(np.shape(b))} cannot be broadcast together") from None
        a = da.asarray(a)
        # the chunks see b in the result dtype, so a weak Python-scalar b stays weak
        b = da.asarray(bmeta if not _is_dask(b) else b).astype(dt)
        if len(shape) == 0:
            a, b = a.reshape(1), b.reshape(1)
        # b may broadcast a too; the common chunks refine both, never merge an axis
        a, b = da.broadcast_arrays(a, b)
    else:
        a = da.asarray(a)
        dt = _result_dtype(a, None, None)
        if a.ndim == 0:
            a = a.reshape(1)
    shape = tuple(a.shape)
    axes = v.normalize_axes(axis, len(shape), fname)
    rshape = _keep_shape(shape, axes) if keepdims else _drop_shape(shape, axes)
    if a.size == 0:
        res = da.full(rshape, -np.inf, dtype=dt)
        return (res, da.sign(res)) if return_sign else res
    if _one_chunk(a, axes):
        return _lse_one_chunk(a, b, axes, keepdims, return_sign, dt)
    dt = _floor_float(dt, fname)
    rmeta = _meta(a, len(rshape), dt)
    st = _reduce_state(a, b, axes, _agg(return_sign, dt), dt, keepdims, True)
    res = _field(st, "out", dt, rmeta)
    if not return_sign:
        return res
    return res, _field(st, "sgn", dt, rmeta)


def _agg(return_sign, dtype):
    import functools

    return functools.partial(_agg_lse, return_sign=return_sign, out_dtype=dtype)


def _lse_one_chunk(a, b, axes, keepdims, return_sign, dt):
    import functools

    da = _da()
    fn = functools.partial(_lse_block, axis=axes, return_sign=return_sign)
    chunks = tuple((1,) * len(c) if i in axes else c for i, c in enumerate(a.chunks))
    meta = _meta(a, a.ndim, dt)
    args = (a,) if b is None else (a, b)
    if return_sign:
        st = da.map_blocks(fn, *args, dtype=dt, chunks=((2,),) + chunks, new_axis=0,
                           meta=_meta(a, a.ndim + 1, dt), token="cusoft-logsumexp")
        res, sgn = st[0], st[1]
    else:
        res = da.map_blocks(fn, *args, dtype=dt, chunks=chunks, meta=meta,
                            token="cusoft-logsumexp")
        sgn = None
    if not keepdims:
        res = _squeeze(res, axes)
        sgn = None if sgn is None else _squeeze(sgn, axes)
    return (res, sgn) if return_sign else res


def _partial_block(x, *, axis):
    from ._logsumexp import logsumexp_partial as pub

    xp = _xp_of(x)
    m, s = pub(x, axis=axis, keepdims=True, backend=_backend_name(x))
    return xp.stack([xp.asarray(m), xp.asarray(s)])


def _agg_ms(st, axis, keepdims):
    st = _merge(st, axis, keepdims)
    return {"m": st["m"], "s": st["c"] + st["r"]}


def logsumexp_partial(x, axis=None, *, keepdims=False):
    """The (m, s) state of a Dask array, as two lazy Dask arrays."""
    import functools

    da = _da()
    fname = "logsumexp_partial"
    x = da.asarray(x)
    dt = _floor_float(x.dtype, fname)
    if x.ndim == 0:
        x = x.reshape(1)
    axes = v.normalize_axes(axis, x.ndim, fname)
    sdt = _state_dtype(dt)
    rshape = _keep_shape(x.shape, axes) if keepdims else _drop_shape(x.shape, axes)
    if x.size == 0:
        return da.full(rshape, -np.inf, dtype=sdt), da.zeros(rshape, dtype=sdt)
    if _one_chunk(x, axes):
        chunks = tuple((1,) * len(c) if i in axes else c for i, c in enumerate(x.chunks))
        st = x.map_blocks(functools.partial(_partial_block, axis=axes), dtype=sdt,
                          chunks=((2,),) + chunks, new_axis=0,
                          meta=_meta(x, x.ndim + 1, sdt), token="cusoft-partial")
        m, s = st[0], st[1]
        if not keepdims:
            m, s = _squeeze(m, axes), _squeeze(s, axes)
        return m, s
    st = _reduce_state(x, None, axes, _agg_ms, dt, keepdims, False)
    meta = _meta(x, len(rshape), sdt)
    return _field(st, "m", sdt, meta), _field(st, "s", sdt, meta)


# -- backward -------------------------------------------------------------------------------

def _backward_block(y, dy, *, axis, log):
    from ._backward import log_softmax_backward, softmax_backward as pub

    return (log_softmax_backward if log else pub)(y, dy, axis=axis, backend=_backend_name(y))


def _backward_norm(y, dy, s, *, log, dtype):
    xp = _xp_of(y)
    cdt = s.dtype
    yc = y.astype(cdt, copy=False)
    dc = xp.asarray(dy).astype(cdt, copy=False)
    s = xp.asarray(s)
    g = dc - xp.exp(yc) * s if log else yc * (dc - s)
    return g.astype(dtype, copy=False)


def _as_dask_like(a, like):
    """``a`` (Dask, NumPy or CuPy, of ``like``'s shape) as a Dask array with its chunks."""
    da = _da()
    if _is_dask(a):
        return a if a.chunks == like.chunks else a.rechunk(like.chunks)
    return da.from_array(a, chunks=like.chunks)


def softmax_backward(y, dy, axis=None, *, log=False, out=None):
    """Gradient of softmax/log_softmax for Dask arrays (y: the forward output)."""
    import functools

    da = _da()
    fname = "log_softmax_backward" if log else "softmax_backward"
    y = da.asarray(y)
    if tuple(y.shape) != tuple(np.shape(dy)):
        raise ValueError(f"cusoft.{fname}: y has shape {tuple(y.shape)} but dy has shape "
                         f"{tuple(np.shape(dy))}; they must be equal")
    dy = _as_dask_like(dy, y)
    dt = np.result_type(y.dtype, dy.dtype)
    dt = _floor_float(dt, fname)
    axes = v.normalize_axes(axis, y.ndim, fname)
    scalar = y.ndim == 0
    if scalar:
        y, dy, axes = y.reshape(1), dy.reshape(1), (0,)
    meta = _meta(y, y.ndim, dt)
    if y.size == 0 or _one_chunk(y, axes):
        res = da.map_blocks(functools.partial(_backward_block, axis=axes, log=log), y, dy,
                            dtype=dt, meta=meta, token=f"cusoft-{fname}")
    else:
        cdt = _state_dtype(dt)
        # a plain Dask sum is the reduction here: its chunk step fuses the product
        prod = dy.astype(cdt) if log else y.astype(cdt) * dy.astype(cdt)
        s = prod.sum(axis=axes, keepdims=True, split_every=SPLIT_EVERY)
        idx = tuple(range(y.ndim))
        res = da.blockwise(functools.partial(_backward_norm, log=log, dtype=dt), idx, y, idx,
                           dy, idx, s, idx, dtype=dt,
                           meta=meta, align_arrays=False, token=f"cusoft-{fname}-norm")
    res = res.reshape(()) if scalar else res
    return res if out is None else _handle_out(fname, out, res)


# -- cross-entropy --------------------------------------------------------------------------

def _xent_block(x, t, w=None, *, axis, ignore_index, eps, want_grad):
    # class axis in one chunk: the public function (reduction="none": no global scale)
    from ._xent import softmax_cross_entropy as pub

    xp = _xp_of(x)
    res = pub(x, t, axis=axis, reduction="none", ignore_index=ignore_index,
              label_smoothing=eps, weight=w, return_grad=want_grad, backend=_backend_name(x))
    loss = res[0] if want_grad else res
    loss = xp.expand_dims(xp.asarray(loss), axis)
    return (loss, res[1]) if want_grad else loss


def _targets(xb, tb, cb, wb, *, ax, labels, ign, eps, C, cdt):
    """Weighted target ``w * t`` of one block (classes ``cb`` of the class axis)."""
    xp = _xp_of(xb)
    shp = [1] * xb.ndim
    shp[ax] = -1
    tb, cb = xp.asarray(tb), xp.asarray(cb)
    wb = None if wb is None else xp.asarray(wb)
    if labels:
        keep = tb != ign
        bad = keep & ((tb < 0) | (tb >= C))
        if bool(bad.any()):
            first = int(tb[bad].ravel()[0])
            raise ValueError(f"cusoft.softmax_cross_entropy: target label {first} is out of "
                             f"bounds for {C} classes")
        lab = xp.expand_dims(xp.where(keep, tb, 0), ax)
        t = (cb.reshape(shp) == lab).astype(cdt) * (1.0 - eps) + (eps / C)
        t = t * xp.expand_dims(keep, ax).astype(cdt)
    else:
        t = tb.astype(cdt, copy=False)
        if eps:
            t = (1.0 - eps) * t + eps / C
    if wb is not None:
        t = t * wb.astype(cdt, copy=False).reshape(shp)
    return t.astype(cdt, copy=False)


def _logp(xb, st):
    xp = _xp_of(xb)
    with np.errstate(**_ERR):
        t = xb.astype(st["m"].dtype, copy=True)
        t -= st["m"]
        t -= xp.log(st["s"])
    return t


def _xent_terms(xb, tb, st, cb, wb=None, **kw):
    """Per-row (loss, sum of w*t) contributions of one class block, stacked along ax."""
    xp = _xp_of(xb)
    ax = kw["ax"]
    wt = _targets(xb, tb, cb, wb, **kw)
    logp = _logp(xb, st)
    with np.errstate(**_ERR):
        # a class with zero target weight adds nothing (0 * -inf would be NaN)
        loss = -xp.sum(xp.where(wt == 0, 0, wt * logp), axis=ax, keepdims=True)
    tot = xp.sum(wt, axis=ax, keepdims=True)
    return xp.concatenate([loss, tot], axis=ax)


def _xent_grad(xb, tb, st, cb, wb, tot, scale, **kw):
    xp = _xp_of(xb)
    dt = kw.pop("dtype")
    wt = _targets(xb, tb, cb, wb, **kw)
    with np.errstate(**_ERR):
        g = xp.exp(_logp(xb, st)) * xp.asarray(tot) - wt
    g = _scale_grad(g, tb if kw["labels"] else None, scale, ign=kw["ign"], ax=kw["ax"])
    return g.astype(dt, copy=False)


def _zero_ignored(g, tb, ign, ax):
    """``g`` with the rows of ignored labels exactly 0 (the backends' rule), whatever their
    logits or the reduction's factor (1/0 = inf for an all-ignored "mean")."""
    xp = _xp_of(g)
    return xp.where(xp.expand_dims(xp.asarray(tb) != ign, ax), g, 0).astype(g.dtype,
                                                                          copy=False)


def _scale_grad(g, tb, scale, *, ign, ax):
    """One chunk's gradient times the reduction's factor (0 * inf is NaN without a warning),
    ignored label rows 0 (``tb`` None for probability targets)."""
    with np.errstate(**_ERR):
        g2 = g * _xp_of(g).asarray(scale, dtype=g.dtype)
    return g2 if tb is None else _zero_ignored(g2, tb, ign, ax)


def _scaled_sum(total, scale, dtype):
    with np.errstate(**_ERR):
        return (total * scale).astype(dtype)


def _den_block(lab, w, *, ign):
    xp = _xp_of(lab)
    keep = lab != ign
    w = None if w is None else xp.asarray(w)
    if w is None:
        return xp.sum(keep, dtype=np.float64, keepdims=True).reshape((1,) * lab.ndim)
    ww = w[xp.where(keep, lab, 0)].astype(np.float64) * keep
    return xp.sum(ww, keepdims=True).reshape((1,) * lab.ndim)


def softmax_cross_entropy(logits, target, axis=-1, *, reduction="mean", ignore_index=None,
                          label_smoothing=0.0, weight=None, return_grad=False):
    """Cross-entropy for Dask logits; the class axis may span chunks (see module docstring).

    Out-of-range labels raise ``ValueError`` when the graph runs, not at call time (checking
    them eagerly would compute the target)."""
    import functools

    da = _da()
    fname = "softmax_cross_entropy"
    x = da.asarray(logits)
    from ._xent import check_logits

    dt, ax, shape, C, rows_shape = check_logits(fname, x, axis)
    cdt = _state_dtype(dt)
    rows_chunks = x.chunks[:ax] + x.chunks[ax + 1:]
    tdt = np.dtype(target.dtype) if hasattr(target, "dtype") else np.asarray(target).dtype
    tshape = tuple(np.shape(target))
    labels = tdt.kind in "iu"
    if labels:
        if tshape != rows_shape:
            raise ValueError(f"cusoft.{fname}: integer target must have shape {rows_shape} "
                             f"(logits without axis {ax}), got {tshape}")
        t = da.asarray(target) if _is_dask(target) else da.from_array(target, rows_chunks)
        t = t.astype(np.int64)
        if t.chunks != rows_chunks:
            t = t.rechunk(rows_chunks)
        ign = _NO_IGNORE if ignore_index is None else int(ignore_index)
    elif tdt.kind == "f":
        if tshape != shape:
            raise ValueError(f"cusoft.{fname}: probability target must have the shape of "
                             f"logits {shape}, got {tshape}")
        if ignore_index is not None:
            raise ValueError(f"cusoft.{fname}: ignore_index needs integer class labels")
        t = _as_dask_like(target, x)
        ign = _NO_IGNORE
    else:
        raise TypeError(f"cusoft.{fname}: target must be integer labels or float "
                        f"probabilities, not {tdt}")
    w = None
    if weight is not None:
        if tuple(np.shape(weight)) != (C,):
            raise ValueError(f"cusoft.{fname}: weight must have shape ({C},), got "
                             f"{tuple(np.shape(weight))}")
        w = da.asarray(weight) if _is_dask(weight) else da.from_array(weight, (x.chunks[ax],))
        w = w.astype(cdt).rechunk((x.chunks[ax],))
    idx = tuple(range(x.ndim))
    ridx = idx[:ax] + idx[ax + 1:]
    tidx = ridx if labels else idx
    wargs = () if w is None else (w, (ax,))
    # the reduction's factor, as in the NumPy path
    if reduction == "mean":
        if labels and w is None:
            den = t.map_blocks(functools.partial(_den_block, w=None, ign=ign),
                               dtype=np.float64, chunks=tuple((1,) * len(c) for c in t.chunks))
        elif labels:
            # the (C,) weight is tiny: every label block sees all of it
            den = da.blockwise(functools.partial(_den_block, ign=ign), ridx, t, ridx,
                               w.rechunk(C), (x.ndim,), dtype=np.float64, concatenate=True,
                               adjust_chunks={i: 1 for i in ridx})
        if labels:
            den = den.sum()
        else:
            den = math.prod(rows_shape)
        scale = da.where(den != 0, 1.0 / da.where(den != 0, den, 1.0), np.inf) \
            if labels else (1.0 / den if den else float("inf"))
    else:
        scale = 1.0
    if _one_chunk(x, (ax,)):
        fn = functools.partial(_xent_block, axis=ax, ignore_index=ignore_index,
                               eps=float(label_smoothing), want_grad=return_grad)
        lchunks = tuple((1,) if i == ax else c for i, c in enumerate(x.chunks))
        targ = (t, tidx)
        if return_grad:
            pair = da.blockwise(fn, idx, x, idx, *targ, *wargs, dtype=dt, align_arrays=False,
                                meta=_meta(x, x.ndim, dt), token="cusoft-xent")
            loss_k = pair.map_blocks(operator.itemgetter(0), dtype=dt, chunks=lchunks,
                                     meta=_meta(x, x.ndim, dt))
            grad = pair.map_blocks(operator.itemgetter(1), dtype=dt,
                                   meta=_meta(x, x.ndim, dt))
            if not (isinstance(scale, float) and scale == 1.0):
                grad = da.blockwise(functools.partial(_scale_grad, ign=ign, ax=ax), idx, grad,
                                    idx, *((t, ridx) if labels else (None, None)), scale,
                                    () if _is_dask(scale) else None, dtype=dt,
                                    align_arrays=False, meta=_meta(x, x.ndim, dt))
        else:
            loss_k = da.blockwise(fn, idx, x, idx, *targ, *wargs, dtype=dt,
                                  align_arrays=False, adjust_chunks={ax: 1},
                                  meta=_meta(x, x.ndim, dt), token="cusoft-xent")
            grad = None
        loss = loss_k.squeeze(axis=ax)
    else:
        st = _norm_state(x, (ax,), dt)
        cls = da.arange(C, chunks=(x.chunks[ax],))
        kw = dict(ax=ax, labels=labels, ign=ign, eps=float(label_smoothing), C=C, cdt=cdt)
        targ = (t, tidx)
        terms = da.blockwise(functools.partial(_xent_terms, **kw), idx, x, idx, *targ,
                             st, idx, cls, (ax,), *wargs, dtype=cdt, align_arrays=False,
                             adjust_chunks={ax: 2}, meta=_meta(x, x.ndim, cdt),
                             token="cusoft-xent-terms")
        sl0 = tuple(slice(0, None, 2) if i == ax else slice(None) for i in idx)
        sl1 = tuple(slice(1, None, 2) if i == ax else slice(None) for i in idx)
        loss = terms[sl0].sum(axis=ax, split_every=SPLIT_EVERY).astype(dt)
        grad = None
        if return_grad:
            tot = terms[sl1].sum(axis=ax, keepdims=True, split_every=SPLIT_EVERY)
            fn = functools.partial(_xent_grad, dtype=dt, **kw)
            scale_arg = (scale, ()) if _is_dask(scale) else (scale, None)
            grad = da.blockwise(fn, idx, x, idx, *targ, st, idx, cls, (ax,),
                                *(wargs or (None, None)), tot, idx, *scale_arg, dtype=dt,
                                align_arrays=False, meta=_meta(x, x.ndim, dt),
                                token="cusoft-xent-grad")
    if reduction == "sum":
        loss = loss.sum(dtype=dt)
    elif reduction == "mean":
        loss = da.map_blocks(_scaled_sum, loss.sum(dtype=np.float64), scale, dt, dtype=dt)
    return (loss, grad) if return_grad else loss


# -- attention: split-KV ----------------------------------------------------------------------

def _attn_part(qb, kb, vb, mb=None, bb=None, *, scale, causal, offset, method, backend):
    """``(out, lse)`` of one (query block, key/value chunk) pair on the chunk's backend;
    ``out`` in the accumulation dtype so the merges do not round to float16."""
    from ._attention import attention as pub

    o, lse = pub(qb, kb, vb, scale=scale, causal=causal, mask=mb, bias=bb, return_lse=True,
                 backend=backend or _backend_name(qb), method=method,
                 _causal_offset=offset if causal else None)
    return o.astype(lse.dtype, copy=False), lse


def _attn_merge(*parts):
    from ._attention import merge_attention

    return merge_attention(*parts)


def _attn_out(part, dtype):
    return part[0].astype(dtype, copy=False)


def _attn_lse(part):
    return part[1]


def _bounds(chunks):
    return [0] + np.cumsum(chunks, dtype=np.int64).tolist()


def _from_bounds(bounds, n):
    """Chunks from a set of boundaries of an axis of length ``n``."""
    b = sorted(set(int(x) for x in bounds) | {0, n})
    return tuple(y - x for x, y in zip(b, b[1:])) or (n,)


def _attn_layout(arrays, labels, sizes, G):
    """The common chunks of every label: the coarsest refinement of the chunks the Dask
    inputs already have (NumPy/CuPy inputs impose nothing).  Query heads ``h`` break only
    at multiples of the GQA group ``G`` so a query head block meets whole key/value heads;
    the feature axes ``d``, ``e`` are one chunk."""
    cuts = {lab: set() for lab in sizes}
    for name, (a, is_dask) in arrays.items():
        if not is_dask:
            continue
        for lab, n, c in zip(labels[name], a.shape, a.chunks):
            if n == 1 and sizes[lab] != 1 or lab in ("d", "e"):
                continue
            b = _bounds(c)
            if lab == "hk":
                cuts["h"].update(x * G for x in b)
            elif lab == "h":
                cuts["h"].update((x // G) * G for x in b)
            else:
                cuts[lab].update(b)
    chunks = {lab: _from_bounds(cuts[lab], n) for lab, n in sizes.items()}
    chunks["hk"] = tuple(c // G for c in chunks["h"]) if G else (sizes["hk"],)
    return chunks


def attention(q, k, v, *, scale=None, causal=False, mask=None, bias=None, return_lse=False,
              out=None, backend=None, method=None):
    """Attention with Dask inputs: one task per (query block, key/value chunk), the partial
    ``(out, lse)`` merged exactly in a tree (see the module docstring)."""
    import functools

    import dask
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    from . import _attention as A

    da = _da()
    if method not in A._METHODS:
        raise ValueError(f"cusoft.attention: unknown method {method!r}; expected one of "
                         f"'auto', 'tiled', 'naive'")
    if backend is None:
        backend = _dispatch._override.get()
    if backend is not None:
        _dispatch._check_name(backend)
    chunk_backend = None if backend in (None, "dask") else backend

    def arr(x):
        return x if _is_dask(x) or hasattr(x, "shape") and hasattr(x, "dtype") \
            else np.asarray(x)

    q, k, v = arr(q), arr(k), arr(v)
    dt = A._check_dtypes(q, k, v)
    batch, Hq, Hkv, Lq, Lk, D, Dv = A._check_shapes(q, k, v)
    scale = A._check_scale(scale, D)
    causal = A._check_flag("causal", causal)
    return_lse = A._check_flag("return_lse", return_lse)
    full = batch + (Hq, Lq, Lk)
    nb = len(batch)
    ops = {}
    for name, x in (("mask", mask), ("bias", bias)):
        if x is not None:
            x = arr(x)
            A._check_operand(name, tuple(int(n) for n in x.shape), np.dtype(x.dtype), full)
            ops[name] = x
    bl = tuple(f"b{i}" for i in range(nb))
    labels = {"q": bl + ("h", "i", "d"), "k": bl + ("hk", "j", "d"),
              "v": bl + ("hk", "j", "e"), "mask": bl + ("h", "i", "j"),
              "bias": bl + ("h", "i", "j")}
    sizes = dict(zip(bl, batch), h=Hq, hk=Hkv, i=Lq, j=Lk, d=D, e=Dv)
    arrays = {}
    for name, x in (("q", q), ("k", k), ("v", v), *ops.items()):
        if _is_dask(x) and any(math.isnan(c) for cs in x.chunks for c in cs):
            raise ValueError(f"cusoft.attention: {name} has unknown chunk sizes; call "
                             f"{name}.compute_chunk_sizes() first")
        pad = nb + 3 - x.ndim
        x = x[(None,) * pad] if _is_dask(x) else x.reshape((1,) * pad + tuple(x.shape))
        arrays[name] = (x, _is_dask(x))
    G = Hq // Hkv if Hkv else 1
    chunks = _attn_layout(arrays, labels, sizes, G)
    blocks = {}
    for name, (x, is_dask) in arrays.items():
        target = tuple((n,) if n == 1 or lab in ("d", "e") else chunks[lab]
                       for lab, n in zip(labels[name], x.shape))
        if not is_dask:
            x = da.from_array(x, chunks=target)
        elif x.chunks != target:
            # aligns batch/head/query blocks and refines key chunks; never merges key chunks
            x = x.rechunk(target)
        blocks[name] = x

    token = tokenize(*blocks.values(), scale, causal, method, chunk_backend, return_lse)
    mid = f"cusoft-attention-part-{token}"
    split = SPLIT_EVERY or dask.config.get("split_every", None) or 4
    if isinstance(split, dict):
        split = split.get(nb + 2, 4)
    split = max(2, int(split))
    off = Lk - Lq
    rows_b = _bounds(chunks["i"])
    keys_b = _bounds(chunks["j"])
    grid = [range(len(chunks[lab])) for lab in bl + ("h", "i")]
    order = [name for name in ("q", "k", "v", "mask", "bias") if name in blocks]
    dsk = {}
    roots = {}
    for idx in itertools.product(*grid):
        pos = dict(zip(bl + ("h", "i"), idx))
        pos["hk"] = pos["h"]
        r0, r1 = rows_b[pos["i"]], rows_b[pos["i"] + 1]
        level = []
        for jk in range(len(chunks["j"])):
            o0, o1 = keys_b[jk], keys_b[jk + 1]
            c, d = causal, None
            if causal and o1 > o0:
                if o0 > r1 - 1 + off:
                    # the whole chunk lies above the diagonal for these rows: it would
                    # contribute (0, -inf), so it is left out of the merge
                    if jk + 1 < len(chunks["j"]) or level:
                        continue
                    # every chunk was left out: one zero-key call gives the (0, -inf) rows
                if o1 - 1 <= r0 + off:
                    c = False
                else:
                    d = r0 - o0 + off
            pos["j"] = jk
            args = []
            for key in order:
                x = blocks[key]
                bi = tuple(0 if nblk == 1 else pos.get(lab, 0)
                           for lab, nblk in zip(labels[key], x.numblocks))
                args.append((x.name,) + bi)
            if "mask" not in blocks and "bias" in blocks:
                args.insert(3, None)
            fn = functools.partial(_attn_part, scale=scale, causal=c, offset=d,
                                   method=method, backend=chunk_backend)
            key = (mid, 0, len(level)) + idx
            dsk[key] = (fn,) + tuple(args)
            level.append(key)
        depth = 0
        while len(level) > 1:
            depth += 1
            nxt = []
            for g in range(0, len(level), split):
                group = level[g:g + split]
                if len(group) == 1:
                    nxt.append(group[0])
                    continue
                key = (mid, depth, len(nxt)) + idx
                dsk[key] = (_attn_merge,) + tuple(group)
                nxt.append(key)
            level = nxt
        roots[idx] = level[0]

    out_name = f"cusoft-attention-{token}"
    lse_name = f"cusoft-attention-lse-{token}"
    graph = HighLevelGraph.from_collections(mid, dsk, dependencies=list(blocks.values()))
    layers, deps = dict(graph.layers), dict(graph.dependencies)
    layers[out_name] = MaterializedLayer(
        {(out_name,) + idx + (0,): (_attn_out, root, dt) for idx, root in roots.items()})
    deps[out_name] = {mid}
    if return_lse:
        layers[lse_name] = MaterializedLayer(
            {(lse_name,) + idx: (_attn_lse, root) for idx, root in roots.items()})
        deps[lse_name] = {mid}
    hlg = HighLevelGraph(layers, deps)
    bchunks = tuple(chunks[lab] for lab in bl)
    qd = blocks["q"]
    res = da.Array(hlg, out_name, bchunks + (chunks["h"], chunks["i"], (Dv,)),
                   meta=_meta(qd, nb + 3, dt))
    if out is not None:
        res = _handle_out("attention", out, res)
    if not return_lse:
        return res
    adt = _state_dtype(dt)
    lse = da.Array(hlg, lse_name, bchunks + (chunks["h"], chunks["i"]),
                   meta=_meta(qd, nb + 2, adt))
    return res, lse
