"""Launch configuration of the Numba kernels (to merge with ``cusoft/_launch.py``).

One pure function, :func:`choose_launch`, maps a problem ``(outer, n, inner, dtype)`` and a
kernel family to ``Launch(variant, block, grid, shared, nsplit, chunk)``.  It imports no CUDA
module, so the CuPy backend and the tests can use the same rules.

* ``inner > 1``                      -> ``col``   (one thread per column, coalesced)
* ``n <= WARP_MAX_N``                -> ``warp``  (a row per warp, in registers)
* few rows of a long row             -> ``split`` (softmax_fwd, logsumexp only)
* softmax_fwd row > shared memory    -> ``split``
* otherwise                          -> ``block`` (a row per block)

Tests force a variant and small blocks with :func:`launch_override` (the simulator runs a
Python thread per CUDA thread, so blocks there stay at 64 threads or fewer).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections import namedtuple

import numpy as np

from .kernels import WARP_MAX_N

Launch = namedtuple("Launch", "variant block grid shared nsplit chunk")

#: static shared memory a kernel may use without the opt-in attribute
SHARED_LIMIT = 48 * 1024
#: rows at least this long are split when there are too few rows to fill the device
SPLIT_MIN_N = 16384
#: warps per block of the ``_warp`` kernels
WARPS_PER_BLOCK = 4
#: families and the variants each one has
VARIANTS = {
    "softmax_fwd": ("warp", "block", "split", "col"),
    "logsumexp": ("warp", "block", "split", "col"),
    "softmax_bwd": ("warp", "block", "col"),
    "xent": ("warp", "block", "col"),
}

_override = contextvars.ContextVar("cusoft_numba_launch", default=None)


@contextlib.contextmanager
def launch_override(variant=None, max_block=None, split_chunk=None):
    """Force ``variant`` (where the family has it and the shape allows it), cap the block
    size at ``max_block`` threads and the split part at ``split_chunk`` elements."""
    token = _override.set({"variant": variant, "max_block": max_block,
                           "split_chunk": split_chunk})
    try:
        yield
    finally:
        _override.reset(token)


def _pow2_at_least(v):
    return 1 << max(0, math.ceil(math.log2(max(1, v))))


def choose_launch(outer, n, inner, dtype, family="softmax_fwd", sm_count=108):
    """The kernel variant and its launch geometry for one canonical problem."""
    if family not in VARIANTS:
        raise ValueError(f"unknown kernel family {family!r}; expected one of {list(VARIANTS)}")
    ov = _override.get() or {}
    max_block = min(1024, ov.get("max_block") or 1024)
    max_block = max(32, max_block - max_block % 32)
    acc = 8 if np.dtype(dtype) == np.float64 else 4
    variant = ov.get("variant")
    if variant is not None and variant not in VARIANTS[family]:
        variant = None
    if inner > 1:
        variant = "col"
    elif variant == "col" or (variant == "warp" and n > WARP_MAX_N):
        variant = None
    if variant is None:
        if n <= WARP_MAX_N:
            variant = "warp"
        elif "split" in VARIANTS[family] and (
                (outer < sm_count and n >= SPLIT_MIN_N)
                or (family == "softmax_fwd" and n * acc > SHARED_LIMIT)):
            variant = "split"
        else:
            variant = "block"

    if variant == "col":
        block = min(256, max_block)
        total = outer * inner
        grid = max(1, min(math.ceil(total / block), sm_count * 32))
        return Launch("col", block, grid, 0, 1, n)
    if variant == "warp":
        wpb = max(1, min(WARPS_PER_BLOCK, max_block // 32))
        return Launch("warp", 32 * wpb, math.ceil(outer / wpb), 0, 1, n)
    if variant == "block":
        block = min(max_block, max(64, _pow2_at_least(math.ceil(n / 8))))
        shared = n * acc if family == "softmax_fwd" else 0
        if shared > SHARED_LIMIT:
            raise ValueError(f"softmax_fwd_block: a row of {n} elements does not fit in "
                             f"{SHARED_LIMIT} bytes of shared memory; use the split variant")
        return Launch("block", block, outer, shared, 1, n)
    # split: enough parts to give the device ~2 blocks per SM, each part >= 8 elements/thread
    block = min(256, max_block)
    chunk = ov.get("split_chunk")
    if not chunk:
        parts = max(1, min(math.ceil(2 * sm_count / max(1, outer)),
                           math.ceil(n / (block * 8))))
        chunk = math.ceil(n / parts)
    chunk = max(chunk, math.ceil(n / 65535))  # gridDim.y limit
    nsplit = math.ceil(n / chunk)
    return Launch("split", block, (outer, nsplit), 0, nsplit, chunk)
