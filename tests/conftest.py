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
