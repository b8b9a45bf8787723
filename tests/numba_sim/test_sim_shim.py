"""The warp shim has real warp semantics, and the checks catch planted kernel bugs."""

from __future__ import annotations

import math
import sys
import threading
import time

import numpy as np
import pytest
from numba import cuda, float32, float64

import numba_matrix as M
from cusoft._numba import _simshim, kernels
from cusoft._numba._simshim import SharedRaceError, WarpSyncError
from cusoft._numba.backend import NumbaBackend

# the broken kernels below are simulated with the device's IEEE math, like the real ones
_simshim.install(kernel_modules=(kernels, sys.modules[__name__]))

FULL = 0xFFFFFFFF


def _drain():
    """Let the threads of an aborted launch finish before the next launch starts."""
    deadline = time.monotonic() + 10
    for t in threading.enumerate():
        if type(t).__name__ == "BlockThread":
            t.join(max(0.0, deadline - time.monotonic()))


# -- semantics ------------------------------------------------------------------------------

@cuda.jit
def _exchange(out):
    tid = cuda.threadIdx.x
    lane = tid % 32
    v = tid * 10  # distinct per thread, so a value from another warp would show
    out[0, tid] = cuda.shfl_xor_sync(FULL, v, 5)
    out[1, tid] = cuda.shfl_down_sync(FULL, v, 3)
    out[2, tid] = cuda.shfl_up_sync(FULL, v, 2)
    out[3, tid] = cuda.shfl_sync(FULL, v, 7)
    out[4, tid] = cuda.ballot_sync(FULL, lane % 3 == 0)
    cuda.syncwarp(FULL)
    # half-warp collectives with disjoint masks run side by side
    half = 0x0000FFFF if lane < 16 else 0xFFFF0000
    out[5, tid] = cuda.shfl_xor_sync(half, v, 1)


def test_shuffles_exchange_within_a_warp_only():
    out = np.zeros((6, 64), np.int64)
    _exchange[1, 64](out)
    tid = np.arange(64)
    lane, warp0 = tid % 32, tid - tid % 32
    v = tid * 10
    np.testing.assert_array_equal(out[0], (warp0 + (lane ^ 5)) * 10)
    np.testing.assert_array_equal(out[1], np.where(lane + 3 < 32, v + 30, v))
    np.testing.assert_array_equal(out[2], np.where(lane >= 2, v - 20, v))
    np.testing.assert_array_equal(out[3], (warp0 + 7) * 10)
    np.testing.assert_array_equal(out[4], sum(1 << k for k in range(0, 32, 3)))
    np.testing.assert_array_equal(out[5], (warp0 + (lane ^ 1)) * 10)


@cuda.jit
def _lane_outside_mask(out):
    out[cuda.threadIdx.x] = cuda.shfl_xor_sync(0x0000FFFF, cuda.threadIdx.x, 1)


@cuda.jit
def _lane_never_arrives(out):
    v = cuda.threadIdx.x
    if cuda.threadIdx.x % 32 < 16:
        v = cuda.shfl_xor_sync(FULL, v, 1)
    out[cuda.threadIdx.x] = v


@cuda.jit
def _lane_at_syncthreads(out):
    v = cuda.threadIdx.x
    if cuda.threadIdx.x % 32 == 0:
        cuda.syncthreads()
    else:
        v = cuda.shfl_down_sync(FULL, v, 1)  # names lane 0, which waits at the barrier
    out[cuda.threadIdx.x] = v


@cuda.jit
def _read_outside_mask(out):
    # lanes 0-15 shuffle among themselves; xor 16 reads a lane that is not in the mask
    if cuda.threadIdx.x < 16:
        out[cuda.threadIdx.x] = cuda.shfl_xor_sync(0x0000FFFF, cuda.threadIdx.x, 16)


@cuda.jit
def _float16_shuffle(x, out):
    out[cuda.threadIdx.x] = cuda.shfl_xor_sync(FULL, x[cuda.threadIdx.x], 1)


@pytest.mark.parametrize("kernel,match", [
    (_lane_outside_mask, "does not include it"),
    (_lane_never_arrives, "exited without reaching it"),
    (_lane_at_syncthreads, "waits at syncthreads"),
    (_read_outside_mask, "not in mask"),
])
def test_misuse_raises_instead_of_hanging(kernel, match):
    out = np.zeros(32, np.int64)
    t0 = time.monotonic()
    with pytest.raises(Exception, match=match):
        kernel[1, 32](out)
    _drain()
    assert time.monotonic() - t0 < 30


def test_float16_cannot_be_shuffled():
    with pytest.raises(WarpSyncError, match="cannot shuffle"):
        _float16_shuffle[1, 32](np.ones(32, np.float16), np.zeros(32, np.float16))
    _drain()


@cuda.jit
def _race(out):
    sh = cuda.shared.array(32, float64)
    if cuda.threadIdx.x == 0:
        sh[0] = 1.0
    out[cuda.threadIdx.x] = sh[0]  # no barrier between the write and the reads


def test_shared_race_is_caught():
    with pytest.raises(SharedRaceError):
        _race[1, 32](np.zeros(32))
    _drain()


# -- planted bugs in copies of real kernels: the matrix check must fail ---------------------

@cuda.jit(device=True)
def _warp_max_bad_mask(v):
    off = 16
    while off > 0:
        # BUG: half the warp named in the mask
        v = kernels.nan_max(v, cuda.shfl_xor_sync(0x0000FFFF, v, off))
        off >>= 1
    return v


@cuda.jit
def softmax_fwd_warp_bad_mask(x, out, rows, n, log):
    # a copy of kernels.softmax_fwd_warp (float32) with a wrong mask in the max reduction
    lane = cuda.threadIdx.x & 31
    row = cuda.blockIdx.x * (cuda.blockDim.x >> 5) + (cuda.threadIdx.x >> 5)
    if row >= rows:
        return
    base = row * n
    vals = cuda.local.array(kernels.WARP_ELEMS, float32)
    m = np.float32(-math.inf)
    for k in range(kernels.WARP_ELEMS):
        j = lane + 32 * k
        if j < n:
            v = np.float32(x[base + j])
            vals[k] = v
            m = kernels.nan_max(m, v)
    m = _warp_max_bad_mask(m)
    s = np.float32(0)
    if math.isfinite(m):
        for k in range(kernels.WARP_ELEMS):
            if lane + 32 * k < n:
                s += np.float32(math.exp(vals[k] - m))
    s = kernels.warp_sum(s)
    inv_s = np.float32(1) / s
    log_s = np.float32(math.log(s))
    for k in range(kernels.WARP_ELEMS):
        j = lane + 32 * k
        if j < n:
            out[base + j] = kernels.softmax_elem(vals[k], m, inv_s, log_s, log)


@cuda.jit(device=True)
def _block_max_no_barrier(v, sh):
    v = kernels.warp_max(v)
    if (cuda.threadIdx.x & 31) == 0:
        sh[cuda.threadIdx.x >> 5] = v
    # BUG: no cuda.syncthreads() here: other warps' maxima may not be written yet
    v = sh[0]
    for w in range(1, cuda.blockDim.x >> 5):
        v = kernels.nan_max(v, sh[w])
    cuda.syncthreads()
    return v


@cuda.jit
def softmax_fwd_block_no_barrier(x, out, n, log):
    # a copy of kernels.softmax_fwd_block (float32) whose max reduction lacks a barrier
    buf = cuda.shared.array(0, float32)
    sh_m = cuda.shared.array(32, float32)
    sh_s = cuda.shared.array(32, float32)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    base = cuda.blockIdx.x * n
    m = np.float32(-math.inf)
    for j in range(tid, n, nt):
        v = np.float32(x[base + j])
        buf[j] = v
        m = kernels.nan_max(m, v)
    m = _block_max_no_barrier(m, sh_m)
    s = np.float32(0)
    if math.isfinite(m):
        for j in range(tid, n, nt):
            s += np.float32(math.exp(buf[j] - m))
    s = kernels.block_sum(s, sh_s)
    inv_s = np.float32(1) / s
    log_s = np.float32(math.log(s))
    for j in range(tid, n, nt):
        out[base + j] = kernels.softmax_elem(buf[j], m, inv_s, log_s, log)


@pytest.fixture
def run():
    return M.Runner(NumbaBackend(), to_dev=cuda.to_device, from_dev=lambda d: d.copy_to_host(),
                    empty=lambda shape, dt: cuda.device_array(shape, dt), launch=M.SIM_LAUNCH)


@pytest.fixture
def planted(monkeypatch):
    """Swap one float32 kernel of the backend for a broken copy."""
    def plant(name, kernel):
        monkeypatch.setitem(kernels._compiled, (name, kernels._ACC[np.dtype(np.float32)]),
                            kernel)
    yield plant
    _drain()


def test_the_correct_kernels_pass(run):
    M.check_softmax(run, "warp", np.float32, False)
    M.check_softmax(run, "block", np.float32, False)


def test_wrong_lane_mask_fails_the_check(run, planted):
    planted("softmax_fwd_warp", softmax_fwd_warp_bad_mask)
    with pytest.raises((AssertionError, WarpSyncError)):
        M.check_softmax(run, "warp", np.float32, False)


def test_missing_syncthreads_fails_the_check(run, planted):
    planted("softmax_fwd_block", softmax_fwd_block_no_barrier)
    with pytest.raises((AssertionError, SharedRaceError)):
        M.check_softmax(run, "block", np.float32, False)


def test_missing_syncthreads_is_reported_as_a_race(run, planted):
    # the report names the cause, whichever order the simulated threads ran in
    planted("softmax_fwd_block", softmax_fwd_block_no_barrier)
    with pytest.raises(SharedRaceError, match="no syncthreads"):
        M.check_softmax(run, "block", np.float32, False)
