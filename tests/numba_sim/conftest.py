"""The Numba-CUDA backend on numba-cuda's simulator, in a process of its own.

NUMBA_ENABLE_CUDASIM must be set before numba is imported, so these tests only run in a
process started with it (``tests/test_numba_sim.py`` does that); anywhere else nothing here
is collected.  The warp shim (``cusoft._numba._simshim``) is installed once, here.
"""

from __future__ import annotations

import os

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

if not SIMULATOR:
    collect_ignore_glob = ["test_*.py"]
else:
    from cusoft._numba import _simshim

    _simshim.install()
