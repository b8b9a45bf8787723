"""Fused softmax cross-entropy: the loss and its gradient ``softmax - target`` in one pass."""

from __future__ import annotations

import numpy as np

from . import _dispatch
from . import _validate as v

_NO_IGNORE = -(2 ** 63)
_REDUCTIONS = ("mean", "sum", "none")


def _host(a):
    if a is None:
        return None
    from ._numba import arrays

    return arrays.to_host(a)


def _capturing(kind):
    """Whether CuPy's current stream is capturing a CUDA graph (nothing may wait on it)."""
    if kind != "cupy":
        return False
    import cupy

    try:
        return bool(cupy.cuda.get_current_stream().is_capturing())
    except Exception:  # the query itself is illegal while another stream captures globally
        return True


def _mean_scale(xp, lab, w, ign, C):
    """1 / (summed weight of the kept labels) as a 0-d array of ``xp``; 1/0 = inf, so the
    mean is the sum divided by it in IEEE terms (a positive sum over nothing to average is
    inf, an all-ignored 0 is NaN).  On CuPy it never leaves the device, so the call stays
    capturable.  Out-of-range labels (possible only under capture, where the kernels give
    them NaN rows) are counted with weight 0; their NaN reaches the loss through the sum."""
    keep = (lab != ign) & (lab >= 0) & (lab < C)
    if w is None:
        den = keep.sum(dtype=np.float64)
    else:
        den = xp.where(keep, w[xp.where(keep, lab, 0)], 0).sum(dtype=np.float64)
    return xp.where(den != 0, 1.0 / xp.where(den != 0, den, 1.0), np.inf)


def check_logits(fname, x, axis):
    """The compute dtype, class axis, shape, class count and per-row shape of ``logits``
    (any array type), with the errors a NumPy user expects."""
    if x.ndim == 0:
        raise ValueError(f"cusoft.{fname}: logits must have at least one dimension (classes)")
    dt = np.dtype(x.dtype)
    if dt.kind in "biu":
        dt = np.dtype(np.float64)
    if dt not in v._FLOATS:
        raise TypeError(f"cusoft.{fname}: logits dtype {dt} is not supported; use float16, "
                        f"float32 or float64")
    (ax,) = v.normalize_axes(axis, x.ndim, fname)
    shape = tuple(x.shape)
    return dt, ax, shape, shape[ax], shape[:ax] + shape[ax + 1:]


@_dispatch.on_input_device
def softmax_cross_entropy(logits, target, axis=-1, *, reduction="mean", ignore_index=None,
                          label_smoothing=0.0, weight=None, return_grad=False, backend=None):
    """Cross-entropy between ``softmax(logits, axis)`` and ``target``.

    Parameters
    ----------
    logits : array, float
        Unnormalised log-probabilities; ``axis`` is the class axis (C classes).
    target : array
        Either integer class labels with the shape of ``logits`` without ``axis``, or
        float class probabilities with the shape of ``logits``.
    reduction : {"mean", "sum", "none"}
        "mean" divides by the summed weight of the non-ignored labels (labels) or by the
        number of rows (probabilities), as PyTorch does; "none" returns one loss per row.
    ignore_index : int, optional
        Label whose rows add nothing to the loss or the gradient.  Any other label outside
        ``[0, C)`` raises ``ValueError``; on CuPy that check waits for one small reduction
        on the GPU, so under CUDA graph capture (where nothing may wait) it is skipped and
        such a row gets loss NaN and gradient NaN from the kernels instead.  Everything
        else, the "mean" denominator included, stays on the device: the call is capturable.
    label_smoothing : float in [0, 1]
        The target becomes ``(1 - eps) * target + eps / C``.
    weight : array (C,), optional
        Per-class weights.
    return_grad : bool
        Also return the gradient of the (reduced) loss with respect to ``logits``, computed
        fused as ``softmax(logits) * sum(w * t) - w * t`` (never through ``-t / p``).

    Returns
    -------
    loss, or ``(loss, grad)``.
    """
    fname = "softmax_cross_entropy"
    if reduction not in _REDUCTIONS:
        raise ValueError(f"cusoft.{fname}: reduction must be one of {_REDUCTIONS}, "
                         f"not {reduction!r}")
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"cusoft.{fname}: label_smoothing must be in [0, 1], got {eps}")
    name = _dispatch.choose(logits, backend)
    if name == "dask":
        from . import _dask

        return _dask.softmax_cross_entropy(logits, target, axis, reduction=reduction,
                                           ignore_index=ignore_index, label_smoothing=eps,
                                           weight=weight, return_grad=return_grad)
    be = _dispatch.get_backend(name)
    kind = _dispatch.KIND[name]
    xp = v.xp_for(kind)
    x = v.asarray_checked(fname, logits, kind, "logits")
    t = v.asarray_checked(fname, target, kind, "target")
    dt, ax, shape, C, rows_shape = check_logits(fname, x, axis)
    tdt = np.dtype(t.dtype)
    labels = probs = None
    if tdt.kind in "iu":
        if tuple(t.shape) != rows_shape:
            raise ValueError(f"cusoft.{fname}: integer target must have shape {rows_shape} "
                             f"(logits without axis {ax}), got {tuple(t.shape)}")
        labels = v.astype(t, np.int64)
        ign = _NO_IGNORE if ignore_index is None else int(ignore_index)
        # The check (one small reduction) runs where array arithmetic exists; on CuPy its
        # answer costs one host synchronisation, which a CUDA graph capture forbids: there
        # the kernels' own rule applies instead (an out-of-range label gives a NaN row).
        if not _capturing(kind):
            lchk = _host(labels) if kind == "cuda" else labels
            bad = (lchk != ign) & ((lchk < 0) | (lchk >= C))
            if bool(bad.any()):
                first = int(lchk[bad].ravel()[0])
                raise ValueError(f"cusoft.{fname}: target label {first} is out of bounds "
                                 f"for {C} classes")
    elif tdt.kind == "f":
        if tuple(t.shape) != shape:
            raise ValueError(f"cusoft.{fname}: probability target must have the shape of "
                             f"logits {shape}, got {tuple(t.shape)}")
        if ignore_index is not None:
            raise ValueError(f"cusoft.{fname}: ignore_index needs integer class labels")
        probs = v.astype(t, dt)
        ign = _NO_IGNORE
    else:
        raise TypeError(f"cusoft.{fname}: target must be integer labels or float "
                        f"probabilities, not {tdt}")
    w = None
    if weight is not None:
        w = v.astype(v.asarray_checked(fname, weight, kind, "weight"), dt)
        if tuple(w.shape) != (C,):
            raise ValueError(f"cusoft.{fname}: weight must have shape ({C},), got "
                             f"{tuple(w.shape)}")
    x3, _ = v.to_canonical(xp, v.astype(x, dt), (ax,))
    outer, _, inner = x3.shape
    lab3 = None if labels is None else xp.ascontiguousarray(labels).reshape(outer, inner)
    prob3 = None if probs is None else v.to_canonical(xp, probs, (ax,))[0]
    # the reduction's factor, folded into the fused gradient
    if reduction == "mean" and labels is not None:
        if kind == "cupy":
            scale = _mean_scale(xp, lab3, w, ign, C)
        else:   # Numba device arrays have no reductions: their labels are on the host here
            lab, ww = (_host(lab3), _host(w)) if kind == "cuda" else (lab3, w)
            scale = float(_mean_scale(np, lab, ww, ign, C))
    elif reduction == "mean":
        scale = 1.0 / (outer * inner) if outer * inner else float("inf")
    else:
        scale = 1.0
    loss3 = xp.empty((outer, inner), dt)
    grad3 = xp.empty(x3.shape, dt) if return_grad else None
    if outer * inner and C:
        be.cross_entropy(x3, lab3, prob3, w, ign, eps, loss3, grad3, scale)
    elif outer * inner:
        loss3[...] = 0
    loss = loss3.reshape(rows_shape)
    if reduction != "none" and kind == "cuda":
        loss = _host(loss)  # Numba device arrays have no reductions; the result is a scalar
    if reduction == "sum":
        loss = loss.sum(dtype=dt)
    elif reduction == "mean":
        with np.errstate(invalid="ignore", over="ignore"):   # 0/0 and x/0 of IEEE division
            loss = (loss.sum(dtype=np.float64) * scale).astype(dt)
    loss = v.from_kind(loss, logits)
    if isinstance(loss, np.ndarray) and loss.ndim == 0:
        loss = loss[()]
    if not return_grad:
        return loss
    grad = v.from_kind(grad3.reshape(shape), logits)
    return loss, grad
