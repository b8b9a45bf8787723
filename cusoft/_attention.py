"""Scaled dot-product attention, ``softmax(Q Kᵀ * scale + bias) V``, tiled so the
``Lq x Lk`` score matrix is never materialised; and the exact merge of chunked results."""

from __future__ import annotations

import math

import numpy as np

from . import _dispatch
from . import _validate as val
from ._attention_cpu import acc_dtype, attention_naive, attention_tiled

_METHODS = (None, "auto", "tiled", "naive", "fma", "mma")


@_dispatch.on_input_device
def attention(q, k, v, *, scale=None, causal=False, mask=None, bias=None, return_lse=False,
              out=None, backend=None, method=None, _causal_offset=None):
    """Scaled dot-product attention over the last two axes, FlashAttention-style.

    ``out[..., h, i, :] = sum_j softmax_j(q[..., h, i, :] · k[..., h // G, j, :] * scale
    + bias[..., h, i, j]) v[..., h // G, j, :]`` with ``G = Hq // Hkv``, computed tile by tile
    with an online softmax, so memory stays ``O(Lq * D)`` instead of ``O(Lq * Lk)``.
    The result matches ``torch.nn.functional.scaled_dot_product_attention`` (with
    ``enable_gqa=True``) and ``softmax(q @ kᵀ * scale + bias) @ v`` computed by SciPy.

    Parameters
    ----------
    q : array, shape (..., Hq, Lq, D)
    k : array, shape (..., Hkv, Lk, D)
    v : array, shape (..., Hkv, Lk, Dv)
        One floating dtype (float16, float32 or float64) for all three.  The leading batch
        axes are broadcast against each other.  ``Hq`` must be a multiple of ``Hkv``
        (grouped-query / multi-query attention: query head ``h`` uses key/value head
        ``h // (Hq // Hkv)``).  Lq and Lk may differ; head dims up to 256 on the GPU
        backends (any size on NumPy).
    scale : float, optional
        Multiplies the logits; default ``1 / sqrt(D)``.
    causal : bool
        Query ``i`` attends to keys ``j <= i + (Lk - Lq)``: the causal diagonal is aligned to
        the bottom-right corner when ``Lq != Lk`` (the last query sees every key; the
        convention of FlashAttention and of decoding with a key/value cache).  With
        ``Lq > Lk`` the first ``Lq - Lk`` queries see no key at all.
    mask : boolean array, optional
        ``True`` keeps a (query, key) pair.  Broadcastable to ``(..., Hq, Lq, Lk)``; it is
        read through broadcast strides, never expanded.
    bias : array, optional
        Added to the scaled logits (ALiBi, relative positions, ``-inf`` to mask).
        Broadcastable to ``(..., Hq, Lq, Lk)``, never expanded; converted to q's dtype.
    return_lse : bool
        Also return the natural-log log-sum-exp of each row's scaled, biased, masked logits,
        shape ``(..., Hq, Lq)`` (float32 for float16 input).  Chunked results merge exactly
        with :func:`merge_attention`.
    out : array, optional
        Destination, shape ``(..., Hq, Lq, Dv)``, q's dtype and array type.
    backend : {"cpu", "cupy", "simt", "numba"}, optional
        Override the backend chosen from q's array type.  ``"simt"`` runs the CUDA C kernel
        on the CPU emulator (tests).  With Dask inputs it names the backend every chunk
        runs on (default: the chunk's array type).
    method : {None, "auto", "tiled", "naive", "fma", "mma"}
        ``"naive"`` materialises the ``(..., Hq, Lq, Lk)`` logits (the reference and the
        memory-wall baseline); the default is the tiled kernel.  On the CUDA kernels
        (``"cupy"``, ``"simt"``) the tiled kernel comes in two flavours.  ``"mma"``: tensor
        cores, the default for float16 (half products, float32 accumulation, the
        probabilities rounded to half before they multiply ``v``, as FlashAttention does);
        for float32 an opt-in "3xTF32" (each operand split into two tf32 parts, three
        products summed in float32, as PyTorch's float32 SDPA does): about 22 of float32's
        24 bits per operand, a relative error of a few 1e-6 at D = 128-256 where CUDA-core
        float32 gives under 1e-6; for float64 DMMA (IEEE float64 fused multiply-adds, the
        default up to D = 128; larger head dims run on CUDA cores).  ``"fma"``: CUDA cores,
        every dtype, the default for float32 (float16 then runs entirely in float32
        arithmetic).  ``"fma"``/``"mma"`` on other backends raise ``ValueError``;
        ``"mma"`` for float64 with D > 128 too.

    Returns
    -------
    out, or ``(out, lse)`` when ``return_lse``.  Dask inputs (any of q, k, v, mask, bias)
    give lazy Dask arrays: key/value chunks are computed separately and merged exactly
    (split-KV, see ``cusoft/_dask.py``).

    Notes
    -----
    A query row whose keys are all masked (by ``mask``, ``causal``, ``-inf`` bias or
    ``Lk == 0``) gives a zero output row and ``lse = -inf``, never NaN (PyTorch's current
    rule for its fused kernels).  Float16 is accumulated in float32.  NaN in the inputs
    propagates to exactly the rows whose logits it reaches (out and lse NaN there, as SciPy's
    softmax and logsumexp give; a NaN key that ``causal`` or ``mask`` hides reaches nothing);
    a ``+inf`` bias gives NaN.  The inputs are never modified.
    """
    fname = "attention"
    if method not in _METHODS:
        raise ValueError(f"cusoft.attention: unknown method {method!r}; expected one of "
                         f"'auto', 'tiled', 'naive', 'fma', 'mma'")
    name = _dispatch.choose(q, backend)
    dask_in = any(_dispatch.array_kind(a) == "dask" for a in (q, k, v, mask, bias)
                  if a is not None)
    if dask_in or name == "dask":
        from . import _dask

        if not dask_in:
            # backend="dask" on in-memory arrays: one chunk each, a lazy result (as softmax)
            import dask.array as da

            q, k, v, mask, bias = (None if a is None else da.from_array(a, chunks=np.shape(a))
                                   for a in (q, k, v, mask, bias))
        _check_flavour(backend if backend not in (None, "dask") else None, method,
                       getattr(q, "dtype", None))
        return _dask.attention(q, k, v, scale=scale, causal=causal, mask=mask, bias=bias,
                               return_lse=return_lse, out=out,
                               backend=None if backend == "dask" else backend, method=method)
    kind = _dispatch.KIND[name]
    qa = val.asarray_checked(fname, q, kind, "q")
    ka = val.asarray_checked(fname, k, kind, "k")
    va = val.asarray_checked(fname, v, kind, "v")
    dt = _check_dtypes(qa, ka, va)
    _check_flavour(name, method, dt)
    batch, Hq, Hkv, Lq, Lk, D, Dv = _check_shapes(qa, ka, va)
    if name != "cpu" and max(D, Dv) > 256:
        raise ValueError(f"cusoft.attention: head dimension {max(D, Dv)} is larger than 256, "
                         f"the largest the {name!r} kernels support; use NumPy arrays")
    if name in ("cupy", "simt") and method == "mma":
        from . import _attention_launch as AL

        try:
            AL.flavour(dt, "mma", AL.bucket_of(max(D, Dv)))
        except ValueError as exc:
            raise ValueError(f"cusoft.attention: {exc}") from None
    scale = _check_scale(scale, D)
    causal = _check_flag("causal", causal)
    return_lse = _check_flag("return_lse", return_lse)
    full = batch + (Hq, Lq, Lk)
    if causal and _causal_offset is not None and int(_causal_offset) != Lk - Lq:
        res = _shifted_causal(name, q, k, v, mask, bias, scale, int(_causal_offset), Lq, Lk,
                              method, out)
        return res if return_lse else res[0]
    if name == "numba":
        return _attention_numba(q, qa, ka, va, mask, bias, out, batch, (Hq, Hkv, Lq, Lk, D, Dv),
                                dt, scale, causal, return_lse, method)
    xp = _xp(kind)
    maskc = _operand(fname, "mask", mask, kind, full, xp, None)
    biasc = _operand(fname, "bias", bias, kind, full, xp, dt)
    oshape = batch + (Hq, Lq, Dv)
    val.check_out(fname, out, oshape, dt, _dispatch.array_kind(q))
    be_fn = _backend_fn(name, method)

    B = math.prod(batch)
    adt = acc_dtype(dt)
    q4 = _canon(xp, qa, batch, B)
    k4 = _canon(xp, ka, batch, B)
    v4 = _canon(xp, va, batch, B)
    direct = (out is not None and _dispatch.array_kind(out) == kind and out.flags.c_contiguous
              and not any(_overlap(xp, out, a) for a in (qa, ka, va, mask, bias)))
    o4 = out.reshape(B, Hq, Lq, Dv) if direct else xp.empty((B, Hq, Lq, Dv), dt)
    lse3 = xp.empty((B, Hq, Lq), adt)
    if Lk == 0:
        o4[...] = 0
        lse3[...] = -np.inf
    elif o4.size:
        be_fn(xp, q4, k4, v4, maskc, biasc, o4, lse3, scale, causal)
    res = o4 if direct else val.from_kind(o4.reshape(oshape), q)
    if out is not None and not direct:
        out[...] = res
        res = out
    elif direct:
        res = out
    if return_lse:
        return res, val.from_kind(lse3.reshape(batch + (Hq, Lq)), q)
    return res


@_dispatch.on_input_device
def merge_attention(*parts):
    """Combine ``(out, lse)`` pairs computed over disjoint key/value chunks into the
    ``(out, lse)`` of attention over their union.

    ``lse = M + log(sum_c exp(lse_c - M))`` with ``M = max_c lse_c``, and
    ``out = sum_c exp(lse_c - lse) * out_c``: exact up to rounding, in any order.  A chunk with
    ``lse = -inf`` (all of its keys masked) has weight 0; rows with every chunk at ``-inf``
    give zeros and ``-inf``, as :func:`attention` does.  NumPy or CuPy arrays; ``out`` keeps
    its dtype, the weights are computed in lse's dtype.
    """
    if not parts:
        raise TypeError("merge_attention() needs at least one (out, lse) pair")
    for p in parts:
        if not (isinstance(p, (tuple, list)) and len(p) == 2):
            raise TypeError("merge_attention() takes (out, lse) pairs, as returned by "
                            "cusoft.attention(..., return_lse=True)")
    xp = _xp_of(parts[0][0])
    outs = [xp.asarray(p[0]) for p in parts]
    lses = [xp.asarray(p[1]) for p in parts]
    oshape, lshape = tuple(outs[0].shape), tuple(lses[0].shape)
    if len(oshape) < 1 or oshape[:-1] != lshape:
        raise ValueError(f"merge_attention(): out has shape {oshape} and lse {lshape}; "
                         f"lse must be out.shape[:-1]")
    for o, ls in zip(outs, lses):
        if tuple(o.shape) != oshape or tuple(ls.shape) != lshape:
            raise ValueError(f"merge_attention(): all parts must have the shapes of the first "
                             f"(out {oshape}, lse {lshape}); got {tuple(o.shape)}, "
                             f"{tuple(ls.shape)}")
    wdt = np.result_type(*[ls.dtype for ls in lses], np.float32)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        M = lses[0].astype(wdt)
        for ls in lses[1:]:
            M = xp.maximum(M, ls)
        shift = xp.where(M == -np.inf, 0, M)
        ws = [xp.exp(ls.astype(wdt) - shift) for ls in lses]
        total = ws[0]
        for w in ws[1:]:
            total = total + w
        seen = total != 0  # NaN propagates
        safe = xp.where(seen, total, 1)
        acc = 0
        for w, o in zip(ws, outs):
            acc = acc + (w / safe)[..., None] * o.astype(wdt)
        lse = xp.where(seen, shift + xp.log(safe), -np.inf)
    out = acc.astype(outs[0].dtype)
    if isinstance(lse, np.ndarray) and lse.ndim == 0:
        lse = lse[()]
    return out, lse


# -- validation ------------------------------------------------------------------------------

def _check_dtypes(qa, ka, va):
    dts = [np.dtype(a.dtype) for a in (qa, ka, va)]
    for nm, dt in zip("qkv", dts):
        if dt not in val._FLOATS:
            raise TypeError(f"cusoft.attention: {nm} has dtype {dt}; expected float16, float32 "
                            f"or float64 (cast integer inputs first)")
    if len(set(dts)) != 1:
        raise TypeError(f"cusoft.attention: q, k and v must have one dtype, got "
                        f"{dts[0]}, {dts[1]} and {dts[2]}; cast them to one")
    return dts[0]


def _check_shapes(qa, ka, va):
    for nm, a, what in (("q", qa, "(..., Hq, Lq, D)"), ("k", ka, "(..., Hkv, Lk, D)"),
                        ("v", va, "(..., Hkv, Lk, Dv)")):
        if a.ndim < 3:
            raise ValueError(f"cusoft.attention: {nm} must have shape {what}, got a "
                             f"{a.ndim}-d array of shape {tuple(a.shape)}")
    Hq, Lq, D = (int(s) for s in qa.shape[-3:])
    Hkv, Lk, Dk = (int(s) for s in ka.shape[-3:])
    Hv, Lv, Dv = (int(s) for s in va.shape[-3:])
    if Dk != D:
        raise ValueError(f"cusoft.attention: q has head dim {D} but k has {Dk}; "
                         f"they must be equal")
    if (Hv, Lv) != (Hkv, Lk):
        raise ValueError(f"cusoft.attention: k has {Hkv} heads and {Lk} keys but v has {Hv} "
                         f"heads and {Lv} values; they must match")
    if D < 1 or Dv < 1:
        raise ValueError(f"cusoft.attention: head dims must be at least 1 (D = {D}, Dv = {Dv})")
    if (Hq % Hkv) if Hkv else Hq:
        raise ValueError(f"cusoft.attention: q has {Hq} heads, which is not a multiple of the "
                         f"{Hkv} key/value heads")
    try:
        batch = np.broadcast_shapes(tuple(qa.shape[:-3]), tuple(ka.shape[:-3]),
                                    tuple(va.shape[:-3]))
    except ValueError:
        raise ValueError(f"cusoft.attention: batch shapes {tuple(qa.shape[:-3])} (q), "
                         f"{tuple(ka.shape[:-3])} (k) and {tuple(va.shape[:-3])} (v) cannot be "
                         f"broadcast together") from None
    return tuple(int(s) for s in batch), Hq, Hkv, Lq, Lk, D, Dv


def _check_scale(scale, D):
    if scale is None:
        return 1.0 / math.sqrt(D)
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, float, np.number)) \
            or isinstance(scale, (complex, np.complexfloating)):
        raise TypeError(f"cusoft.attention: scale must be a real number or None, not "
                        f"{type(scale).__name__}")
    return float(scale)


def _check_flag(nm, x):
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"cusoft.attention: {nm} must be True or False, not {x!r}")
    return bool(x)


def _xp(kind):
    if kind == "host":
        return np
    if kind == "cupy":
        import cupy

        return cupy
    raise _dispatch.BackendError("cusoft.attention: this array type needs the numba backend")


def _xp_of(a):
    if type(a).__module__.split(".", 1)[0] == "cupy":
        import cupy

        return cupy
    return np


def _overlap(xp, a, b):
    if b is None or _dispatch.array_kind(b) != _dispatch.array_kind(a):
        return False
    if xp is np:
        return np.may_share_memory(a, b)
    return xp.may_share_memory(a, b)


def _canon(xp, a, batch, B):
    """(B, H, L, D) C-contiguous: a view when possible; batch broadcasting is materialised."""
    shape = batch + tuple(a.shape[-3:])
    if tuple(a.shape) != shape:
        a = xp.broadcast_to(a, shape)
    return xp.ascontiguousarray(a).reshape((B,) + shape[-3:])


def _operand(fname, nm, x, kind, full, xp, dtype):
    """A mask or bias as an ``Operand``: compact C-contiguous data and the four element
    strides (batch, head, row, key) of its broadcast to ``full``, 0 on broadcast axes."""
    from ._attention_launch import Operand

    if x is None:
        return None
    a = val.asarray_checked(fname, x, kind, nm)
    adt = np.dtype(a.dtype)
    shape = tuple(int(s) for s in a.shape)
    _check_operand(nm, shape, adt, full)
    nb = len(full) - 3
    a = a.reshape((1,) * (len(full) - len(shape)) + shape)
    if dtype is not None and adt != dtype:
        with np.errstate(over="ignore"):
            a = a.astype(dtype)
    a = xp.ascontiguousarray(a)
    strides = _bcast_strides(a.shape, full)
    bstride = _collapse(full[:nb], strides[:nb])
    if bstride is None:
        # batch axes that are partly broadcast in a way one stride cannot express: expand
        # the batch axes only (never the head, row or key axes)
        a = xp.ascontiguousarray(xp.broadcast_to(a, full[:nb] + a.shape[nb:]))
        strides = _bcast_strides(a.shape, full)
        bstride = _collapse(full[:nb], strides[:nb])
    if nm == "mask":
        a = a.view(np.uint8)
    return Operand(a, (bstride,) + tuple(strides[nb:]))


def _check_operand(nm, shape, adt, full):
    """The dtype and broadcast checks of a mask or bias (also used by the Dask path)."""
    if nm == "mask":
        if adt != np.bool_:
            raise TypeError(f"cusoft.attention: mask must be boolean (True = keep), got dtype "
                            f"{adt}; pass additive values as bias=")
    else:
        if adt.kind not in "iuf":
            raise TypeError(f"cusoft.attention: bias must be a real numeric array, got dtype "
                            f"{adt}" + ("; pass a boolean keep-mask as mask=" if adt == np.bool_
                                        else ""))
    try:
        ok = np.broadcast_shapes(shape, full) == full
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"cusoft.attention: {nm} of shape {shape} does not broadcast to the "
                         f"logits' shape {full} (..., Hq, Lq, Lk)")


def _shifted_causal(name, q, k, v, mask, bias, scale, d, Lq, Lk, method, out):
    """``(out, lse)`` of causal attention whose diagonal is ``j <= i + d`` rather than
    ``j <= i + (Lk - Lq)``: the private ``_causal_offset=d`` that the split-KV Dask path
    passes for a key chunk in the middle of the sequence.

    It is rewritten as ordinary bottom-right causal calls, so every backend (NumPy tiles,
    CuPy and simt kernels) keeps skipping the tiles above the diagonal, with no kernel
    change:

    * ``d < Lk - Lq``: keys ``j >= Lq + d`` are past every row's diagonal; drop them (and
      the matching mask/bias columns) and the shorter call's own offset is ``d``;
    * ``d > Lk - Lq``: rows ``i >= Lk - d`` see every key (a non-causal call); rows above
      them are a causal call with ``Lk - d`` rows, whose offset is ``d``; the two are
      concatenated along Lq.

    The numba backend instead gets the diagonal folded into a boolean mask (its mask passes
    through the host anyway), so it computes the tiles above the diagonal."""
    fname = "attention"
    kw = dict(scale=scale, backend=name, method=method, return_lse=True)
    if name == "numba":
        keep = np.arange(Lk)[None, :] <= np.arange(Lq)[:, None] + d
        if mask is not None:
            host = np.asarray(mask) if _dispatch.array_kind(mask) == "host" else None
            if host is None:
                from ._numba import arrays

                host = arrays.to_host(val.to_kind(mask, "cuda"))
            keep = host & keep if host.dtype == np.bool_ else host
        return attention(q, k, v, mask=keep, bias=bias, out=out, **kw)
    kind = _dispatch.KIND[name]
    xp = _xp(kind)
    q, k, v = (val.asarray_checked(fname, a, kind, nm) for a, nm in ((q, "q"), (k, "k"),
                                                                        (v, "v")))
    mask, bias = (None if a is None else val.asarray_checked(fname, a, kind, nm)
                  for a, nm in ((mask, "mask"), (bias, "bias")))
    if d < Lk - Lq:
        n = max(0, Lq + d)
        return attention(q, k[..., :n, :], v[..., :n, :], causal=True, mask=_cols(mask, n),
                         bias=_cols(bias, n), out=out, **kw)
    r = Lk - d
    if r <= 0:
        return attention(q, k, v, mask=mask, bias=bias, out=out, **kw)
    o1, l1 = attention(q[..., :r, :], k, v, causal=True, mask=_rows(mask, 0, r),
                       bias=_rows(bias, 0, r), **kw)
    o2, l2 = attention(q[..., r:, :], k, v, mask=_rows(mask, r, Lq), bias=_rows(bias, r, Lq),
                       **kw)
    o = xp.concatenate([o1, o2], axis=-2)
    lse = xp.concatenate([l1, l2], axis=-1)
    if out is not None:
        out[...] = o
        o = out
    return o, lse


def _cols(a, n):
    """The first ``n`` key columns of a mask/bias (a broadcast key axis stays size 1)."""
    if a is None or a.ndim < 1 or a.shape[-1] == 1:
        return a
    return a[..., :n]


def _rows(a, r0, r1):
    """Query rows ``[r0, r1)`` of a mask/bias (a broadcast or absent row axis stays)."""
    if a is None or a.ndim < 2 or a.shape[-2] == 1:
        return a
    return a[..., r0:r1, :]


def _bcast_strides(shape, full):
    """Element strides of a C-contiguous ``shape`` broadcast to ``full`` (0 where broadcast)."""
    st = [0] * len(shape)
    acc = 1
    for i in range(len(shape) - 1, -1, -1):
        st[i] = acc if shape[i] == full[i] and full[i] != 1 else 0
        acc *= shape[i]
    return st


def _collapse(shape, strides):
    """One stride for the flattened batch axes, or None when they do not form one."""
    dims = [(n, s) for n, s in zip(shape, strides) if n != 1]
    if not dims:
        return 0
    for (n0, s0), (n1, s1) in zip(dims, dims[1:]):
        if s0 != s1 * n1:
            return None
    return dims[-1][1]


# -- backends --------------------------------------------------------------------------------

def _view4(op, B, Hq, Lq, Lk, xp):
    """The (B, Hq, Lq, Lk) strided view of an Operand, for the array-level paths."""
    if op is None:
        return None
    a = op.array.view(np.bool_) if op.array.dtype == np.uint8 else op.array
    item = a.dtype.itemsize
    if xp is np:
        from numpy.lib.stride_tricks import as_strided
    else:
        from cupy.lib.stride_tricks import as_strided
    return as_strided(a, shape=(B, Hq, Lq, Lk), strides=tuple(s * item for s in op.strides))


def _array_path(fn):
    def run(xp, q, k, v, mask, bias, out, lse, scale, causal):
        B, Hq, Lq = (int(s) for s in q.shape[:3])
        Lk = int(k.shape[2])
        m4 = _view4(mask, B, Hq, Lq, Lk, xp)
        b4 = _view4(bias, B, Hq, Lq, Lk, xp)
        if fn is attention_naive:
            fn(xp, q, k, v, m4, b4, out, lse, scale, causal)
        else:
            fn(q, k, v, m4, b4, out, lse, scale, causal)
    return run


def _kernel_path(getter_name, method):
    flav = method if method in ("fma", "mma") else None

    def run(xp, q, k, v, mask, bias, out, lse, scale, causal):
        from . import _attention_launch as L

        L.launch_attention(getattr(L, getter_name), xp, q, k, v, mask, bias, out, lse,
                           scale, causal, flav)
    return run


def _check_flavour(name, method, dtype):
    """ValueError for a kernel flavour (``method="fma"``/``"mma"``) the call cannot run:
    only the CUDA kernels (cupy, simt) have flavours (which head dims have a tensor-core
    kernel is the launcher's to say, ``_attention_launch.flavour``).
    ``name``/``dtype`` None: not known yet (Dask chunks), not checked."""
    if method not in ("fma", "mma"):
        return
    if name is not None and name not in ("cupy", "simt"):
        raise ValueError(f"cusoft.attention: method={method!r} selects a CUDA kernel flavour; "
                         f"the {name!r} backend has one tiled path (use method='tiled')")


def _backend_fn(name, method):
    """The function computing canonical attention for backend ``name``; availability is
    checked here, before any work."""
    if name != "cpu":
        _available(name)
    if method == "naive":
        return _array_path(attention_naive)
    if name == "cpu":
        return _array_path(attention_tiled)
    if name == "simt":
        return _kernel_path("simt_module", method)
    return _kernel_path("cupy_module", method)



def _available(name):
    """BackendError saying why ``name`` cannot run attention here (before any work)."""
    try:
        if name == "simt":
            from . import simt

            ok, why = simt.available()
        else:
            import cupy

            ok = cupy.cuda.runtime.getDeviceCount() > 0
            why = "no CUDA device visible"
    except Exception as exc:  # a missing or broken install
        ok, why = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        raise _dispatch.BackendError(f"backend {name!r} is not usable here: {why}")


def _attention_numba(q, qa, ka, va, mask, bias, out, batch, dims, dt, scale, causal,
                     return_lse, method):
    """The Numba-CUDA twin (``cusoft/_numba/attention.py``) on ``__cuda_array_interface__``
    arrays.  q, k, v that are not already C-contiguous with the full batch shape, and the
    compact mask/bias, pass through the host once; ``method="naive"`` runs on the host."""
    fname = "attention"
    try:
        from ._numba import arrays
        from ._numba import attention as nba
    except ImportError as exc:
        raise _dispatch.BackendError(f"backend 'numba' is not usable here: {exc}") from None
    Hq, Hkv, Lq, Lk, D, Dv = dims
    full = batch + (Hq, Lq, Lk)
    host = lambda a: None if a is None else arrays.to_host(val.to_kind(a, "cuda")) \
        if _dispatch.array_kind(a) != "host" else np.asarray(a)  # noqa: E731
    maskc = _operand(fname, "mask", host(mask), "host", full, np, None)
    biasc = _operand(fname, "bias", host(bias), "host", full, np, dt)
    oshape = batch + (Hq, Lq, Dv)
    val.check_out(fname, out, oshape, dt, _dispatch.array_kind(q))
    B = math.prod(batch)
    adt = acc_dtype(dt)
    if method == "naive" or Lk == 0 or B * Hq * Lq == 0:
        h = [_canon(np, arrays.to_host(a), batch, B) for a in (qa, ka, va)]
        o4 = np.empty((B, Hq, Lq, Dv), dt)
        lse3 = np.empty((B, Hq, Lq), adt)
        if Lk == 0:
            o4[...] = 0
            lse3[...] = -np.inf
        elif o4.size:
            _array_path(attention_naive)(np, *h, maskc, biasc, o4, lse3, scale, causal)
        o4, lse3 = arrays.asarray(o4), arrays.asarray(lse3)
    else:
        def canon(a):
            flags = getattr(a, "flags", None)
            if tuple(a.shape[:-3]) == batch and flags is not None and flags["C_CONTIGUOUS"]:
                return a.reshape((B,) + tuple(a.shape[-3:]))
            return arrays.asarray(_canon(np, arrays.to_host(a), batch, B))

        q4, k4, v4 = canon(qa), canon(ka), canon(va)
        dev = lambda op: None if op is None else op._replace(  # noqa: E731
            array=arrays.asarray(op.array))
        o4 = arrays.empty_like_device(qa, (B, Hq, Lq, Dv), dt)
        lse3 = arrays.empty_like_device(qa, (B, Hq, Lq), adt)
        nba.launch(q4, k4, v4, dev(maskc), dev(biasc), o4, lse3, scale, causal,
                   stream=arrays.stream_of(qa))
    res = val.from_kind(o4.reshape(oshape), q)
    if out is not None:
        if isinstance(out, np.ndarray):
            out[...] = arrays.to_host(res)
        else:
            arrays.as_device(out).copy_to_device(arrays.as_device(res))
        res = out
    if return_lse:
        return res, val.from_kind(lse3.reshape(batch + (Hq, Lq)), q)
    return res
