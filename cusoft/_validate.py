"""Argument checks with NumPy semantics, and the move into and out of the canonical layout.

Every public function goes through ``Call``: it picks the backend, converts the input to the
array type that backend computes on, resolves the result dtype as SciPy does, normalises the
axis argument, checks ``out``, and reshapes to ``(outer, n, inner)`` — a view when the reduced
axes are adjacent and the input is C-contiguous, otherwise one contiguous copy with the
reduced axes moved last (documented cost: one extra read and write of the input).
"""

from __future__ import annotations

import math
import operator

import numpy as np
from numpy.exceptions import AxisError

from . import _dispatch

_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def xp_for(kind):
    """The array module for a backend kind ("host" -> NumPy, "cupy" -> CuPy, "cuda")."""
    if kind == "cupy":
        import cupy

        return cupy
    if kind == "cuda":
        from ._numba import arrays

        return arrays
    return np


def to_kind(x, kind):
    """``x`` as an array of ``kind`` (a copy across host and device when they differ)."""
    src = _dispatch.array_kind(x)
    if kind == "host":
        if src == "cupy":
            return x.get()
        if src == "cuda":
            from ._numba import arrays

            return arrays.to_host(x)
        return np.asarray(x)
    if kind == "cupy":
        import cupy

        return cupy.asarray(x)
    from ._numba import arrays

    return arrays.asarray(x)


def from_kind(y, like):
    """Give the result ``y`` back as the array type of the caller's input ``like``."""
    if y is None:
        return None
    src = _dispatch.array_kind(like)
    have = _dispatch.array_kind(y)
    if src == have or (src == "host" and have == "host"):
        return y
    if src == "host":
        return to_kind(y, "host")
    if src == "cupy":
        import cupy

        return cupy.asarray(y)
    from ._numba import arrays

    return arrays.like(y, like)


def finish(res, like, out):
    """The result as the caller's array type, written into ``out`` when given; a 0-d NumPy
    result becomes a NumPy scalar, as SciPy returns."""
    res = from_kind(res, like)
    if out is not None:
        out[...] = res
        return out
    if isinstance(res, np.ndarray) and res.ndim == 0:
        return res[()]
    return res


def astype(x, dtype):
    """``x`` in ``dtype``; no copy when it already is.  Device arrays without ``astype``
    (Numba's) convert through the host: only integer/bool device input takes that path."""
    if np.dtype(x.dtype) == np.dtype(dtype):
        return x
    if hasattr(x, "astype"):
        return x.astype(dtype)
    from ._numba import arrays

    return arrays.asarray(arrays.to_host(x).astype(dtype))


def softmax_dtype(dtype):
    """Result dtype of softmax/log_softmax: the dtype ``np.exp`` gives (SciPy's rule), with
    booleans treated as the smallest integers (SciPy raises for them)."""
    if dtype.kind == "f" or dtype.kind == "c":
        return dtype
    return np.result_type(dtype, np.float16)


def normalize_axes(axis, ndim, fname):
    """A sorted tuple of non-negative axes; ``None`` means all of them."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, tuple):
        axes = []
        for a in axis:
            axes.append(_one_axis(a, ndim, fname))
        if len(set(axes)) != len(axes):
            raise ValueError("duplicate value in 'axis'")
        return tuple(sorted(axes))
    return (_one_axis(axis, ndim, fname),)


def _one_axis(a, ndim, fname):
    try:
        a = operator.index(a)
    except TypeError:
        raise TypeError(
            f"cusoft.{fname}: axis must be an integer, a tuple of integers or None, "
            f"not {type(a).__name__}") from None
    if ndim == 0:
        # NumPy's reductions accept axis 0 and -1 on a 0-d array (SciPy inherits that)
        if a not in (0, -1):
            raise AxisError(a, ndim)
        return 0
    if not -ndim <= a < ndim:
        raise AxisError(a, ndim)
    return a % ndim


def to_canonical(xp, x, axes):
    """``(x3, shape_info)`` with x3 C-contiguous ``(outer, n, inner)`` reduced over axis 1."""
    shape = tuple(x.shape)
    nd = len(shape)
    if nd == 0:
        return xp.ascontiguousarray(x).reshape(1, 1, 1), ("scalar",)
    if not axes:
        # axis=(): every element is its own slice of length 1
        return xp.ascontiguousarray(x).reshape(-1, 1, 1), ("adjacent", shape, axes)
    if axes == tuple(range(axes[0], axes[-1] + 1)):
        a0, a1 = axes[0], axes[-1]
        outer = math.prod(shape[:a0])
        n = math.prod(shape[a0:a1 + 1])
        inner = math.prod(shape[a1 + 1:])
        x3 = xp.ascontiguousarray(x).reshape(outer, n, inner)
        return x3, ("adjacent", shape, axes)
    rest = [i for i in range(nd) if i not in axes]
    perm = rest + list(axes)
    xt = xp.ascontiguousarray(xp.transpose(x, perm))
    outer = math.prod(shape[i] for i in rest)
    n = math.prod(shape[i] for i in axes)
    x3 = xt.reshape(outer, n, 1)
    return x3, ("moved", shape, axes, perm, tuple(xt.shape))


def from_canonical(xp, y3, info):
    """Undo ``to_canonical`` for a same-shape result (softmax-like)."""
    if info[0] == "scalar":
        return y3.reshape(())
    if info[0] == "adjacent":
        return y3.reshape(info[1])
    _, shape, axes, perm, tshape = info
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return xp.transpose(y3.reshape(tshape), inv)


def reduced_shape(info, keepdims):
    if info[0] == "scalar":
        return ()
    shape, axes = info[1], info[2]
    if keepdims:
        return tuple(1 if i in axes else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in axes)


def check_out(fname, out, shape, dtype, kind):
    """``out=`` must be an array of the input's kind, the result's shape and dtype."""
    if out is None:
        return
    if _dispatch.array_kind(out) != kind or not hasattr(out, "shape") or isinstance(
            out, (list, tuple)):
        raise TypeError(
            f"cusoft.{fname}: out must be an array of the same type as the input "
            f"({kind}), got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(
            f"cusoft.{fname}: out has shape {tuple(out.shape)}, the result has shape "
            f"{tuple(shape)}")
    if np.dtype(out.dtype) != np.dtype(dtype):
        raise TypeError(
            f"cusoft.{fname}: out has dtype {np.dtype(out.dtype)}, the result has dtype "
            f"{np.dtype(dtype)}; pass an out of that dtype")


def asarray_checked(fname, x, kind, name="x"):
    """Convert to the backend's array type and reject object/str inputs before any work."""
    if x is None:
        raise TypeError(f"cusoft.{fname}: {name} must be an array, not None")
    if isinstance(x, (str, bytes)):
        raise TypeError(f"cusoft.{fname}: {name} must be an array, not {type(x).__name__}")
    if kind == "host":
        try:
            arr = np.asarray(x)
        except ValueError as exc:
            raise ValueError(f"cusoft.{fname}: {name} is not a rectangular array: {exc}") from None
    else:
        arr = to_kind(x, kind)
    dt = np.dtype(arr.dtype)
    if dt.kind not in "biufc":
        raise TypeError(
            f"cusoft.{fname}: {name} has unsupported dtype {dt}; expected a real floating, "
            f"integer or boolean array")
    return arr


def device_dtype_check(fname, dtype, backend):
    if dtype not in _FLOATS:
        if dtype.kind == "c":
            raise TypeError(
                f"cusoft.{fname}: complex input is not supported by the {backend!r} backend; "
                f"use NumPy arrays (the CPU path computes it through SciPy)")
        raise TypeError(
            f"cusoft.{fname}: dtype {dtype} is not supported by the {backend!r} backend; "
            f"use float16, float32 or float64")
