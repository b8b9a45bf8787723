"""softmax and log_softmax: SciPy's signature, any backend."""

from __future__ import annotations

import numpy as np

from . import _dispatch
from . import _validate as v


@_dispatch.on_input_device
def softmax(x, axis=None, *, out=None, backend=None, method=None):
    """Softmax of ``x`` along ``axis``: ``exp(x) / sum(exp(x), axis)``.

    Drop-in for :func:`scipy.special.softmax` (same defaults, axis rules and special
    values: a slice whose maximum is +inf, -inf or NaN is all NaN).

    Parameters
    ----------
    x : array_like
        NumPy, CuPy, Dask or any ``__cuda_array_interface__`` array.
    axis : int, tuple of ints or None
        Axes to normalise over; ``None`` (SciPy's default) means all of them.
    out : array, optional
        Where to write the result: same array type, shape and dtype as the result.
        It may be ``x`` itself.
    backend : {"cpu", "cupy", "numba", "simt", "dask"}, optional
        Override the backend chosen from the array type (see ``cusoft.use_backend``).
    method : {None, "fused", "3pass", "warp", "block", "online", "split", "col"}, optional
        RawKernel backends (``cupy``, ``simt``) only: ``"3pass"`` is the unfused baseline
        (row max, exp-sum, divide: three kernels, intermediates in device memory); a variant
        name forces that fused kernel.  ``None``/``"fused"`` picks by row length.

    Returns
    -------
    array of the input's type; float16/32/64 keep their dtype, integers become the
    floating type ``np.exp`` gives them (as in SciPy).  Computed with the max subtracted,
    half precision accumulated in float32.
    """
    return _softmax_like("softmax", x, axis, out, backend, log=False, method=method)


@_dispatch.on_input_device
def log_softmax(x, axis=None, *, out=None, backend=None, method=None):
    """Logarithm of softmax, ``x - logsumexp(x, axis)``, without computing ``log(softmax)``.

    Drop-in for :func:`scipy.special.log_softmax`, including its special values: a slice
    with NaN or all -inf is all NaN; a slice with +inf is NaN at the +inf elements and
    -inf elsewhere.  Parameters as :func:`cusoft.softmax`.
    """
    return _softmax_like("log_softmax", x, axis, out, backend, log=True, method=method)


_METHODS = (None, "fused", "3pass", "warp", "block", "online", "split", "col")


def _softmax_like(fname, x, axis, out, backend, log, method=None):
    if method not in _METHODS:
        raise ValueError(f"cusoft.{fname}: method must be one of {_METHODS}, not {method!r}")
    name = _dispatch.choose(x, backend)
    if name == "dask":
        from . import _dask

        return _dask.softmax(x, axis, log=log, out=out)
    be = _dispatch.get_backend(name)
    if method not in (None, "fused"):
        if name not in ("cupy", "simt"):
            raise ValueError(f"cusoft.{fname}: method={method!r} needs a RawKernel backend "
                             f"('cupy' or 'simt'), not {name!r}")
        be = type(be)(variant=method)
    kind = _dispatch.KIND[name]
    user_kind = _dispatch.array_kind(x)
    xk = v.asarray_checked(fname, x, kind)
    dt = v.softmax_dtype(np.dtype(xk.dtype))
    axes = v.normalize_axes(axis, xk.ndim, fname)
    v.check_out(fname, out, xk.shape, dt, user_kind)
    if dt not in v._FLOATS:
        if kind != "host":
            v.device_dtype_check(fname, dt, name)
        return _scipy_fallback(fname, xk, axis, out)
    shape = tuple(xk.shape)
    n = 1
    for a in axes:
        n *= shape[a] if shape else 1
    if n == 0:
        raise ValueError("zero-size array to reduction operation maximum which has no identity")
    xp = v.xp_for(kind)
    if xk.size == 0:
        res = xp.empty(shape, dt)
        return v.finish(res, x, out)
    if xk.dtype != dt:
        xk = v.astype(xk, dt)
    x3, info = v.to_canonical(xp, xk, axes)
    direct = (out is not None and user_kind == kind and info[0] != "moved"
              and out.flags.c_contiguous and _same_or_disjoint(xp, out, x3))
    o3 = out.reshape(x3.shape) if direct else xp.empty(x3.shape, dt)
    be.softmax(x3, o3, log)
    if direct:
        return out
    return v.finish(v.from_canonical(xp, o3, info), x, out)


def _same_or_disjoint(xp, out, x3):
    """Kernels may write ``out`` in place of their input only when it is the input itself
    (same first element, same size, both C-contiguous) or shares no memory with it; a
    partial overlap goes through a temporary, as NumPy's ufuncs do."""
    if _address(out) is not None and _address(out) == _address(x3):
        return out.size == x3.size
    may_share = getattr(xp, "may_share_memory", None)
    return may_share is None or not may_share(out, x3)


def _address(a):
    if hasattr(a, "__array_interface__"):
        return a.__array_interface__["data"][0]
    data = getattr(a, "data", None)
    return getattr(data, "ptr", None)  # CuPy


def _scipy_fallback(fname, xk, axis, out):
    # complex and extended precision on the CPU: SciPy's own code is the reference there.
    import scipy.special

    with np.errstate(all="ignore"):
        res = getattr(scipy.special, fname)(xk, axis=axis)
    if out is not None:
        out[...] = res
        return out
    return res
