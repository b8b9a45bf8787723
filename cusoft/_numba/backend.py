"""``NumbaBackend``: the cusoft backend contract (``cusoft/_backend.py``) on Numba-CUDA.

Each method views its arguments as Numba device arrays without copying (see ``arrays``),
picks a kernel variant with ``_launch.choose_launch`` and launches the kernels of
``kernels`` on the stream of the input array.  Kernels compile on first use, once per
signature, and are cached on disk.
"""

from __future__ import annotations

import math

import numpy as np

from .._backend import Backend
from . import arrays
from ._launch import choose_launch
from .arrays import as_device, device_scratch, flat, stream_of
from .kernels import (XENT_GRAD, XENT_LABELS, XENT_SCALE_ARRAY, XENT_WEIGHT, acc_dtype,
                      get_kernel)

empty_like_device = arrays.empty_like_device

#: threads per block of the one-thread-per-row kernels (finish, merge)
_ROW_BLOCK = 256


def _sm_count():
    from numba import cuda

    if arrays.simulator_active():
        return 4
    try:
        return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    except Exception:
        return 108


def _rows_launch(total, launch_block):
    block = min(_ROW_BLOCK, launch_block) if launch_block else _ROW_BLOCK
    return max(1, math.ceil(total / block)), block


class NumbaBackend(Backend):
    """Numba-CUDA kernels for device arrays that are not CuPy (Numba, PyTorch, any CAI)."""

    name = "numba"

    def __init__(self):
        self._sms = None
        self._dummy_labels = None

    # -- setup -------------------------------------------------------------------------------
    def available(self):
        try:
            from numba import cuda
        except ImportError as exc:
            return False, f"numba-cuda is not installed ({exc}); pip install numba-cuda"
        if arrays.simulator_active():
            from numba.cuda.simulator.kernelapi import FakeCUDAModule

            if not hasattr(FakeCUDAModule, "shfl_xor_sync"):
                return False, ("the CUDA simulator is on but has no warp shuffles; call "
                               "cusoft._numba._simshim.install() first")
            return True, "CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
        try:
            ok = cuda.is_available()
        except Exception as exc:  # a broken driver must not break dispatch
            return False, f"numba cannot initialise CUDA: {exc}"
        if not ok:
            return False, "no CUDA GPU or driver visible to numba (cuda.is_available() is False)"
        return True, "usable"

    def _plan(self, x, family):
        if self._sms is None:
            self._sms = _sm_count()
        outer, n, inner = (int(s) for s in x.shape)
        return outer, n, inner, choose_launch(outer, n, inner, x.dtype, family, self._sms)

    # -- forward -----------------------------------------------------------------------------
    def softmax(self, x, out, log):
        stream = stream_of(x)
        xd, od = as_device(x), as_device(out)
        outer, n, inner, L = self._plan(xd, "softmax_fwd")
        dt = xd.dtype
        xf, of = flat(xd), flat(od)
        log = 1 if log else 0
        if L.variant == "warp":
            get_kernel("softmax_fwd_warp", dt)[L.grid, L.block, stream](xf, of, outer, n, log)
        elif L.variant == "block":
            get_kernel("softmax_fwd_block", dt)[L.grid, L.block, stream, L.shared](
                xf, of, n, log)
        elif L.variant == "split":
            acc = acc_dtype(dt)
            pm = device_scratch(outer * L.nsplit, acc, stream)
            ps = device_scratch(outer * L.nsplit, acc, stream)
            get_kernel("softmax_fwd_split", dt)[L.grid, L.block, stream](xf, pm, ps, n, L.chunk)
            get_kernel("softmax_fwd_split_norm", dt)[L.grid, L.block, stream](
                xf, of, pm, ps, n, L.chunk, log)
        else:
            get_kernel("softmax_fwd_col", dt)[L.grid, L.block, stream](
                xf, of, outer, n, inner, log)
        return out

    def _partials(self, xd, bd, stream):
        """Launch the partial kernel: (pm, pc, pr, nsplit), (outer*inner*nsplit) each."""
        outer, n, inner, L = self._plan(xd, "logsumexp")
        dt = xd.dtype
        acc = acc_dtype(dt)
        size = outer * inner * L.nsplit
        pm = device_scratch(size, acc, stream)
        pc = device_scratch(size, acc, stream)
        pr = device_scratch(size, acc, stream)
        xf = flat(xd)
        has_b = bd is not None
        bf = flat(bd) if has_b else xf
        if L.variant == "warp":
            get_kernel("logsumexp_warp", dt)[L.grid, L.block, stream](
                xf, bf, has_b, pm, pc, pr, outer, n)
        elif L.variant == "block":
            get_kernel("logsumexp_block", dt)[L.grid, L.block, stream](
                xf, bf, has_b, pm, pc, pr, n)
        elif L.variant == "split":
            get_kernel("logsumexp_split", dt)[L.grid, L.block, stream](
                xf, bf, has_b, pm, pc, pr, n, L.chunk)
        else:
            get_kernel("logsumexp_col", dt)[L.grid, L.block, stream](
                xf, bf, has_b, pm, pc, pr, outer, n, inner)
        return pm, pc, pr, L

    def logsumexp(self, x, b, out, sign):
        stream = stream_of(x)
        xd, od = as_device(x), as_device(out)
        bd = as_device(b)
        sd = as_device(sign)
        outer, n, inner = (int(s) for s in xd.shape)
        pm, pc, pr, L = self._partials(xd, bd, stream)
        xf, of = flat(xd), flat(od)
        has_b = bd is not None
        want_sign = sd is not None
        total = outer * inner
        grid, block = _rows_launch(total, L.block)
        get_kernel("logsumexp_finish", xd.dtype)[grid, block, stream](
            xf, flat(bd) if has_b else xf, has_b, pm, pc, pr, L.nsplit, of,
            flat(sd) if want_sign else of, want_sign, n, inner, total)
        return out

    def partial(self, x, b, m, c, r):
        stream = stream_of(x)
        xd, bd = as_device(x), as_device(b)
        md, cd, rd = as_device(m), as_device(c), as_device(r)
        outer, n, inner = (int(s) for s in xd.shape)
        pm, pc, pr, L = self._partials(xd, bd, stream)
        total = outer * inner
        grid, block = _rows_launch(total, L.block)
        get_kernel("logsumexp_merge", xd.dtype)[grid, block, stream](
            pm, pc, pr, L.nsplit, flat(md), flat(cd), flat(rd), total)
        return m, c, r

    # -- backward ----------------------------------------------------------------------------
    def softmax_backward(self, y, dy, out, log):
        stream = stream_of(y)
        yd, dyd, od = as_device(y), as_device(dy), as_device(out)
        outer, n, inner, L = self._plan(yd, "softmax_bwd")
        dt = yd.dtype
        yf, df, of = flat(yd), flat(dyd), flat(od)
        log = 1 if log else 0
        if L.variant == "warp":
            get_kernel("softmax_bwd_warp", dt)[L.grid, L.block, stream](yf, df, of, outer, n, log)
        elif L.variant == "block":
            get_kernel("softmax_bwd_block", dt)[L.grid, L.block, stream](yf, df, of, n, log)
        else:
            get_kernel("softmax_bwd_col", dt)[L.grid, L.block, stream](
                yf, df, of, outer, n, inner, log)
        return out

    # -- cross-entropy -----------------------------------------------------------------------
    def _labels_dummy(self, stream):
        if self._dummy_labels is None:
            self._dummy_labels = device_scratch(1, np.int64, stream)
        return self._dummy_labels

    def cross_entropy(self, x, labels, probs, weight, ignore_index, smoothing, loss, grad,
                      grad_scale):
        stream = stream_of(x)
        xd, ld = as_device(x), as_device(loss)
        outer, n, inner, L = self._plan(xd, "xent")
        dt = xd.dtype
        xf, lf = flat(xd), flat(ld)
        flags = 0
        if labels is not None:
            flags |= XENT_LABELS
            labf = flat(as_device(labels))
        else:
            labf = self._labels_dummy(stream)
        probf = flat(as_device(probs)) if probs is not None else xf
        if weight is not None:
            flags |= XENT_WEIGHT
            wf = flat(as_device(weight))
        else:
            wf = xf
        if grad is not None:
            flags |= XENT_GRAD
            gf = flat(as_device(grad))
        else:
            gf = xf  # never written: the flag is off
        if np.isscalar(grad_scale) or grad_scale is None:
            scale_arr, scale_val = lf, float(1.0 if grad_scale is None else grad_scale)
        else:
            flags |= XENT_SCALE_ARRAY
            scale_arr, scale_val = flat(as_device(grad_scale)), 0.0
        ign = int(ignore_index) if ignore_index is not None else -(2 ** 63)
        args = (xf, labf, probf, wf, lf, gf, scale_arr, scale_val, ign, float(smoothing),
                flags)
        if L.variant == "warp":
            get_kernel("xent_warp", dt)[L.grid, L.block, stream](*args, outer, n)
        elif L.variant == "block":
            get_kernel("xent_block", dt)[L.grid, L.block, stream](*args, n)
        else:
            get_kernel("xent_col", dt)[L.grid, L.block, stream](*args, outer, n, inner)
        return loss, grad
