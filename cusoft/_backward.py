"""Gradients of softmax and log_softmax with respect to their input."""

from __future__ import annotations

import numpy as np

from . import _dispatch
from . import _validate as v


@_dispatch.on_input_device
def softmax_backward(y, dy, axis=None, *, out=None, backend=None):
    """Vector-Jacobian product of softmax: ``y * (dy - sum(dy * y, axis))``.

    ``y`` is the softmax *output* (not its input) and ``dy`` the gradient of the loss with
    respect to it; ``axis`` must be the one the forward pass used (default ``None``, as in
    :func:`cusoft.softmax`).  Returns the gradient with respect to the softmax input.
    """
    return _backward("softmax_backward", y, dy, axis, out, backend, log=False)


@_dispatch.on_input_device
def log_softmax_backward(y, dy, axis=None, *, out=None, backend=None):
    """Vector-Jacobian product of log_softmax: ``dy - exp(y) * sum(dy, axis)``,
    with ``y`` the log_softmax output."""
    return _backward("log_softmax_backward", y, dy, axis, out, backend, log=True)


def _backward(fname, y, dy, axis, out, backend, log):
    name = _dispatch.choose(y, backend)
    if name == "dask":
        from . import _dask

        return _dask.softmax_backward(y, dy, axis, log=log, out=out)
    be = _dispatch.get_backend(name)
    kind = _dispatch.KIND[name]
    user_kind = _dispatch.array_kind(y)
    yk = v.asarray_checked(fname, y, kind, "y")
    dk = v.asarray_checked(fname, dy, kind, "dy")
    if tuple(yk.shape) != tuple(dk.shape):
        raise ValueError(f"cusoft.{fname}: y has shape {tuple(yk.shape)} but dy has shape "
                         f"{tuple(dk.shape)}; they must be equal")
    dt = np.result_type(yk.dtype, dk.dtype)
    if dt.kind in "biu":
        dt = np.dtype(np.float64)
    dt = np.dtype(dt)
    if dt not in v._FLOATS:
        raise TypeError(f"cusoft.{fname}: dtype {dt} is not supported; use float16, float32 "
                        f"or float64")
    axes = v.normalize_axes(axis, yk.ndim, fname)
    v.check_out(fname, out, yk.shape, dt, user_kind)
    xp = v.xp_for(kind)
    if yk.size == 0:
        res = xp.empty(yk.shape, dt)
    else:
        y3, info = v.to_canonical(xp, v.astype(yk, dt), axes)
        d3, _ = v.to_canonical(xp, v.astype(dk, dt), axes)
        o3 = xp.empty(y3.shape, dt)
        be.softmax_backward(y3, d3, o3, log)
        res = v.from_canonical(xp, o3, info)
    return v.finish(res, y, out)
