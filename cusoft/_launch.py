"""Launch configuration for the kernels of ``kernels_cu/softmax.cu``, ``backward.cu`` and
``xent.cu``: the one place that picks a variant, block shape, grid and dynamic shared memory.

Each kernel family has one function (:func:`launch_softmax`, :func:`launch_logsumexp`,
:func:`launch_partial`, :func:`launch_backward`, :func:`launch_xent`) returning a
:class:`Plan`: the workspaces to allocate and the kernel launches, with arguments named symbolically ("x", "y", "ws", ...) and integer
scalars as NumPy scalars of the exact C type.  The CuPy backend and the CPU emulator run the
same plan (``cusoft/_cupy/backend.py: KernelBackend``), so the emulated launch *is* the real
launch.  Pure Python: no CuPy import.

Rules (row layout = ``inner == 1``; rows = outer):

======================  =====================================================================
softmax, variant        when
======================  =====================================================================
``col``                 inner > 1 (threads walk inner; block (bx, by), bx = min(32, inner))
``warp``                n <= 1024: warp per row, row in registers, 4 rows per 128-thread block
``split``               n >= 16384 and rows < 2 * SMs: chunks of >= 2048 elements per block
``block``               the row fits in shared memory (n * itemsize + 1 KiB + 16 <= 48 KiB)
``online``              otherwise: block per row, two reads
``3pass``               only when asked (``variant="3pass"``): the unfused baseline
======================  =====================================================================

logsumexp / partial: ``col`` for inner > 1, ``warp`` for n <= 2048, ``split`` as above,
otherwise ``block``.

softmax_backward (``kernels_cu/backward.cu``): ``col`` for inner > 1, ``warp`` for n <= 1024
(y and dy in registers), ``split`` as above, otherwise ``block`` (two streaming reads).
cross_entropy (``kernels_cu/xent.cu``): ``col`` for inner > 1, ``warp`` for n <= 512,
``split`` as above (stats + apply, 5 partial values per chunk), otherwise ``block``.  ``variant=`` forces a variant (tests use it at small sizes); ``threads``
and ``chunk_len`` override the block size and the split chunk length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy

from cusoft._cupy._module import BWD_WARP_K, WARP_K, XENT_WARP_K, kname

#: Bytes at the start of dynamic shared memory used by block reductions (kScratchBytes).
SCRATCH_BYTES = 1024
#: Row length limits of the variants.
WARP_MAX_N = 32 * max(WARP_K)
REDUCE_WARP_MAX_N = 2048
SPLIT_MIN_N = 16384
SPLIT_MIN_CHUNK = 2048
#: Block-size limit of every kernel (CUSOFT_BOUNDS(512) / (256) in softmax.cu).
MAX_BLOCK = 512
WARP_BLOCK = 128

BWD_WARP_MAX_N = 32 * max(BWD_WARP_K)
XENT_WARP_MAX_N = 32 * max(XENT_WARP_K)

SOFTMAX_VARIANTS = ("3pass", "warp", "block", "online", "split", "col")
REDUCE_VARIANTS = ("warp", "block", "split", "col")
BACKWARD_VARIANTS = ("warp", "block", "split", "col")
XENT_VARIANTS = ("warp", "block", "split", "col")


@dataclass(frozen=True)
class DeviceLimits:
    """What the launcher needs to know about a device.  The defaults (an H100's SM count,
    the 48 KiB default dynamic shared memory limit) serve the CPU emulator."""

    sm_count: int = 132
    smem_per_block: int = 48 * 1024
    max_threads: int = 1024

    @classmethod
    def from_cupy(cls, device=None):
        import cupy

        dev = cupy.cuda.Device(device)
        a = dev.attributes
        return cls(sm_count=int(a["MultiProcessorCount"]),
                   smem_per_block=int(a["MaxSharedMemoryPerBlock"]),
                   max_threads=int(a["MaxThreadsPerBlock"]))


@dataclass(frozen=True)
class Launch:
    kernel: str   # name expression, as in _module.name_expressions()
    grid: tuple
    block: tuple
    shared: int   # dynamic shared memory bytes
    args: tuple   # str: an array by name; else a NumPy scalar passed as is


@dataclass(frozen=True)
class Plan:
    variant: str
    launches: tuple
    #: name -> (number of elements, numpy dtype) of a temporary device array
    workspace: dict = field(default_factory=dict)


def _i64(v):
    return numpy.int64(v)


def _i32(v):
    return numpy.int32(v)


def _cdiv(a, b):
    return -(-a // b)


def _pow2ceil(v):
    p = 1
    while p < v:
        p <<= 1
    return p


def acc_dtype(dtype):
    """Accumulation (and partial-state) dtype: float32 for float16/float32, else float64."""
    return numpy.dtype(numpy.float64 if numpy.dtype(dtype) == numpy.float64 else numpy.float32)


def _grid_cap(limits):
    # Kernels loop (grid-stride) over rows and tiles; more blocks than this gains nothing.
    return max(1, limits.sm_count * 32)


def _check_variant(variant, allowed):
    if variant is not None and variant not in allowed:
        raise ValueError(f"variant {variant!r} is not one of {allowed}")


def _check_threads(threads, bound, variant):
    if threads is not None and not (32 <= threads <= bound and threads % 32 == 0):
        raise ValueError(f"threads={threads} for variant {variant!r}: use a multiple of 32 "
                         f"between 32 and {bound} (the kernel's launch bound)")


def _split_shape(rows, n, limits, chunk_len):
    """(chunks per row, chunk length) for the split variants; chunk starts stay 16-byte
    aligned relative to the row start (chunk_len is a multiple of 16 elements)."""
    if chunk_len is None:
        chunks = max(1, min(_cdiv(4 * limits.sm_count, max(rows, 1)), n // SPLIT_MIN_CHUNK))
        chunk_len = _cdiv(_cdiv(n, chunks), 16) * 16
    chunk_len = max(1, int(chunk_len))
    return _cdiv(n, chunk_len), chunk_len


def _col_shape(n, inner, state_bytes, threads):
    bx = min(32, _pow2ceil(inner))
    by = max(1, min((threads or 256) // bx, _pow2ceil(n)))
    return bx, by, bx * by * state_bytes + 16


def _row_variant(inner, n, rows, limits, variant, allowed, warp_max, fallback="block",
                 warp_caches_row=True):
    """The one variant rule of every row op: an explicit ``variant`` is checked against
    ``allowed``; otherwise the column layout when inner > 1, warp-per-row up to ``warp_max``,
    split for long rows that would leave SMs idle, else ``fallback``.  Row variants need
    inner == 1 (3pass takes any layout); warp kernels that keep the row in registers
    (``warp_caches_row``) take n <= warp_max only."""
    _check_variant(variant, allowed)
    if variant is None:
        if inner > 1:
            variant = "col"
        elif n <= warp_max:
            variant = "warp"
        elif n >= SPLIT_MIN_N and rows < 2 * limits.sm_count:
            variant = "split"
        else:
            variant = fallback
    if inner > 1 and variant not in ("col", "3pass"):
        raise ValueError(f"variant {variant!r} needs the row layout (inner == 1), got inner={inner}")
    if warp_caches_row and variant == "warp" and n > warp_max:
        raise ValueError(f"variant 'warp' handles n <= {warp_max}, got n={n}")
    return variant


def launch_softmax(outer, n, inner, dtype, log, limits=DeviceLimits(), variant=None,
                   threads=None, chunk_len=None):
    """Plan for softmax (log=False) or log_softmax (log=True) of x (outer, n, inner) -> y."""
    _check_variant(variant, SOFTMAX_VARIANTS)
    dtype = numpy.dtype(dtype)
    acc = acc_dtype(dtype)
    log = bool(log)
    rows = outer * inner
    if rows == 0 or n == 0:
        return Plan("empty", ())
    cap = _grid_cap(limits)
    row_bytes = n * dtype.itemsize + SCRATCH_BYTES + 16  # + the cache's 16-byte phase shift
    variant = _row_variant(inner, n, rows, limits, variant, SOFTMAX_VARIANTS, WARP_MAX_N,
                           fallback="block" if row_bytes <= limits.smem_per_block else "online")
    if variant != "col":
        _check_threads(threads, 256 if variant in ("warp", "3pass") else MAX_BLOCK, variant)

    if variant == "3pass":
        t = threads or 256
        wpb = t // 32
        grid_r = (min(_cdiv(rows, wpb), cap), 1, 1)
        total = rows * n
        grid_e = (min(_cdiv(total, t), cap), 1, 1)
        return Plan(variant, (
            Launch(kname("softmax_rowmax", dtype), grid_r, (t, 1, 1), 0,
                   ("x", "mws", _i64(rows), _i64(n), _i64(inner))),
            Launch(kname("softmax_expsum", dtype), grid_r, (t, 1, 1), 0,
                   ("x", "mws", "sws", _i64(rows), _i64(n), _i64(inner))),
            Launch(kname("softmax_divide", dtype, log), grid_e, (t, 1, 1), 0,
                   ("x", "mws", "sws", "y", _i64(total), _i64(n), _i64(inner))),
        ), {"mws": (rows, acc), "sws": (rows, acc)})

    if variant == "col":
        bx, by, shared = _col_shape(n, inner, 2 * acc.itemsize, threads)
        tiles = outer * _cdiv(inner, bx)
        return Plan(variant, (Launch(kname("softmax_fwd_col", dtype, log), (min(tiles, cap), 1, 1),
                                     (bx, by, 1), shared,
                                     ("x", "y", _i64(outer), _i64(n), _i64(inner))),))

    if variant == "warp":
        k = next(k for k in WARP_K if 32 * k >= n)
        t = threads or WARP_BLOCK
        return Plan(variant, (Launch(kname("softmax_fwd_warp", dtype, log, k),
                                     (min(_cdiv(rows, t // 32), cap), 1, 1), (t, 1, 1), 0,
                                     ("x", "y", _i64(rows), _i64(n))),))

    if variant == "block":
        if row_bytes > limits.smem_per_block:
            raise ValueError(f"variant 'block' needs {row_bytes} bytes of shared memory, the "
                             f"device allows {limits.smem_per_block}")
        t = threads or min(MAX_BLOCK, max(128, _pow2ceil(_cdiv(n, 16))))
        return Plan(variant, (Launch(kname("softmax_fwd_block", dtype, log), (min(rows, cap), 1, 1),
                                     (t, 1, 1), row_bytes, ("x", "y", _i64(rows), _i64(n))),))

    if variant == "online":
        t = threads or MAX_BLOCK
        return Plan(variant, (Launch(kname("softmax_fwd_online", dtype, log), (min(rows, cap), 1, 1),
                                     (t, 1, 1), SCRATCH_BYTES, ("x", "y", _i64(rows), _i64(n))),))

    # split
    t = threads or MAX_BLOCK
    chunks, clen = _split_shape(rows, n, limits, chunk_len)
    grid = (min(rows * chunks, cap), 1, 1)
    return Plan(variant, (
        Launch(kname("softmax_fwd_split_stats", dtype), grid, (t, 1, 1), SCRATCH_BYTES,
               ("x", "ws", _i64(rows), _i64(n), _i64(chunks), _i64(clen))),
        Launch(kname("softmax_fwd_split_apply", dtype, log), grid, (t, 1, 1), SCRATCH_BYTES,
               ("x", "ws", "y", _i64(rows), _i64(n), _i64(chunks), _i64(clen))),
    ), {"ws": (2 * rows * chunks, acc)})


def _reduce_plan(op, outer, n, inner, dtype, limits, variant, threads, chunk_len, out_args):
    dtype = numpy.dtype(dtype)
    acc = acc_dtype(dtype)
    rows = outer * inner
    if rows == 0:
        return Plan("empty", ())
    if n == 0:
        return Plan("empty-rows", ())   # the backend fills the SciPy values for n == 0
    # the reduce warp kernels stride over any row length: REDUCE_WARP_MAX_N is only the choice
    variant = _row_variant(inner, n, rows, limits, variant, REDUCE_VARIANTS, REDUCE_WARP_MAX_N,
                           warp_caches_row=False)
    if variant != "col":
        _check_threads(threads, 256 if variant == "warp" else MAX_BLOCK, variant)
    cap = _grid_cap(limits)
    xb = ("x", "b", "has_b")
    if variant == "col":
        bx, by, shared = _col_shape(n, inner, 3 * acc.itemsize, threads)
        tiles = outer * _cdiv(inner, bx)
        return Plan(variant, (Launch(kname(f"{op}_col", dtype), (min(tiles, cap), 1, 1), (bx, by, 1),
                                     shared, xb + out_args + (_i64(outer), _i64(n), _i64(inner))),))
    if variant == "warp":
        t = threads or WARP_BLOCK
        return Plan(variant, (Launch(kname(f"{op}_warp", dtype), (min(_cdiv(rows, t // 32), cap), 1, 1),
                                     (t, 1, 1), 0, xb + out_args + (_i64(rows), _i64(n))),))
    if variant == "block":
        t = threads or (256 if n < SPLIT_MIN_N else MAX_BLOCK)
        return Plan(variant, (Launch(kname(f"{op}_block", dtype), (min(rows, cap), 1, 1), (t, 1, 1),
                                     SCRATCH_BYTES, xb + out_args + (_i64(rows), _i64(n))),))
    # split: one stats kernel shared by both ops, then the op's finish (block per row)
    t = threads or MAX_BLOCK
    chunks, clen = _split_shape(rows, n, limits, chunk_len)
    stats = Launch(kname("logsumexp_split_stats", dtype), (min(rows * chunks, cap), 1, 1), (t, 1, 1),
                   SCRATCH_BYTES, xb + ("ws", _i64(rows), _i64(n), _i64(chunks), _i64(clen)))
    if op == "logsumexp":
        fin_args = xb + ("ws",) + out_args + (_i64(rows), _i64(n), _i64(chunks))
    else:
        fin_args = ("ws",) + out_args + (_i64(rows), _i64(chunks))
    fin = Launch(kname(f"{op}_split_finish", dtype), (min(rows, cap), 1, 1), (t, 1, 1),
                 SCRATCH_BYTES, fin_args)
    return Plan(variant, (stats, fin), {"ws": (3 * rows * chunks, acc)})


def launch_logsumexp(outer, n, inner, dtype, limits=DeviceLimits(), variant=None, threads=None,
                     chunk_len=None):
    """Plan for logsumexp over axis 1 into out (outer, inner) [and sign].  Arrays: x, b
    (x itself when there are no weights), out, sign (out itself without return_sign);
    scalars has_b and has_sign are the named int flags "has_b", "has_sign"."""
    return _reduce_plan("logsumexp", outer, n, inner, dtype, limits, variant, threads, chunk_len,
                        ("out", "sign", "has_sign"))


def launch_partial(outer, n, inner, dtype, limits=DeviceLimits(), variant=None, threads=None,
                   chunk_len=None):
    """Plan for the partial state (m, c, r), each (outer, inner) of the accumulation dtype."""
    return _reduce_plan("partial", outer, n, inner, dtype, limits, variant, threads, chunk_len,
                        ("m", "c", "r"))


def launch_backward(outer, n, inner, dtype, log, limits=DeviceLimits(), variant=None,
                    threads=None, chunk_len=None):
    """Plan for the softmax (log=False) or log_softmax (log=True) gradient.  Arrays: y, dy,
    out (out may be y or dy); workspace ws (split only)."""
    dtype = numpy.dtype(dtype)
    acc = acc_dtype(dtype)
    log = bool(log)
    rows = outer * inner
    if rows == 0 or n == 0:
        return Plan("empty", ())
    variant = _row_variant(inner, n, rows, limits, variant, BACKWARD_VARIANTS, BWD_WARP_MAX_N)
    if variant != "col":
        _check_threads(threads, 256 if variant == "warp" else MAX_BLOCK, variant)
    cap = _grid_cap(limits)
    if variant == "col":
        bx, by, shared = _col_shape(n, inner, acc.itemsize, threads)
        tiles = outer * _cdiv(inner, bx)
        return Plan(variant, (Launch(kname("softmax_bwd_col", dtype, log), (min(tiles, cap), 1, 1),
                                     (bx, by, 1), shared,
                                     ("y", "dy", "out", _i64(outer), _i64(n), _i64(inner))),))
    if variant == "warp":
        k = next(k for k in BWD_WARP_K if 32 * k >= n)
        t = threads or WARP_BLOCK
        return Plan(variant, (Launch(kname("softmax_bwd_warp", dtype, log, k),
                                     (min(_cdiv(rows, t // 32), cap), 1, 1), (t, 1, 1), 0,
                                     ("y", "dy", "out", _i64(rows), _i64(n))),))
    if variant == "block":
        t = threads or (256 if n < SPLIT_MIN_N else MAX_BLOCK)
        return Plan(variant, (Launch(kname("softmax_bwd_block", dtype, log), (min(rows, cap), 1, 1),
                                     (t, 1, 1), SCRATCH_BYTES,
                                     ("y", "dy", "out", _i64(rows), _i64(n))),))
    t = threads or MAX_BLOCK
    chunks, clen = _split_shape(rows, n, limits, chunk_len)
    grid = (min(rows * chunks, cap), 1, 1)
    return Plan(variant, (
        Launch(kname("softmax_bwd_split_stats", dtype, log), grid, (t, 1, 1), SCRATCH_BYTES,
               ("y", "dy", "ws", _i64(rows), _i64(n), _i64(chunks), _i64(clen))),
        Launch(kname("softmax_bwd_split_apply", dtype, log), grid, (t, 1, 1), SCRATCH_BYTES,
               ("y", "dy", "ws", "out", _i64(rows), _i64(n), _i64(chunks), _i64(clen))),
    ), {"ws": (rows * chunks, acc)})


#: Argument names of every xent kernel before its shape arguments (see kernels_cu/xent.cu).
#: Flags and scalars are named too: the backend binds has_probs, has_weight, has_grad (int32),
#: ignore_index and scale_step (int64), smoothing (the accumulation dtype) and grad_scale
#: (an array of the accumulation dtype: one value, scale_step 0, or one per row, step 1).
XENT_ARGS = ("x", "labels", "probs", "has_probs", "weight", "has_weight", "ignore_index",
             "smoothing", "loss", "grad", "has_grad", "grad_scale", "scale_step")


def launch_xent(outer, n, inner, dtype, limits=DeviceLimits(), variant=None, threads=None,
                chunk_len=None):
    """Plan for the fused cross-entropy of logits x (outer, n, inner): loss (outer, inner)
    and, when asked, grad like x; workspace ws (split only)."""
    dtype = numpy.dtype(dtype)
    acc = acc_dtype(dtype)
    rows = outer * inner
    if rows == 0:
        return Plan("empty", ())
    if n == 0:
        return Plan("empty-rows", ())   # the backend writes loss 0
    variant = _row_variant(inner, n, rows, limits, variant, XENT_VARIANTS, XENT_WARP_MAX_N)
    if variant != "col":
        _check_threads(threads, 256 if variant == "warp" else MAX_BLOCK, variant)
    cap = _grid_cap(limits)
    if variant == "col":
        # XentState: (m, s, W, x[label]) per thread
        bx, by, shared = _col_shape(n, inner, 4 * acc.itemsize, threads)
        tiles = outer * _cdiv(inner, bx)
        return Plan(variant, (Launch(kname("xent_col", dtype), (min(tiles, cap), 1, 1), (bx, by, 1),
                                     shared, XENT_ARGS + (_i64(outer), _i64(n), _i64(inner))),))
    if variant == "warp":
        k = next(k for k in XENT_WARP_K if 32 * k >= n)
        t = threads or WARP_BLOCK
        return Plan(variant, (Launch(kname("xent_warp", dtype, k),
                                     (min(_cdiv(rows, t // 32), cap), 1, 1), (t, 1, 1), 0,
                                     XENT_ARGS + (_i64(rows), _i64(n))),))
    if variant == "block":
        t = threads or (256 if n < SPLIT_MIN_N else MAX_BLOCK)
        return Plan(variant, (Launch(kname("xent_block", dtype), (min(rows, cap), 1, 1), (t, 1, 1),
                                     SCRATCH_BYTES, XENT_ARGS + (_i64(rows), _i64(n))),))
    # split: (m, s, W, D, K) per (row, chunk); see kernels_cu/xent.cu
    t = threads or MAX_BLOCK
    chunks, clen = _split_shape(rows, n, limits, chunk_len)
    grid = (min(rows * chunks, cap), 1, 1)
    shape = (_i64(rows), _i64(n), _i64(chunks), _i64(clen))
    return Plan(variant, (
        Launch(kname("xent_split_stats", dtype), grid, (t, 1, 1), SCRATCH_BYTES,
               XENT_ARGS + ("ws",) + shape),
        Launch(kname("xent_split_apply", dtype), grid, (t, 1, 1), SCRATCH_BYTES,
               XENT_ARGS + ("ws",) + shape),
    ), {"ws": (5 * rows * chunks, acc)})


def all_kernel_names(file="softmax.cu"):
    """Every name expression some plan can launch from one op file (for the consistency
    test: each must be instantiated by ``_module.name_expressions(file)``)."""
    names = set()
    dts = ("float16", "float32", "float64")
    if file == "backward.cu":
        for dt in dts:
            for log in (False, True):
                for v in BACKWARD_VARIANTS:
                    inner = 3 if v == "col" else 1
                    for n in ((1, 33, 100, 200, 300, 1000) if v == "warp" else (5000,)):
                        p = launch_backward(2, n, inner, dt, log, variant=v, chunk_len=1024)
                        names.update(la.kernel for la in p.launches)
        return names
    if file == "xent.cu":
        for dt in dts:
            for v in XENT_VARIANTS:
                inner = 3 if v == "col" else 1
                for n in ((1, 33, 100, 200, 500) if v == "warp" else (5000,)):
                    p = launch_xent(2, n, inner, dt, variant=v, chunk_len=1024)
                    names.update(la.kernel for la in p.launches)
        return names
    if file != "softmax.cu":
        raise KeyError(file)
    for dt in dts:
        for log in (False, True):
            for v in SOFTMAX_VARIANTS:
                inner = 3 if v == "col" else 1
                for n in ((1, 33, 100, 300, 700, 1000) if v == "warp" else (5000,)):
                    p = launch_softmax(2, n, inner, dt, log, variant=v, chunk_len=1024)
                    names.update(la.kernel for la in p.launches)
        for v in REDUCE_VARIANTS:
            inner = 3 if v == "col" else 1
            for fn in (launch_logsumexp, launch_partial):
                p = fn(2, 5000, inner, dt, variant=v, chunk_len=1024)
                names.update(la.kernel for la in p.launches)
    return names
