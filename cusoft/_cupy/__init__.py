"""CuPy RawKernel backend for the CUDA C kernels of ``kernels_cu/``.

``_module.py`` loads the sources and owns the name-expression list, ``backend.py`` runs the
launch plans of ``cusoft/_launch.py``, ``_inspect.py`` compiles without a GPU (tests, and
``python -m cusoft info --kernels``).

Compile cache
-------------
Kernels compile on first use: one ``cupy.RawModule`` per op file and device, memoised in
this process under (device, file, source hash).  :func:`precompile` does that work up
front and keeps the modules in-process.  On disk, CuPy caches NVRTC output under
``CUPY_CACHE_DIR`` (default ``~/.cupy/kernel_cache``).  CuPy releases before 14 did not
write modules built with ``name_expressions`` to that cache (the mangled names are not in the
cubin), so each new process recompiled; CuPy 14 stores the mangled names with the cubin
and reuses them.  Either way ``precompile()`` once per process removes the first-call stall.
"""

from __future__ import annotations


def precompile():
    """Compile (or load from CuPy's cache) every kernel instantiation of ``kernels_cu`` for
    the current device and keep the modules for this process.  Returns the number of
    kernels made ready."""
    from cusoft._cupy import _module

    count = 0
    for name in _module.SOURCES:
        mod = _module.get_module(name)
        for expr in _module.name_expressions(name):
            mod.get_function(expr)
            count += 1
    return count
