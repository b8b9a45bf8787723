"""Device arrays for the Numba backend: zero-copy views, same-kind outputs, streams.

Any ``__cuda_array_interface__`` array (Numba device array, PyTorch CUDA tensor, ...) is
viewed without a copy through ``cuda.as_cuda_array``; results are allocated as the same kind
of array as the input (:func:`empty_like_device`), and kernels are launched on the stream
the input's interface names (:func:`stream_of`), so work stays ordered with the producer's.
Under the CUDA simulator NumPy arrays and the simulator's fake device arrays are accepted.
"""

from __future__ import annotations

import numpy as np


def _cuda():
    from numba import cuda

    return cuda


def simulator_active():
    from numba.cuda.core import config

    return bool(config.ENABLE_CUDASIM)


def _is_numba_device_array(a):
    from numba.cuda.cudadrv.devicearray import is_cuda_ndarray

    return is_cuda_ndarray(a)


def _is_torch(a):
    return type(a).__module__.split(".", 1)[0] == "torch"


def as_device(a):
    """A Numba view of ``a`` (no copy).  NumPy arrays only under the simulator."""
    if a is None:
        return None
    if _is_numba_device_array(a):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        # no sync: the kernels are launched on the stream the interface names (stream_of)
        return _cuda().as_cuda_array(a, sync=False)
    if isinstance(a, np.ndarray) and simulator_active():
        # the simulator's fake device array over the same memory: passing the NumPy array
        # itself would copy it in and out around each launch, and two arguments on one
        # buffer (out is x) would overwrite each other's results on the way back
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

        return FakeCUDAArray(a)
    raise TypeError(f"the numba backend needs a CUDA device array (__cuda_array_interface__), "
                    f"got {type(a).__name__}; move it to the GPU first or use backend='cpu'")


def _pointer_device(a):
    """The ordinal of the GPU holding ``a``'s memory (None if unknown or empty)."""
    ptr = a.__cuda_array_interface__["data"][0]
    if not ptr:
        return None
    try:
        from numba.cuda.cudadrv import driver as drv

        attr = drv.binding.CUpointer_attribute.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL
        return int(drv.driver.cuPointerGetAttribute(attr, drv.binding.CUdeviceptr(ptr)))
    except Exception:  # another numba-cuda layout, or not device memory: keep the current
        return None


def device_context(arrs, fname):
    """A context making the GPU that holds ``arrs`` Numba's current one, so outputs are
    allocated and kernels launched there (a PyTorch tensor on cuda:1 with Numba's default
    context on device 0 would otherwise be read across devices).  Arrays of two GPUs raise
    ValueError.  Nothing to do (and nothing queried) on a one-GPU machine or the simulator."""
    import contextlib

    if not arrs or simulator_active():
        return contextlib.nullcontext()
    cuda = _cuda()
    try:
        if len(cuda.gpus) < 2:
            return contextlib.nullcontext()
    except Exception:  # no driver: the backend itself will say so
        return contextlib.nullcontext()
    devs = {d for d in map(_pointer_device, arrs) if d is not None}
    if len(devs) > 1:
        raise ValueError(f"cusoft.{fname}: the device arrays live on different GPUs "
                         f"{sorted(devs)}; move them to one device")
    if not devs or cuda.get_current_device().id in devs:
        return contextlib.nullcontext()
    return cuda.gpus[devs.pop()]


def flat(a):
    """The 1-D view of a C-contiguous array (kernels index the canonical layout by hand)."""
    return a.reshape(a.size)


def stream_of(a):
    """The Numba stream to launch on for input ``a`` (0: the default stream)."""
    cuda = _cuda()
    if simulator_active():
        return 0
    if _is_numba_device_array(a):
        return a.stream
    cai = getattr(a, "__cuda_array_interface__", None)
    ptr = cai.get("stream") if cai else None
    if ptr is None:
        return 0
    if ptr == 1:
        return cuda.legacy_default_stream()
    if ptr == 2:
        return cuda.per_thread_default_stream()
    return cuda.external_stream(ptr)


def empty_like_device(arr, shape, dtype):
    """An uninitialised array of ``shape``/``dtype`` of the same kind as ``arr``: a torch
    tensor on the same device for a torch input, a Numba device array otherwise (a NumPy
    array for a NumPy input under the simulator)."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    if _is_torch(arr):
        import torch

        tdt = {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
               np.dtype(np.float64): torch.float64, np.dtype(np.int64): torch.int64,
               np.dtype(np.int32): torch.int32}[dtype]
        return torch.empty(shape, dtype=tdt, device=arr.device)
    if isinstance(arr, np.ndarray) and simulator_active():
        return np.empty(shape, dtype)
    stream = stream_of(arr)
    return _cuda().device_array(shape, dtype, stream=stream)


def device_scratch(shape, dtype, stream=0):
    """A Numba device array for intermediate results (NumPy under the simulator)."""
    if simulator_active():
        return np.empty(shape, np.dtype(dtype))
    return _cuda().device_array(shape, np.dtype(dtype), stream=stream)


def to_host(a):
    """A NumPy copy of a device array (waits for it)."""
    if isinstance(a, np.ndarray):
        return a
    if _is_torch(a):
        return a.detach().cpu().numpy()
    d = as_device(a)
    return d.copy_to_host() if hasattr(d, "copy_to_host") else np.asarray(d)


def asarray(a):
    """``a`` as a Numba device array: a view of a device array, a copy of a host array."""
    if _is_numba_device_array(a) or hasattr(a, "__cuda_array_interface__"):
        return as_device(a)
    return _cuda().to_device(np.ascontiguousarray(a))


def like(y, like_arr):
    """Give the device array ``y`` back as the kind of ``like_arr`` (zero-copy for torch)."""
    if _is_torch(like_arr) and not _is_torch(y):
        import torch

        return torch.as_tensor(y, device=like_arr.device)
    if isinstance(like_arr, np.ndarray):
        return to_host(y)
    return y


# -- the NumPy-like subset the public functions use as ``xp`` for this kind ---------------
# Allocation and views stay on the device.  The few element-wise helpers that would need a
# kernel of their own (broadcast_to of a non-trivial shape, where, sign, exp, maximum) go
# through the host: they only touch small reduced arrays or rare paths.

def empty(shape, dtype=np.float64):
    return device_scratch(tuple(np.atleast_1d(shape).tolist()) if not isinstance(shape, tuple)
                          else shape, dtype)


def empty_like(a, dtype=None):
    return empty(tuple(a.shape), a.dtype if dtype is None else dtype)


def zeros(shape, dtype=np.float64):
    return asarray(np.zeros(shape, dtype))


def full(shape, fill_value, dtype=None):
    return asarray(np.full(shape, fill_value, dtype))


def _is_c_contiguous(a):
    if isinstance(a, np.ndarray):
        return a.flags.c_contiguous
    f = getattr(a, "is_c_contiguous", None)
    return bool(f()) if callable(f) else bool(a.flags["C_CONTIGUOUS"])


def ascontiguousarray(a):
    d = as_device(a) if not isinstance(a, np.ndarray) else a
    if _is_c_contiguous(d):
        return d
    return asarray(np.ascontiguousarray(to_host(d)))  # a strided view: copy via the host


def transpose(a, axes=None):
    return as_device(a).transpose(axes)


def broadcast_to(a, shape):
    d = as_device(a) if not isinstance(a, np.ndarray) else a
    if tuple(d.shape) == tuple(shape):
        return d
    return asarray(np.ascontiguousarray(np.broadcast_to(to_host(d), shape)))


def _host_op(f):
    def op(*args, **kwargs):
        dev = any(not isinstance(a, (np.ndarray, int, float, np.generic)) for a in args)
        with np.errstate(all="ignore"):
            res = f(*[a if isinstance(a, (int, float, np.generic)) else to_host(a)
                      for a in args], **kwargs)
        return asarray(res) if dev else res
    op.__name__ = f.__name__
    return op


sign = _host_op(np.sign)
exp = _host_op(np.exp)
maximum = _host_op(np.maximum)
where = _host_op(np.where)
