"""Markers, skips with visible reasons, and the one tolerance table of the suite."""

from __future__ import annotations

import functools
import shutil

import numpy as np
import pytest

from cusoft._check import TOLERANCE as TOL  # the one tolerance table (also used by `check`)


@functools.lru_cache(None)
def gpu_reason():
    """None when a CUDA GPU is usable, else why not."""
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
        return None if n > 0 else "no CUDA GPU visible"
    except Exception as exc:
        return f"no CUDA GPU: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}"


@functools.lru_cache(None)
def cxx_reason():
    import os

    cxx = os.environ.get("CXX", "g++")
    return None if shutil.which(cxx) else f"no C++ compiler ({cxx}) on PATH for the simt backend"


@functools.lru_cache(None)
def simt_reason():
    """None when the simt harness can build and run kernels here, else why not."""
    try:
        from cusoft.simt import available
    except Exception as exc:  # the harness itself failed to import
        return f"cusoft.simt does not import: {exc}"
    ok, why = available()
    return None if ok else why


def ref_xent(x, target, axis=-1, reduction="mean", ignore_index=None, eps=0.0, weight=None,
             with_grad=False):
    """Softmax cross-entropy in float64, straight from the definition (PyTorch's reduction
    rules: "mean" divides by the summed weight of the kept labels, or by the row count for
    probability targets); with ``with_grad`` also the gradient softmax*sum(w t) - w t of
    the reduced loss."""
    import scipy.special as sp

    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    C = x.shape[-1]
    with np.errstate(all="ignore"):
        logp = sp.log_softmax(x, axis=-1)
    w = np.ones(C) if weight is None else np.asarray(weight, np.float64)
    if np.asarray(target).dtype.kind in "iu":
        lab = np.asarray(target)
        keep = np.ones(lab.shape, bool) if ignore_index is None else lab != ignore_index
        safe = np.where(keep, lab, 0)
        t = np.eye(C)[safe] * (1 - eps) + eps / C
        t = t * keep[..., None]
        den = np.sum(w[safe] * keep)
    else:
        t = (1 - eps) * np.moveaxis(np.asarray(target, np.float64), axis, -1) + eps / C
        den = t[..., 0].size
    wt = t * w
    with np.errstate(invalid="ignore", divide="ignore"):
        loss = -np.sum(np.where(wt == 0, 0, wt * logp), axis=-1)
        grad = np.exp(logp) * wt.sum(axis=-1, keepdims=True) - wt
        if reduction == "sum":
            loss = loss.sum()
        elif reduction == "mean":
            loss = loss.sum() / den
            grad = grad / den
    if np.asarray(target).dtype.kind in "iu":
        # an ignored row's gradient is exactly 0, whatever its logits or the factor
        grad = np.where(keep[..., None], grad, 0.0)
    if with_grad:
        return loss, np.moveaxis(grad, -1, axis)
    return loss


def pytest_collection_modifyitems(config, items):
    reason = gpu_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def assert_close(got, ref, dtype, *, what=""):
    """Element-wise comparison against a float64 reference: NaN where the reference has
    NaN, equal infinities, and |got - ref| <= tol * max(1, |ref|) elsewhere."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    # a finite reference beyond the dtype's range is an infinity in that dtype
    big = np.abs(ref) > np.finfo(dtype).max
    ref = np.where(big, np.copysign(np.inf, ref), ref)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    nan_ref = np.isnan(ref)
    nan_got = np.isnan(got)
    assert np.array_equal(nan_ref, nan_got), (
        f"{what}: NaN positions differ (ref {np.argwhere(nan_ref)[:5].tolist()}, "
        f"got {np.argwhere(nan_got)[:5].tolist()})")
    inf = np.isinf(ref)
    assert np.array_equal(got[inf], ref[inf]), f"{what}: infinities differ"
    fin = ~(nan_ref | inf)
    if fin.any():
        err = np.abs(got[fin] - ref[fin]) / np.maximum(1.0, np.abs(ref[fin]))
        tol = TOL[np.dtype(dtype)]
        assert err.max() <= tol, f"{what}: max error {err.max():.3g} > {tol:.1g}"
