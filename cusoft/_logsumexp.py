"""logsumexp, and the mergeable (max, sum-exp) state that chunked and distributed code uses."""

from __future__ import annotations

import numpy as np

from . import _dispatch
from . import _validate as v


@_dispatch.on_input_device
def logsumexp(a, axis=None, b=None, keepdims=False, return_sign=False, *, backend=None):
    """``log(sum(b * exp(a), axis))`` computed without overflow.

    Drop-in for :func:`scipy.special.logsumexp`: same defaults, ``b`` broadcasting (``b`` may
    also broadcast ``a``), ``b == 0`` excluding an element, negative ``b`` with
    ``return_sign``, empty input giving ``-inf``, and the same special values.  The largest
    term is kept out of the sum so ``logsumexp([0, -40])`` is 4.25e-18, not 0.

    Returns ``res`` or ``(res, sign)``; 0-d NumPy results are NumPy scalars, as in SciPy.
    """
    fname = "logsumexp"
    name = _dispatch.choose(a, backend)
    if name != "dask" and b is not None and backend is None and _dispatch._override.get() is None:
        if _dispatch.array_kind(b) == "dask":
            name = "dask"
    if name == "dask":
        from . import _dask

        return _dask.logsumexp(a, axis=axis, b=b, keepdims=keepdims, return_sign=return_sign)
    be = _dispatch.get_backend(name)
    kind = _dispatch.KIND[name]
    xa = v.asarray_checked(fname, a, kind, "a")
    xb = None if b is None else v.asarray_checked(fname, b, kind, "b")
    dt = _result_dtype(xa, b, xb)
    xp = v.xp_for(kind)
    if xa.ndim == 0:
        xa = xa.reshape(1)
    if xb is not None:
        if xb.ndim == 0:
            xb = xb.reshape(1)
        try:
            shape = np.broadcast_shapes(tuple(xa.shape), tuple(xb.shape))
        except ValueError:
            raise ValueError(
                f"cusoft.logsumexp: a with shape {tuple(xa.shape)} and b with shape "
                f"{tuple(xb.shape)} cannot be broadcast together") from None
    else:
        shape = tuple(xa.shape)
    axes = v.normalize_axes(axis, len(shape), fname)
    if dt not in v._FLOATS:
        if kind != "host":
            v.device_dtype_check(fname, dt, name)
        import scipy.special

        with np.errstate(all="ignore"):
            return scipy.special.logsumexp(xa, axis=axis, b=xb, keepdims=keepdims,
                                           return_sign=return_sign)
    info = ("adjacent", shape, axes)
    rshape = v.reduced_shape(info, keepdims)
    if xa.size == 0 or int(np.prod(shape)) == 0:
        res = xp.full(rshape, -np.inf, dtype=dt)
        sgn = xp.sign(res) if return_sign else None
        return _finish(res, sgn, a, return_sign)
    xa = xp.broadcast_to(v.astype(xa, dt), shape)
    x3, info = v.to_canonical(xp, xa, axes)
    b3 = None
    if xb is not None:
        b3, _ = v.to_canonical(xp, xp.broadcast_to(v.astype(xb, dt), shape), axes)
    out3 = xp.empty((x3.shape[0], x3.shape[2]), dt)
    sign3 = xp.empty_like(out3) if return_sign else None
    be.logsumexp(x3, b3, out3, sign3)
    res = out3.reshape(rshape)
    sgn = sign3.reshape(rshape) if return_sign else None
    return _finish(res, sgn, a, return_sign)


def _result_dtype(xa, b, xb):
    # NEP 50: a Python scalar b is "weak" and does not widen a float32 a (SciPy agrees).
    if xb is None:
        dt = np.dtype(xa.dtype)
    elif isinstance(b, (int, float, bool)) and not isinstance(b, np.generic):
        dt = np.result_type(xa.dtype, b)
    else:
        dt = np.result_type(xa.dtype, xb.dtype)
    if dt.kind in "biu":
        dt = np.dtype(np.float64)
    return np.dtype(dt)


def _finish(res, sgn, like, return_sign):
    res = v.from_kind(res, like)
    if isinstance(res, np.ndarray) and res.ndim == 0:
        res = res[()]
    if not return_sign:
        return res
    sgn = v.from_kind(sgn, like)
    if isinstance(sgn, np.ndarray) and sgn.ndim == 0:
        sgn = sgn[()]
    return res, sgn


@_dispatch.on_input_device
def logsumexp_partial(x, axis=None, *, keepdims=False, backend=None):
    """The mergeable state of a log-sum-exp: ``(m, s)`` with ``m = max(x, axis)`` and
    ``s = sum(exp(x - m), axis)``, where elements equal to ``m`` count exactly 1 (so an
    all -inf slice is ``(-inf, n)``, never NaN).

    ``logsumexp(x) == m + log(s)``; states of separate chunks combine with
    :func:`merge_partials`.  Float16 input gives float32 states.
    """
    fname = "logsumexp_partial"
    name = _dispatch.choose(x, backend)
    if name == "dask":
        from . import _dask

        return _dask.logsumexp_partial(x, axis=axis, keepdims=keepdims)
    be = _dispatch.get_backend(name)
    kind = _dispatch.KIND[name]
    xk = v.asarray_checked(fname, x, kind)
    dt = np.dtype(xk.dtype)
    if dt.kind in "biu":
        dt = np.dtype(np.float64)
    if dt not in v._FLOATS:
        raise TypeError(f"cusoft.{fname}: dtype {dt} is not supported; use a real float dtype")
    xp = v.xp_for(kind)
    if xk.ndim == 0:
        xk = xk.reshape(1)
    axes = v.normalize_axes(axis, xk.ndim, fname)
    info = ("adjacent", tuple(xk.shape), axes)
    rshape = v.reduced_shape(info, keepdims)
    sdt = np.dtype(np.float32) if dt == np.float16 else dt
    if xk.size == 0:
        m = xp.full(rshape, -np.inf, dtype=sdt)
        s = xp.zeros(rshape, dtype=sdt)
    else:
        x3, info = v.to_canonical(xp, v.astype(xk, dt), axes)
        m = xp.empty((x3.shape[0], x3.shape[2]), sdt)
        c = xp.empty_like(m)
        r = xp.empty_like(m)
        be.partial(x3, None, m, c, r)
        m = m.reshape(rshape)
        s = (c + r).reshape(rshape)
    m, s = v.from_kind(m, x), v.from_kind(s, x)
    return m, s


def _xp_of(a):
    if type(a).__module__.split(".", 1)[0] == "cupy":
        import cupy

        return cupy
    return np


@_dispatch.on_input_device
def merge_partials(*partials):
    """Combine ``(m, s)`` states of disjoint chunks into the state of their union.

    ``M = max(m_i)``, ``S = sum(s_i * w_i)`` with ``w_i = 1`` where ``m_i == M`` and
    ``exp(m_i - M)`` elsewhere: exact, order-independent up to rounding, and free of
    ``inf - inf``.  Works on NumPy and CuPy arrays (or scalars) of one shape.
    ``M + log(S)`` is the log-sum-exp of the union.
    """
    if not partials:
        raise TypeError("merge_partials() needs at least one (m, s) pair")
    for p in partials:
        if not (isinstance(p, (tuple, list)) and len(p) == 2):
            raise TypeError("merge_partials() takes (m, s) pairs, as returned by "
                            "logsumexp_partial")
    xp = _xp_of(partials[0][0])
    ms = [xp.asarray(p[0]) for p in partials]
    ss = [xp.asarray(p[1]) for p in partials]
    with np.errstate(invalid="ignore", over="ignore"):
        M = ms[0]
        for m in ms[1:]:
            M = xp.maximum(M, m)
        S = 0
        for m, s in zip(ms, ss):
            w = xp.where(m == M, 1.0, xp.exp(xp.where(m == M, 0, m - M)))
            S = S + s * w.astype(s.dtype, copy=False)
    if isinstance(M, np.ndarray) and M.ndim == 0:
        return M[()], S[()]
    return M, S
