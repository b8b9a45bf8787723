"""What is installed, which GPUs are visible and which backends can run here (and why not)."""

from __future__ import annotations

import importlib
import platform
import sys

from . import _dispatch

_PACKAGES = ("numpy", "scipy", "numba", "numba_cuda", "cupy", "cuda.bindings", "dask",
             "distributed")


def _version(mod):
    try:
        m = importlib.import_module(mod)
    except Exception as exc:  # an optional dependency may be absent or broken
        return f"not importable ({type(exc).__name__})"
    return getattr(m, "__version__", "installed")


def _gpus():
    try:
        import cupy

        n = cupy.cuda.runtime.getDeviceCount()
        out = []
        for i in range(n):
            p = cupy.cuda.runtime.getDeviceProperties(i)
            out.append(f"{i}: {p['name'].decode()} (sm_{p['major']}{p['minor']}, "
                       f"{p['totalGlobalMem'] / 2**30:.0f} GiB)")
        return out or ["none"]
    except Exception as exc:
        return [f"none ({type(exc).__name__}: {str(exc).splitlines()[0][:80]})"]


def config():
    """The facts ``show_config`` prints, as a dict."""
    from . import __version__

    return {
        "cusoft": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in _PACKAGES},
        "gpus": _gpus(),
        "backends": {name: _dispatch.probe(name) for name in _dispatch._REGISTRY},
    }


def show_config(file=None):
    """Print versions, visible GPUs, and which backends are usable here and why not."""
    c = config()
    p = lambda *a: print(*a, file=file)  # noqa: E731
    p(f"cusoft {c['cusoft']}  (Python {c['python']}, {c['platform']})")
    p("packages:")
    for k, ver in c["packages"].items():
        p(f"  {k:14s} {ver}")
    p("GPUs:")
    for g in c["gpus"]:
        p(f"  {g}")
    p("backends:")
    for name, (ok, why) in c["backends"].items():
        p(f"  {name:6s} {'yes' if ok else 'no '}  {why}")
    dask_ok = not c["packages"]["dask"].startswith("not importable")
    p(f"  dask   {'yes' if dask_ok else 'no '}  "
      + ("per-chunk kernels + exact merge of partial states" if dask_ok
         else "dask is not installed (pip install 'cusoft[dask]')"))


def precompile():
    """Compile every RawKernel instantiation for the current device now, not on first use.

    CuPy writes the compiled modules (with their name expressions) to its disk cache,
    ``CUPY_CACHE_DIR`` (default ``~/.cupy/kernel_cache``), so later processes load them
    instead of compiling; each process still loads them once per device."""
    ok, why = _dispatch.probe("cupy")
    if not ok:
        raise _dispatch.BackendError(f"backend 'cupy' is not usable here: {why}")
    from ._cupy import precompile as _pre

    return _pre()
