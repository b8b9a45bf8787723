"""Warp intrinsics for the Numba CUDA simulator, with real warp semantics (tests only).

numba-cuda's simulator (``NUMBA_ENABLE_CUDASIM=1``) runs every thread of a block as a Python
thread and implements ``syncthreads`` with a per-block barrier, but it has no warp-level
intrinsics at all.  :func:`install` adds ``shfl_sync``, ``shfl_up_sync``, ``shfl_down_sync``,
``shfl_xor_sync``, ``syncwarp``, ``ballot_sync``, ``all_sync`` and ``any_sync`` to the
simulated ``cuda`` module.  They are collectives, as on the device:

* the lanes of a warp are the threads with the same ``linear thread id // 32``; a call
  completes only when every lane named in ``mask`` has made the same call with the same
  mask (a rendezvous under one condition variable per block), and then every lane gets the
  value of its source lane from that same round;
* a lane that calls with a mask not naming itself, a mask naming a lane the warp does not
  have, a source lane outside the mask, a value of a type the device cannot shuffle
  (float16, bool), or lanes meeting at different intrinsics -> ``WarpSyncError``;
* a lane named in the mask that has exited, that waits at ``syncthreads``, or a block in
  which every live thread waits (a deadlock) -> ``WarpSyncError`` in the waiting lanes,
  which the simulator re-raises from the launch; nothing is silently wrong.

With ``racecheck`` (the default) shared memory is checked too: every shared array records,
per element, which thread wrote it and which threads read it since the last ``syncthreads``;
a read of another thread's write, or a write over another thread's write or read, with no
barrier in between is a data race (``SharedRaceError``).  The check is exact, not timing
dependent, so a missing ``syncthreads`` is caught whichever way the Python threads run.

It also gives kernel modules IEEE device math (:class:`DeviceMath`): on the GPU ``exp``
overflows to ``inf`` and ``log(0)`` is ``-inf``, while Python's ``math`` raises; the
replacement computes in the precision of its argument, like the device's ``expf``/``exp``.
Kernel source and algorithms are untouched: the same Python function runs on both.

Install only in a process where the simulator is active (it refuses otherwise)::

    from cusoft._numba import _simshim
    _simshim.install()
"""

from __future__ import annotations

import math
import sys
import threading
import time

import numpy as np

#: give up (as a deadlock) when a rendezvous has waited this long without any diagnosis
TIMEOUT_S = 120.0
#: how often a waiting lane re-checks the lanes it waits for
_POLL_S = 0.005
_SHUFFLE_TYPES = (int, float, np.int32, np.int64, np.uint32, np.uint64, np.float32,
                  np.float64)


class WarpSyncError(RuntimeError):
    """A warp collective used in a way that is undefined or hangs on a real GPU."""


class SharedRaceError(RuntimeError):
    """Two threads of a block touch one shared element with no barrier in between."""


def _element_key(idx):
    if isinstance(idx, tuple):
        return tuple(int(i) for i in idx)
    return int(idx)


class CheckedShared:
    """A simulated shared array that detects races between barriers (see module doc)."""

    def __init__(self, arr):
        self._arr = arr
        self._lock = threading.Lock()
        self._writes = {}  # element -> (manager, epoch, writer tid)
        self._reads = {}   # element -> (manager, epoch, {reader tids})

    def __getattr__(self, name):
        return getattr(self._arr, name)

    def __len__(self):
        return len(self._arr)

    @staticmethod
    def _who():
        t = threading.current_thread()
        return t._manager, getattr(t, "_cusoft_epoch", 0), t.thread_id

    def __getitem__(self, idx):
        mgr, epoch, tid = self._who()
        key = _element_key(idx)
        with self._lock:
            w = self._writes.get(key)
            if w is not None and w[0] is mgr and w[1] == epoch and w[2] != tid:
                raise SharedRaceError(
                    f"shared[{key}]: thread {tid} reads what thread {w[2]} wrote with no "
                    f"syncthreads in between (read-after-write race)")
            r = self._reads.get(key)
            if r is None or r[0] is not mgr or r[1] != epoch:
                self._reads[key] = (mgr, epoch, {tid})
            else:
                r[2].add(tid)
        return self._arr[idx]

    def __setitem__(self, idx, value):
        mgr, epoch, tid = self._who()
        key = _element_key(idx)
        with self._lock:
            w = self._writes.get(key)
            if w is not None and w[0] is mgr and w[1] == epoch and w[2] != tid:
                raise SharedRaceError(
                    f"shared[{key}]: threads {w[2]} and {tid} both write it with no "
                    f"syncthreads in between (write-after-write race)")
            r = self._reads.get(key)
            if r is not None and r[0] is mgr and r[1] == epoch and (r[2] - {tid}):
                raise SharedRaceError(
                    f"shared[{key}]: thread {tid} overwrites what thread(s) "
                    f"{sorted(r[2] - {tid})[:4]} read with no syncthreads in between "
                    f"(write-after-read race)")
            self._writes[key] = (mgr, epoch, tid)
        self._arr[idx] = value


class DeviceMath:
    """``math`` as the device computes it: IEEE results, the argument's precision."""

    inf = math.inf
    nan = math.nan
    pi = math.pi
    e = math.e

    def __getattr__(self, name):
        return getattr(math, name)

    @staticmethod
    def _call(f, *args):
        with np.errstate(all="ignore"):
            return f(*args)

    def exp(self, x):
        return self._call(np.exp, x)

    def expm1(self, x):
        return self._call(np.expm1, x)

    def exp2(self, x):
        return self._call(np.exp2, x)

    def log(self, x):
        return self._call(np.log, x)

    def log1p(self, x):
        return self._call(np.log1p, x)

    def log2(self, x):
        return self._call(np.log2, x)

    def sqrt(self, x):
        return self._call(np.sqrt, x)

    def isfinite(self, x):
        return bool(np.isfinite(x))

    def isnan(self, x):
        return bool(np.isnan(x))

    def isinf(self, x):
        return bool(np.isinf(x))


class _Round:
    """One collective call of the lanes of one warp named by one mask."""

    __slots__ = ("kind", "mask", "arrivals", "results", "done", "error")

    def __init__(self, kind, mask):
        self.kind = kind
        self.mask = mask
        self.arrivals = {}  # lane -> (value, arg)
        self.results = None
        self.done = False
        self.error = None


class _BlockSync:
    """The warp rendezvous state of one simulated block."""

    def __init__(self, nthreads):
        self.cond = threading.Condition()
        self.nthreads = nthreads
        self.threads = {}   # linear thread id -> BlockThread (registered at construction)
        self.open = {}      # (warp, mask) -> _Round still collecting lanes
        self.waiting = {}   # linear thread id -> _Round it waits in

    def diagnose(self, rnd, warp):
        """Why ``rnd`` can never complete, or None while it still may."""
        for lane in _lanes(rnd.mask):
            if lane in rnd.arrivals:
                continue
            t = self.threads.get(warp * 32 + lane)
            if t is None:
                return None  # not constructed yet: the launch is still starting threads
            if getattr(t, "_cusoft_exited", False):
                return (f"{rnd.kind}: lane {lane} of warp {warp} is named in mask "
                        f"{rnd.mask:#010x} but exited without reaching it")
            if t.syncthreads_blocked:
                return (f"{rnd.kind}: lane {lane} of warp {warp} waits at syncthreads while "
                        f"lanes {sorted(rnd.arrivals)} wait at {rnd.kind} with mask "
                        f"{rnd.mask:#010x} (deadlock)")
        # every missing lane waits in another round: a deadlock once nothing can move
        if len(self.threads) < self.nthreads:
            return None
        for tid, t in self.threads.items():
            if getattr(t, "_cusoft_exited", False) or t.syncthreads_blocked:
                continue
            w = self.waiting.get(tid)
            if w is None or w.done:
                return None  # this thread still runs
        return (f"{rnd.kind}: every live thread of the block waits in a warp collective or "
                f"at syncthreads (deadlock); lanes {sorted(rnd.arrivals)} of warp {warp} "
                f"wait with mask {rnd.mask:#010x}")


def _lanes(mask):
    return [lane for lane in range(32) if (mask >> lane) & 1]


def _source_value(rnd, lane, src):
    if src not in rnd.arrivals:
        raise WarpSyncError(f"{rnd.kind}: lane {lane} reads lane {src}, which is not in "
                            f"mask {rnd.mask:#010x} (undefined on the device)")
    return rnd.arrivals[src][0]


def _resolve(rnd):
    """The result of every lane of a complete round."""
    kind = rnd.kind
    out = {}
    if kind == "syncwarp":
        return dict.fromkeys(rnd.arrivals)
    if kind in ("ballot_sync", "all_sync", "any_sync"):
        bits = 0
        for lane, (pred, _) in rnd.arrivals.items():
            if pred:
                bits |= 1 << lane
        if kind == "ballot_sync":
            res = bits
        elif kind == "all_sync":
            res = int(bits == rnd.mask)
        else:
            res = int(bits != 0)
        return dict.fromkeys(rnd.arrivals, res)
    for lane, (value, arg) in rnd.arrivals.items():
        arg = int(arg)
        if kind == "shfl_sync":
            src = arg % 32
        elif kind == "shfl_up_sync":
            src = lane - arg
            if src < 0:
                out[lane] = value
                continue
        elif kind == "shfl_down_sync":
            src = lane + arg
            if src >= 32:
                out[lane] = value
                continue
        else:  # shfl_xor_sync
            src = lane ^ arg
            if src >= 32:
                out[lane] = value
                continue
        out[lane] = _source_value(rnd, lane, src)
    return out


def _collective(kind, mask, value, arg):
    t = threading.current_thread()
    mgr = getattr(t, "_manager", None)
    sync = getattr(mgr, "_cusoft_sync", None)
    if sync is None:
        raise WarpSyncError(f"{kind} called outside a simulated kernel")
    mask = int(mask)
    if mask < 0 or mask > 0xFFFFFFFF:
        raise WarpSyncError(f"{kind}: mask {mask:#x} is not a 32-bit lane mask")
    if kind.startswith("shfl") and not isinstance(value, _SHUFFLE_TYPES):
        raise WarpSyncError(f"{kind}: cannot shuffle a {type(value).__name__} (the device "
                            f"shuffles int32, int64, float32 and float64)")
    tid = t.thread_id
    lane, warp = tid % 32, tid // 32
    if not (mask >> lane) & 1:
        raise WarpSyncError(f"{kind}: lane {lane} of warp {warp} calls with mask "
                            f"{mask:#010x}, which does not include it")
    present = min(32, sync.nthreads - warp * 32)
    if mask >> present:
        raise WarpSyncError(f"{kind}: mask {mask:#010x} names lanes that warp {warp} "
                            f"(of {present} threads) does not have")
    with sync.cond:
        key = (warp, mask)
        rnd = sync.open.get(key)
        if rnd is None:
            rnd = sync.open[key] = _Round(kind, mask)
        if rnd.kind != kind:
            rnd.error = (f"lanes of warp {warp} with mask {mask:#010x} meet at different "
                         f"intrinsics: {rnd.kind} and {kind}")
            rnd.done = True
            del sync.open[key]
            sync.cond.notify_all()
            raise WarpSyncError(rnd.error)
        rnd.arrivals[lane] = (value, arg)
        if len(rnd.arrivals) == bin(mask).count("1"):
            del sync.open[key]
            try:
                rnd.results = _resolve(rnd)
            except WarpSyncError as exc:
                rnd.error = str(exc)
            rnd.done = True
            sync.cond.notify_all()
        else:
            sync.waiting[tid] = rnd
            start = time.monotonic()
            try:
                while not rnd.done:
                    sync.cond.wait(_POLL_S)
                    if rnd.done:
                        break
                    if t.abort:
                        raise RuntimeError(f"abort flag set while waiting in {kind}")
                    why = sync.diagnose(rnd, warp)
                    if why is None and time.monotonic() - start > TIMEOUT_S:
                        why = (f"{kind}: lanes {sorted(rnd.arrivals)} of warp {warp} waited "
                               f"{TIMEOUT_S:.0f} s for mask {mask:#010x}")
                    if why is not None:
                        rnd.error = why
                        rnd.done = True
                        sync.open.pop(key, None)
                        sync.cond.notify_all()
            finally:
                sync.waiting.pop(tid, None)
        if rnd.error is not None:
            raise WarpSyncError(rnd.error)
        return rnd.results[lane]


_FULL = 0xFFFFFFFF


def _shfl_sync(self, mask, value, src_lane):
    return _collective("shfl_sync", mask, value, src_lane)


def _shfl_up_sync(self, mask, value, delta):
    return _collective("shfl_up_sync", mask, value, delta)


def _shfl_down_sync(self, mask, value, delta):
    return _collective("shfl_down_sync", mask, value, delta)


def _shfl_xor_sync(self, mask, value, lane_mask):
    return _collective("shfl_xor_sync", mask, value, lane_mask)


def _syncwarp(self, mask=_FULL):
    _collective("syncwarp", mask, None, 0)


def _ballot_sync(self, mask, predicate):
    return _collective("ballot_sync", mask, bool(predicate), 0)


def _all_sync(self, mask, predicate):
    return _collective("all_sync", mask, bool(predicate), 0)


def _any_sync(self, mask, predicate):
    return _collective("any_sync", mask, bool(predicate), 0)


_INTRINSICS = {
    "shfl_sync": _shfl_sync,
    "shfl_up_sync": _shfl_up_sync,
    "shfl_down_sync": _shfl_down_sync,
    "shfl_xor_sync": _shfl_xor_sync,
    "syncwarp": _syncwarp,
    "ballot_sync": _ballot_sync,
    "all_sync": _all_sync,
    "any_sync": _any_sync,
}
_saved = None


def simulator_active():
    from numba.cuda.core import config

    return bool(config.ENABLE_CUDASIM)


def install(kernel_modules=None, racecheck=True):
    """Add the warp intrinsics (and, with ``racecheck``, the shared-memory race check) to
    the simulator and IEEE math to ``kernel_modules`` (default: ``cusoft._numba.kernels``).
    Idempotent; RuntimeError when the simulator is not active."""
    global _saved
    if not simulator_active():
        raise RuntimeError("the warp shim is for the CUDA simulator only: set "
                           "NUMBA_ENABLE_CUDASIM=1 before numba is imported")
    if kernel_modules is None:
        from . import kernels

        kernel_modules = (kernels,)
    for mod in kernel_modules:
        if not isinstance(mod.__dict__.get("math"), DeviceMath):
            mod.math = DeviceMath()
    if _saved is not None:
        return
    from numba.cuda import types as numba_types
    from numba.cuda.np import numpy_support
    from numba.cuda.simulator import kernel as simkernel
    from numba.cuda.simulator import kernelapi

    mgr_init = simkernel.BlockManager.__init__
    thr_init = simkernel.BlockThread.__init__
    thr_run = simkernel.BlockThread.run
    thr_sync = simkernel.BlockThread.syncthreads
    shared_array = kernelapi.FakeCUDAShared.array

    def manager_init(self, f, grid_dim, block_dim, debug):
        mgr_init(self, f, grid_dim, block_dim, debug)
        self._cusoft_sync = _BlockSync(int(np.prod(block_dim)))

    def thread_init(self, f, manager, blockIdx, threadIdx, debug):
        thr_init(self, f, manager, blockIdx, threadIdx, debug)
        self._cusoft_exited = False
        self._cusoft_epoch = 0  # barriers passed: equal in all threads between barriers
        # registered in the launching thread, before start(): a lane that is missing from
        # this table has not been created yet, a registered one that is gone has exited
        sync = getattr(manager, "_cusoft_sync", None)
        if sync is not None:
            with sync.cond:
                sync.threads[self.thread_id] = self

    def thread_run(self):
        try:
            # device arithmetic does not trap: inf - inf is NaN, 1/0 is inf, silently
            with np.errstate(all="ignore"):
                thr_run(self)
        finally:
            self._cusoft_exited = True
            sync = getattr(self._manager, "_cusoft_sync", None)
            if sync is not None:
                with sync.cond:
                    sync.cond.notify_all()

    def thread_syncthreads(self):
        thr_sync(self)
        self._cusoft_epoch += 1

    def checked_shared_array(self, shape, dtype, alignment=None):
        cache = self.__dict__.setdefault("_cusoft_checked", {})
        if shape == 0:
            arr = shared_array(self, shape, dtype, alignment)
            key = ("dynamic", np.dtype(arr.dtype).str)
        else:
            # as the simulator: one static array per source line of the allocation
            caller = sys._getframe(1)
            key = (caller.f_code.co_filename, caller.f_lineno)
            arr = None
        chk = cache.get(key)
        if chk is None:
            if arr is None:
                if alignment is not None:
                    raise RuntimeError("Array alignment is not supported in cudasim")
                if isinstance(dtype, numba_types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                arr = np.empty(shape, dtype)
            # one checker per buffer, shared by all threads of the launch
            chk = cache.setdefault(key, CheckedShared(arr))
        return chk

    _saved = {
        "manager_init": mgr_init, "thread_init": thr_init, "thread_run": thr_run,
        "thread_sync": thr_sync, "shared_array": shared_array,
        "intrinsics": {k: getattr(kernelapi.FakeCUDAModule, k, None) for k in _INTRINSICS},
    }
    simkernel.BlockManager.__init__ = manager_init
    simkernel.BlockThread.__init__ = thread_init
    simkernel.BlockThread.run = thread_run
    simkernel.BlockThread.syncthreads = thread_syncthreads
    if racecheck:
        kernelapi.FakeCUDAShared.array = checked_shared_array
    for name, fn in _INTRINSICS.items():
        setattr(kernelapi.FakeCUDAModule, name, fn)


def uninstall():
    """Undo :func:`install` (the kernel modules keep DeviceMath, which is harmless)."""
    global _saved
    if _saved is None:
        return
    from numba.cuda.simulator import kernel as simkernel
    from numba.cuda.simulator import kernelapi

    simkernel.BlockManager.__init__ = _saved["manager_init"]
    simkernel.BlockThread.__init__ = _saved["thread_init"]
    simkernel.BlockThread.run = _saved["thread_run"]
    simkernel.BlockThread.syncthreads = _saved["thread_sync"]
    kernelapi.FakeCUDAShared.array = _saved["shared_array"]
    for name, fn in _saved["intrinsics"].items():
        if fn is None:
            delattr(kernelapi.FakeCUDAModule, name)
        else:
            setattr(kernelapi.FakeCUDAModule, name, fn)
    _saved = None
