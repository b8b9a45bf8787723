"""``simt`` backend: the ``kernels_cu`` kernels, launched exactly as on a GPU, on the CPU.

Same launcher as the CuPy backend (``cusoft._cupy.backend.KernelBackend``) with
:class:`cusoft.simt.SimtModule` in place of ``cupy.RawModule``: same source text, options and
name expressions (``cusoft/_cupy/_module.py``), same grids, blocks and shared-memory sizes
(``cusoft/_launch.py``).  Arrays are NumPy arrays; kernels run under AddressSanitizer.
Slow: meant for tests at small shapes.
"""

from __future__ import annotations

import threading

import numpy

from cusoft._cupy import _module
from cusoft._cupy.backend import KernelBackend

_lock = threading.Lock()
_modules = {}


def get_module(name="softmax.cu"):
    """The emulator build of one op file (built once per process; cached on disk by simt)."""
    from cusoft.simt import SimtModule

    key = (name, _module.source_hash(name))
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            mod = _modules[key] = SimtModule(code=_module.source(name), options=_module.OPTIONS,
                                             name_expressions=list(_module.name_expressions(name)))
    return mod


class SimtBackend(KernelBackend):
    """The CUDA kernels on NumPy arrays through the SIMT emulator (see ``cusoft.simt``)."""

    name = "simt"

    def available(self):
        try:
            from cusoft.simt import available
        except ImportError as exc:
            return False, f"the simt harness cannot be imported: {exc}"
        return available()

    def _function(self, name_expression):
        return get_module().get_function(name_expression)

    def _function_in(self, file, name_expression):
        return get_module(file).get_function(name_expression)

    def _empty(self, like, count, dtype):
        return numpy.empty(count, dtype=dtype)
