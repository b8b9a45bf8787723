"""The RawKernel backend: runs the launch plans of ``cusoft/_launch.py`` on ``kernels_cu``.

:class:`KernelBackend` is the generic part (plans -> launches, workspaces, the empty-row
SciPy values); a subclass provides three things: how to get a kernel by name expression,
how to allocate an array, and the device limits.  :class:`CupyBackend` does so with CuPy
(``cupy.RawModule``, current stream, no host synchronisation); ``cusoft/simt/backend.py``
does so with the CPU emulator, so the emulated launch is the one the GPU gets.
"""

from __future__ import annotations

import numpy

from cusoft import _launch
from cusoft._backend import Backend
from cusoft._cupy import _module


class KernelBackend(Backend):
    """Backend running ``kernels_cu`` kernels through a RawModule-like object.

    Keyword arguments (``variant``, ``threads``, ``chunk_len``) are passed to the launch
    planner; tests use them to force every variant at small sizes.
    """

    name = "kernels"

    def __init__(self, **launch_options):
        unknown = set(launch_options) - {"variant", "threads", "chunk_len"}
        if unknown:
            raise TypeError(f"unknown launch options {sorted(unknown)}; use variant=, threads=, "
                            "chunk_len=")
        self.launch_options = launch_options
        #: the Plan of the most recent call (tests read .variant from it)
        self.last_plan = None

    # -- what a subclass provides --------------------------------------------------------
    def _function(self, name_expression):
        """A callable ``f(grid, block, args, shared_mem=n)`` (a kernel of softmax.cu)."""
        raise NotImplementedError

    def _function_in(self, file, name_expression):
        """The kernel ``name_expression`` of op file ``file``.  Default: :meth:`_function`
        for softmax.cu; for the other files, the ``get_module(file)`` function of the module
        that defines the subclass (``cusoft/simt/backend.py`` has one).  A subclass may
        override this instead."""
        if file == _module.SOURCES[0]:
            return self._function(name_expression)
        import sys

        getter = getattr(sys.modules[type(self).__module__], "get_module", None)
        if getter is None:
            raise NotImplementedError(f"{type(self).__name__} cannot load {file}: override "
                                      "_function_in(file, name_expression)")
        return getter(file).get_function(name_expression)

    def _empty(self, like, count, dtype):
        raise NotImplementedError

    def _limits(self):
        return _launch.DeviceLimits()

    # -- the generic part ----------------------------------------------------------------
    def _run(self, plan, named, like):
        self.last_plan = plan
        for ws, (count, dtype) in plan.workspace.items():
            named[ws] = self._empty(like, max(int(count), 1), dtype)
        for la in plan.launches:
            args = tuple(named[a] if isinstance(a, str) else a for a in la.args)
            fn = self._function_in(_module.file_of(la.kernel), la.kernel)
            fn(la.grid, la.block, args, shared_mem=la.shared)

    def softmax(self, x, out, log):
        outer, n, inner = x.shape
        plan = _launch.launch_softmax(outer, n, inner, x.dtype, log, self._limits(),
                                      **self.launch_options)
        self._run(plan, {"x": x, "y": out}, x)

    def logsumexp(self, x, b, out, sign):
        outer, n, inner = x.shape
        if n == 0:
            # SciPy: an empty sum gives -inf and sign(-inf) = -1
            out[...] = -numpy.inf
            if sign is not None:
                sign[...] = -1
            return
        plan = _launch.launch_logsumexp(outer, n, inner, x.dtype, self._limits(),
                                        **self.launch_options)
        named = {"x": x, "b": x if b is None else b, "has_b": numpy.int32(b is not None),
                 "out": out, "sign": out if sign is None else sign,
                 "has_sign": numpy.int32(sign is not None)}
        self._run(plan, named, x)

    def partial(self, x, b, m, c, r):
        outer, n, inner = x.shape
        if n == 0:
            m[...] = -numpy.inf
            c[...] = 0
            r[...] = 0
            return
        plan = _launch.launch_partial(outer, n, inner, x.dtype, self._limits(),
                                      **self.launch_options)
        named = {"x": x, "b": x if b is None else b, "has_b": numpy.int32(b is not None),
                 "m": m, "c": c, "r": r}
        self._run(plan, named, x)

    def softmax_backward(self, y, dy, out, log):
        outer, n, inner = y.shape
        plan = _launch.launch_backward(outer, n, inner, y.dtype, log, self._limits(),
                                       **self.launch_options)
        self._run(plan, {"y": y, "dy": dy, "out": out}, y)

    def cross_entropy(self, x, labels, probs, weight, ignore_index, smoothing, loss, grad,
                      grad_scale):
        outer, n, inner = x.shape
        plan = _launch.launch_xent(outer, n, inner, x.dtype, self._limits(),
                                   **self.launch_options)
        if plan.variant == "empty-rows":
            loss[...] = 0   # no classes: every term of the sum is absent
            return
        acc = _launch.acc_dtype(x.dtype)
        # grad_scale reaches the kernels as an array: one value (a Python float, or a
        # device array the caller computed without leaving the GPU) or one per row.
        if hasattr(grad_scale, "shape"):
            scale = grad_scale.reshape(-1).astype(acc, copy=False)
            if not scale.flags.c_contiguous:
                scale = scale.copy()
        else:
            scale = self._empty(x, 1, acc)
            scale[...] = float(grad_scale)
        step = 0 if scale.size == 1 else 1
        named = {
            "x": x,
            # placeholders for absent optional arrays (flags say which are real)
            "labels": labels if labels is not None else self._empty(x, 1, numpy.int64),
            "probs": x if probs is None else probs, "has_probs": numpy.int32(probs is not None),
            "weight": x if weight is None else weight,
            "has_weight": numpy.int32(weight is not None),
            "ignore_index": numpy.int64(ignore_index), "smoothing": acc.type(smoothing),
            "loss": loss, "grad": x if grad is None else grad,
            "has_grad": numpy.int32(grad is not None),
            "grad_scale": scale, "scale_step": numpy.int64(step),
        }
        self._run(plan, named, x)


class CupyBackend(KernelBackend):
    """cusoft on CuPy arrays with the CUDA C kernels of ``kernels_cu`` (NVRTC via CuPy).

    Kernels launch on CuPy's current stream; nothing synchronises the host.  The module is
    compiled on first use per device (see :func:`cusoft._cupy.precompile`).
    """

    name = "cupy"

    def available(self):
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                return False, "no CUDA device visible to CuPy"
        except Exception as exc:  # ImportError, CUDARuntimeError, driver missing
            return False, f"CuPy cannot use a GPU here: {type(exc).__name__}: {exc}"
        return True, ""

    def _function(self, name_expression):
        from cusoft._cupy._module import get_function

        return get_function(name_expression)

    def _function_in(self, file, name_expression):
        from cusoft._cupy._module import get_function

        return get_function(name_expression, file)

    def _empty(self, like, count, dtype):
        import cupy

        return cupy.empty(count, dtype=dtype)

    def _limits(self):
        import cupy

        dev = cupy.cuda.Device().id
        lim = _LIMITS.get(dev)
        if lim is None:
            lim = _LIMITS[dev] = _launch.DeviceLimits.from_cupy(dev)
        return lim


_LIMITS = {}
