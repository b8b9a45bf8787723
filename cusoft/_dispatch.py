"""The one place that maps an array to a backend.

NumPy -> ``cpu``; CuPy -> ``cupy`` (RawKernels); another ``__cuda_array_interface__`` array
(Numba device array, PyTorch CUDA tensor) -> ``numba``; Dask -> ``dask`` (per chunk + merge).
``backend=`` or ``use_backend(name)`` overrides the choice.  Backends are imported on first
use, so ``import cusoft`` costs nothing on a machine without CUDA.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib

import numpy as np

#: name -> (module, class); the module is imported on first use
_REGISTRY = {
    "cpu": ("cusoft._cpu", "CpuBackend"),
    "cupy": ("cusoft._cupy.backend", "CupyBackend"),
    "numba": ("cusoft._numba.backend", "NumbaBackend"),
    "simt": ("cusoft.simt.backend", "SimtBackend"),
}
BACKENDS = tuple(_REGISTRY) + ("dask",)

#: what each backend computes on: "host" (NumPy), "cupy", or "cuda" (any CAI array)
KIND = {"cpu": "host", "simt": "host", "cupy": "cupy", "numba": "cuda"}

_instances = {}
_override = contextvars.ContextVar("cusoft_backend", default=None)


class BackendError(RuntimeError):
    """A backend was asked for that cannot run here; the message says what is missing."""


def _check_name(name):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


def get_backend(name):
    """The backend object called ``name``, or ``BackendError`` saying why it is unusable."""
    _check_name(name)
    be = _instances.get(name)
    if be is None:
        modname, clsname = _REGISTRY[name]
        try:
            cls = getattr(importlib.import_module(modname), clsname)
        except ImportError as exc:
            raise BackendError(f"backend {name!r} is not usable here: {exc}") from exc
        be = _instances[name] = cls()
    ok, why = be.available()
    if not ok:
        raise BackendError(f"backend {name!r} is not usable here: {why}")
    return be


def probe(name):
    """``(ok, reason)`` for ``name`` without raising."""
    try:
        get_backend(name)
    except BackendError as exc:
        return False, str(exc).split(": ", 1)[-1]
    except Exception as exc:  # a broken install must not break show_config
        return False, f"{type(exc).__name__}: {exc}"
    return True, "usable"


@contextlib.contextmanager
def use_backend(name):
    """Run the enclosed cusoft calls on backend ``name`` (``cpu``, ``cupy``, ``numba``,
    ``simt`` or ``dask``), whatever the array type; ``backend=`` on a call still wins."""
    _check_name(name)
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)


def array_kind(x):
    """"host", "cupy", "cuda" or "dask" for an array; TypeError for anything else."""
    mod = type(x).__module__.split(".", 1)[0]
    if isinstance(x, np.ndarray) or np.isscalar(x) or isinstance(x, (list, tuple)):
        return "host"
    if mod == "cupy":
        return "cupy"
    if mod == "dask":
        return "dask"
    if hasattr(x, "__cuda_array_interface__"):
        return "cuda"
    if hasattr(x, "__array__") or hasattr(x, "__array_interface__"):
        return "host"
    return "host"  # let np.asarray decide (and raise a clear TypeError for objects)


def choose(x, backend=None):
    """The backend name for input ``x``: explicit, then ``use_backend``, then by array type."""
    if backend is None:
        backend = _override.get()
    if backend is not None:
        _check_name(backend)
        return backend
    kind = array_kind(x)
    return {"host": "cpu", "cupy": "cupy", "cuda": "numba", "dask": "dask"}[kind]


def _device_arrays(values, cupy_devs, cai):
    """The devices of the CuPy arrays among ``values`` (into the set ``cupy_devs``) and the
    other ``__cuda_array_interface__`` arrays (into the list ``cai``)."""
    for a in values:
        if type(a).__module__.split(".", 1)[0] == "cupy" and hasattr(a, "device"):
            cupy_devs.add(a.device.id)
        elif isinstance(a, (tuple, list)) and a and hasattr(a[0], "shape"):
            _device_arrays(a, cupy_devs, cai)   # the (m, s) / (out, lse) pairs of the merges
        elif hasattr(a, "__cuda_array_interface__"):
            cai.append(a)


def on_input_device(fn):
    """Run the public function ``fn`` on the GPU its device arrays live on.

    CuPy allocates and launches on the *current* device; an array of another GPU would be
    read across devices (a fault without peer access, a slow path with it).  So the call
    switches to the arrays' device for its duration, as PyTorch does, and arrays on
    different devices raise ``ValueError``, as CuPy's own functions do.  Other
    ``__cuda_array_interface__`` arrays (the Numba backend) get the same rule through
    Numba's context where more than one GPU is visible.  Host-only calls pass through."""

    @functools.wraps(fn)
    def on_device(*args, **kwargs):
        devs, cai = set(), []
        _device_arrays(args, devs, cai)
        _device_arrays(kwargs.values(), devs, cai)
        if not devs:
            if not cai:
                return fn(*args, **kwargs)
            from ._numba import arrays

            with arrays.device_context(cai, fn.__name__):
                return fn(*args, **kwargs)
        if len(devs) > 1:
            raise ValueError(f"cusoft.{fn.__name__}: the CuPy arrays live on different "
                             f"devices {sorted(devs)}; move them to one device")
        (dev,) = devs
        import cupy

        if cupy.cuda.runtime.getDevice() == dev:
            return fn(*args, **kwargs)
        with cupy.cuda.Device(dev):
            return fn(*args, **kwargs)

    return on_device
