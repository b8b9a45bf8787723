"""Launch of ``kernels_cu/attention.cu``: the one launch-configuration table, the module
loaders (CuPy RawModule per device, simt module per process) and the argument marshalling.

``launch_config`` is the single source of truth for the kernel variant (flavour, head-dim
bucket and tile shape per dtype), the grid, the block and the dynamic shared bytes; the
kernels derive their shared layouts from the same template arguments: CUDA cores Q [BM][DB],
K [BN][DB+VE], V [BN][DB+VE], P [BM][BN+VE], alpha [BM] in the accumulation type (VE = 16 bytes of it);
tensor cores Q [BM], K [BN], V [BN] rows of DB + PAD_MMA in the storage type.
"""

from __future__ import annotations

import collections
import functools
import math
import os
import threading

import numpy as np

#: threads per block; kernels_cu/attention.cu has the same constant (attn::kThreads)
THREADS = 128
#: head-dim buckets: a runtime D, Dv <= bucket runs on that instantiation
BUCKETS = (32, 64, 128, 256)
#: (accumulation itemsize, bucket) -> (BM query rows, BN keys) per block.  Sized so the
#: per-thread accumulator (BM*DB/128 values) and logit tile (BM*BN/128) stay in registers
#: without spills and shared memory (Q, K and V buffers apart for the cp.async pipeline, P)
#: stays under sm_80's 163 KB per block: float64 at D = 256 takes BN = 16 for that.
TILES = {
    (4, 32): (64, 64), (4, 64): (64, 64), (4, 128): (64, 32), (4, 256): (32, 32),
    (8, 32): (64, 32), (8, 64): (32, 32), (8, 128): (32, 32), (8, 256): (16, 16),
}
_CTYPE = {np.dtype(np.float16): "__half", np.dtype(np.float32): "float",
          np.dtype(np.float64): "double"}
MAX_HEAD_DIM = BUCKETS[-1]
#: CUDA's grid.y limit
_MAX_GRID_Y = 65535

#: tensor cores: (storage itemsize, bucket) -> (BM query rows, BN keys).  BM is 64 per m16
#: tile per warp (4 warps); float16 (``attn::HalfOps``) takes two m16 tiles per warp where
#: the accumulator is small (DB <= 64: 64 + 64 floats per lane); BN = 32 where the DB-wide
#: accumulator is large.  float32 (``attn::Tf32x3Ops``) keeps one m16 tile per warp (its
#: operands are split in registers) and BN = 32 from DB = 128 on, which keeps its float tiles
#: Q [BM], K [BN], V [BN] of DB + 4 under 136 KB.  float16 rows are DB + 8 halves.  float64
#: (``attn::DmmaOps``, DMMA m8n8k4) holds a double accumulator (2 registers per value),
#: so BN = 32 from DB = 64 on and no DB = 256 variant (its 256 accumulator registers would
#: not fit): float64 at D > 128 runs on CUDA cores.
TILES_MMA = {
    (2, 32): (128, 64), (2, 64): (128, 64), (2, 128): (64, 64), (2, 256): (64, 32),
    (4, 32): (64, 64), (4, 64): (64, 64), (4, 128): (64, 32), (4, 256): (64, 32),
    (8, 32): (64, 64), (8, 64): (64, 32), (8, 128): (64, 32),
}
#: shared row padding of the tensor-core kernels, in elements
PAD_MMA = {2: 8, 4: 4, 8: 2}
#: the operand ops of ``attention_fwd_tc<Ops, DB, BM, BN>`` per storage itemsize
MMA_OPS = {2: "attn::HalfOps", 4: "attn::Tf32x3Ops", 8: "attn::DmmaOps"}
#: the kernel flavours of ``method=``: "fma" (CUDA cores, every dtype) and "mma" (tensor
#: cores: float16; float32 as 3xTF32; float64 as DMMA up to D = 128); None picks "mma" for
#: float16 and for float64 up to D = 128
FLAVOURS = ("fma", "mma")

Config = collections.namedtuple("Config", "name grid block shared_mem bm bn bucket")

#: a broadcast operand: ``array`` the compact (never expanded) data, ``strides`` the four
#: element strides (batch, head, row, key) that map (b, h, i, j) into it (0 on broadcast axes)
Operand = collections.namedtuple("Operand", "array strides")


def has_mma(dtype, bucket):
    """Whether a tensor-core kernel exists for ``dtype`` at head-dim ``bucket``."""
    return (np.dtype(dtype).itemsize, bucket) in TILES_MMA


def flavour(dtype, method=None, bucket=None):
    """The kernel flavour ("fma" or "mma") for ``dtype``, the public ``method`` and (when
    known) the head-dim ``bucket``."""
    dtype = np.dtype(dtype)
    if method == "mma":
        if bucket is not None and not has_mma(dtype, bucket):
            raise ValueError(f"method='mma': no tensor-core {dtype} kernel for head dims "
                             f"above 128 (D = {bucket} bucket); use method='fma'")
        return "mma"
    if method == "fma":
        return "fma"
    # float32 stays on CUDA cores unless asked: 3xTF32 keeps ~22 of float32's 24 bits per
    # operand, which measured 2-4x the error of float32 FMA on the logits (D >= 128), beyond
    # the float32 accuracy contract of ``python -m cusoft check``.  DMMA is IEEE float64
    # fused multiply-add: the same accuracy as the CUDA-core kernel.
    if dtype == np.float16:
        return "mma"
    if dtype == np.float64 and (bucket is None or has_mma(dtype, bucket)):
        return "mma"
    return "fma"


def tiles(dtype, bucket, flav="fma"):
    """(BM, BN) of the instantiation for ``dtype``, head-dim ``bucket`` and flavour."""
    if flav == "mma":
        return TILES_MMA[(np.dtype(dtype).itemsize, bucket)]
    acc = 8 if np.dtype(dtype) == np.float64 else 4
    return TILES[(acc, bucket)]


def kernel_name(dtype, bucket, flav="fma", tile=None):
    """The name expression of one instantiation; ``tile`` (BM, BN) overrides the table
    (tile sweeps in bench/bench_attention.py; such names are not in the runtime module)."""
    bm, bn = tile if tile is not None else tiles(dtype, bucket, flav)
    if flav == "mma":
        return f"attention_fwd_tc<{MMA_OPS[np.dtype(dtype).itemsize]}, {bucket}, {bm}, {bn}>"
    return f"attention_fwd<{_CTYPE[np.dtype(dtype)]}, {bucket}, {bm}, {bn}>"


def all_kernel_names():
    """Every instantiation the launcher can ask for (compile tests, precompile)."""
    return ([kernel_name(dt, b) for dt in _CTYPE for b in BUCKETS]
            + [kernel_name(dt, b, "mma") for dt in _CTYPE for b in BUCKETS if has_mma(dt, b)])


def bucket_of(need):
    """The head-dim bucket of the instantiation that serves head dims up to ``need``."""
    bucket = next((b for b in BUCKETS if need <= b), None)
    if bucket is None:
        raise ValueError(f"head dimension {need} is larger than the kernels' maximum "
                         f"{MAX_HEAD_DIM}; use the NumPy path")
    return bucket


def launch_config(dtype, B, Hq, Lq, D, Dv, method=None, tile=None):
    """Kernel name, grid, block and dynamic shared bytes for one attention call; ``tile``
    (BM, BN) replaces the table's tile shape (see ``kernel_name``)."""
    dtype = np.dtype(dtype)
    bucket = bucket_of(max(D, Dv))
    flav = flavour(dtype, method, bucket)
    bm, bn = tile if tile is not None else tiles(dtype, bucket, flav)
    if tile is not None and flav == "mma" and (bm % 64 or bn % 16 or bm <= 0 or bn <= 0):
        raise ValueError(f"tensor-core tiles need BM a multiple of 64 and BN of 16, not {tile}")
    if flav == "mma":
        item = dtype.itemsize
        shared = item * (bm + 2 * bn) * (bucket + PAD_MMA[item])
    else:
        acc = 8 if dtype == np.float64 else 4
        ve = 16 // acc  # the kernel's 16-byte row padding, in elements
        shared = acc * (bm * bucket + 2 * bn * (bucket + ve) + bm * (bn + ve) + bm)
    grid = (B * Hq, math.ceil(Lq / bm), 1)
    return Config(kernel_name(dtype, bucket, flav, (bm, bn)), grid, (THREADS, 1, 1), shared,
                  bm, bn, bucket)


def kernel_source():
    here = os.path.dirname(os.path.abspath(__file__))
    for cand in (os.path.join(here, "..", "kernels_cu", "attention.cu"),
                 os.path.join(here, "kernels_cu", "attention.cu")):
        if os.path.exists(cand):
            with open(cand) as f:
                return f.read()
    from importlib import resources

    return resources.files("cusoft.kernels_cu").joinpath("attention.cu").read_text()


NVRTC_OPTIONS = ("-std=c++17",)


@functools.lru_cache(None)
def fp16_include_options():
    """``-I`` for the directory holding ``cuda_fp16.h`` (NVRTC has no default search path);
    the one lookup of ``cusoft._cupy._module.cuda_include_dirs``."""
    from cusoft._cupy._module import cuda_include_dirs

    return tuple(f"-I{d}" for d in cuda_include_dirs())


_lock = threading.Lock()
_cupy_modules = {}


def cupy_module():
    """The attention RawModule of the current device, compiled on first use."""
    import cupy

    dev = cupy.cuda.runtime.getDevice()
    with _lock:
        mod = _cupy_modules.get(dev)
        if mod is None:
            mod = cupy.RawModule(code=kernel_source(),
                                 options=NVRTC_OPTIONS + fp16_include_options(),
                                 name_expressions=all_kernel_names())
            _cupy_modules[dev] = mod
    return mod


@functools.lru_cache(None)
def simt_module():
    """The attention module of the CPU emulation harness (g++ under AddressSanitizer)."""
    from cusoft import simt

    return simt.SimtModule(code=kernel_source(), options=NVRTC_OPTIONS,
                           name_expressions=all_kernel_names())


def _acc_scalar(dtype, x):
    return np.float64(x) if np.dtype(dtype) == np.float64 else np.float32(x)


def launch_attention(module_getter, xp, q, k, v, mask, bias, out, lse, scale, causal,
                     method=None, tile=None):
    """Run attention_fwd on canonical arrays (see ``cusoft/_attention.py``).

    q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), out (B, Hq, Lq, Dv) C-contiguous
    in one storage dtype; lse (B, Hq, Lq) in the accumulation dtype; mask/bias ``None`` or an
    ``Operand`` (mask data uint8, bias data in the storage dtype).  ``method`` picks the
    flavour (see ``flavour``); both take the same arguments."""
    B, Hq, Lq, D = (int(s) for s in q.shape)
    Hkv, Lk, Dv = int(k.shape[1]), int(k.shape[2]), int(v.shape[-1])
    cfg = launch_config(q.dtype, B, Hq, Lq, D, Dv, method, tile)
    fn = module_getter().get_function(cfg.name)
    if cfg.shared_mem > 48 * 1024 and hasattr(fn, "max_dynamic_shared_size_bytes"):
        # CUDA needs an explicit opt-in above 48 KB of dynamic shared memory
        if fn.max_dynamic_shared_size_bytes < cfg.shared_mem:
            fn.max_dynamic_shared_size_bytes = cfg.shared_mem
    want_lse = lse is not None
    dummy = None
    if mask is None or bias is None:
        dummy = xp.zeros(1, dtype=q.dtype)
    mk = mask.array if mask is not None else dummy.view(np.uint8)
    bs = bias.array if bias is not None else dummy
    ms = mask.strides if mask is not None else (0, 0, 0, 0)
    bst = bias.strides if bias is not None else (0, 0, 0, 0)
    i32, i64 = np.int32, np.int64
    if lse is None:
        lse = xp.zeros(1, dtype=np.float64 if q.dtype == np.float64 else np.float32)
    args = (q, k, v, mk, bs, out, lse,
            i32(Hq), i32(Hkv), i32(Lq), i32(Lk), i32(D), i32(Dv),
            _acc_scalar(q.dtype, scale * math.log2(math.e)), i32(bool(causal)),
            i32(mask is not None), i32(bias is not None), i32(want_lse),
            *(i64(s) for s in ms), *(i64(s) for s in bst))
    grid = cfg.grid
    if grid[1] > _MAX_GRID_Y:
        raise ValueError(f"Lq = {Lq} needs {grid[1]} query tiles, more than CUDA's grid limit "
                         f"{_MAX_GRID_Y}; split the queries")
    fn(grid, cfg.block, args, shared_mem=cfg.shared_mem)
