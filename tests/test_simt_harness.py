"""The SIMT harness (cusoft.simt) itself: CUDA semantics on the CPU, and proof that it catches
out-of-bounds accesses, missing barriers and bad warp masks.  Only small kernels of this file
run here; the product kernels are tested through the "simt" backend."""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from cusoft import simt

_ok, _reason = simt.available()
pytestmark = pytest.mark.skipif(not _ok, reason=f"simt harness unavailable: {_reason}")

SEEDS = (0, 1, 2, 3, 4)

KERNELS = r"""
// Each thread records where it is: thread, block, blockDim, gridDim.
extern "C" __global__ void where_am_i(int* out) {
    long long b = blockIdx.x + (long long)gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
    long long t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int* o = out + (b * blockDim.x * blockDim.y * blockDim.z + t) * 12;
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x;  o[4] = blockIdx.y;  o[5] = blockIdx.z;
    o[6] = blockDim.x;  o[7] = blockDim.y;  o[8] = blockDim.z;
    o[9] = gridDim.x;   o[10] = gridDim.y;  o[11] = gridDim.z;
}

// Tree reduction of one row per block through static shared memory.  SYNC=false drops the
// barrier between the stores and the first reads: the bug the harness must expose.
template <typename T, bool SYNC>
__global__ void block_sum(const T* x, T* out, int n) {
    __shared__ T s[256];
    unsigned t = threadIdx.x;
    T v = 0;
    for (int i = t; i < n; i += blockDim.x) v += x[(long long)blockIdx.x * n + i];
    s[t] = v;
    if (SYNC) __syncthreads();
    for (unsigned k = blockDim.x / 2; k > 0; k >>= 1) {
        if (t < k) s[t] += s[t + k];
        __syncthreads();
    }
    if (t == 0) out[blockIdx.x] = s[0];
}

// Each thread stores its value, the warps reduce with shuffles, then thread 0 adds up the
// stored values.  SYNC=false drops the barrier before that read; a warp-synchronous scheduler
// that keeps all warps in step would never notice, because every store precedes every shuffle.
template <bool SYNC>
__global__ void stored_then_shuffled(const float* x, float* out, float* warp_sums) {
    CUSOFT_DYN_SMEM(float, s);
    unsigned t = threadIdx.x;
    float v = x[blockIdx.x * blockDim.x + t];
    s[t] = v;
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (t % 32 == 0) warp_sums[blockIdx.x * (blockDim.x / 32) + t / 32] = v;
    if (SYNC) __syncthreads();
    if (t == 0) {
        float total = 0;
        for (unsigned i = 0; i < blockDim.x; ++i) total += s[i];
        out[blockIdx.x] = total;
    }
}

// Every shuffle kind of one value per thread; out holds 4 planes of blockDim*gridDim.
template <typename T>
__global__ void shuffles(const T* x, T* out, int arg, int width) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    int total = gridDim.x * blockDim.x;
    T v = x[g];
    out[g] = __shfl_sync(0xffffffffu, v, arg, width);
    out[total + g] = __shfl_up_sync(0xffffffffu, v, arg, width);
    out[2 * total + g] = __shfl_down_sync(0xffffffffu, v, arg, width);
    out[3 * total + g] = __shfl_xor_sync(0xffffffffu, v, arg, width);
}

// Butterfly sum over segments of `width` lanes, the usual warp reduction.
__global__ void segment_sum(const float* x, float* out, int width) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    float v = x[g];
    for (int off = width / 2; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off, width);
    out[g] = v;
}

__global__ void votes(const int* pred, unsigned* ballot, int* any, int* all, int* cnt, int* band,
                      int* bor) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    int p = pred[g];
    ballot[g] = __ballot_sync(0xffffffffu, p);
    any[g] = __any_sync(0xffffffffu, p);
    all[g] = __all_sync(0xffffffffu, p);
    cnt[g] = __syncthreads_count(p);
    band[g] = __syncthreads_and(p);
    bor[g] = __syncthreads_or(p);
}

// Reverse each block's slice through dynamic shared memory.
extern "C" __global__ void reverse_dyn(const float* x, float* y) {
    CUSOFT_DYN_SMEM(float, s);
    unsigned t = threadIdx.x, b = blockIdx.x * blockDim.x;
    s[t] = x[b + t];
    __syncthreads();
    y[b + t] = s[blockDim.x - 1 - t];
}

// Reads dynamic shared memory nobody wrote: must see the poison, not zeros.
extern "C" __global__ void read_stale(unsigned* y) {
    CUSOFT_DYN_SMEM(unsigned, s);
    y[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

__global__ void atomics(const int* bins_of, int* hist, float* fsum, double* dsum, int* imax,
                        unsigned* umax, unsigned long long* ucount, float* fmax_cas, int* exch,
                        const float* x) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    atomicAdd(&hist[bins_of[g]], 1);
    atomicAdd(fsum, 0.5f);
    atomicAdd(dsum, x[g]);
    atomicMax(imax, g);
    atomicMax(umax, 3u * (unsigned)g);
    atomicAdd(ucount, 1ull);
    // float max through atomicCAS, the pattern kernels use where no float atomicMax exists
    int* addr = (int*)fmax_cas;
    int old = *addr, assumed;
    do {
        assumed = old;
        float cur = __int_as_float(assumed);
        if (cur >= x[g]) break;
        old = atomicCAS(addr, assumed, __float_as_int(x[g]));
    } while (old != assumed);
    if (g == 5) atomicExch(exch, 42);
}

__global__ void half_convert(const unsigned short* hbits, float* h2f, const float* f,
                             unsigned short* f2h, const double* d, unsigned short* d2h, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        h2f[i] = __half2float(__ushort_as_half(hbits[i]));
        f2h[i] = __half_as_ushort(__float2half_rn(f[i]));
        d2h[i] = __half_as_ushort(__double2half(d[i]));
    }
}

// Half values through a shuffle and half arithmetic.
__global__ void half_ops(const __half* a, const __half* b, __half* sum, __half* prod, __half* swapped) {
    int g = threadIdx.x;
    sum[g] = __hadd(a[g], b[g]);
    prod[g] = a[g] * b[g];
    swapped[g] = __shfl_xor_sync(0xffffffffu, a[g], 1);
}

__global__ void vector_io(const float4* x4, float4* y4, const double2* d2, double2* e2, const int4* i4,
                          int4* j4, int* layout) {
    int g = threadIdx.x;
    float4 v = x4[g];
    y4[g] = make_float4(v.w, v.z, v.y, v.x);
    double2 d = __ldg(&d2[g]);
    e2[g] = make_double2(d.y, d.x);
    int4 i = i4[g];
    j4[g] = make_int4(i.x + i.y, i.z + i.w, i.x * 2, -i.w);
    if (g == 0) {
        layout[0] = sizeof(float4);  layout[1] = alignof(float4);
        layout[2] = sizeof(double2); layout[3] = alignof(double2);
        layout[4] = sizeof(int4);    layout[5] = alignof(int4);
        layout[6] = sizeof(float2);  layout[7] = alignof(float2);
        layout[8] = sizeof(__half);  layout[9] = sizeof(__half2);
        layout[10] = (int)((unsigned long long)x4 % 256);
    }
}

// Offsets past 2**31 must be computed in 64 bits; reads only a small window of x.
__global__ void offsets64(const long long* base, long long* out, long long rows, long long n) {
    long long row = rows - 1 - threadIdx.x;
    out[threadIdx.x] = row * n + base[threadIdx.x];
}

__global__ void offsets32(const int* base, int* out, int rows, int n) {
    int row = rows - 1 - threadIdx.x;
    out[threadIdx.x] = row * n + base[threadIdx.x];  // overflows int for large rows*n
}

__global__ void math_f(const float* x, float* y, int* flags, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    float* o = y + 12 * i;
    o[0] = expf(v);  o[1] = exp2f(v);  o[2] = logf(fabsf(v));  o[3] = log1pf(fabsf(v));
    o[4] = sqrtf(fabsf(v));  o[5] = rsqrtf(fabsf(v));  o[6] = __expf(v);  o[7] = __logf(fabsf(v));
    o[8] = __fdividef(v, 3.0f);  o[9] = fmaxf(v, 0.5f) + fminf(v, -0.5f);
    o[10] = copysignf(2.0f, v) + copysign(1.0f, v);
    o[11] = exp(v) + max(v, 1.0f) + min(i, 3u);   // CUDA overloads: exp(float), min(int, unsigned)
    flags[4 * i] = isnan(v) | (isinf(v) << 1) | (isfinite(v) << 2);
    flags[4 * i + 1] = __float_as_int(__int_as_float(0x7f800000)) == __float_as_int(INFINITY);
    flags[4 * i + 2] = isnan(NAN) && isinf(-INFINITY) && signbit(-0.0f);
    flags[4 * i + 3] = sizeof(exp(v)) + 10 * sizeof(exp(1.0)) + 100 * sizeof(max(1ll, 2ull))
                       + 1000 * (max(-1, 2u) == 0xffffffffu) + 10000 * (min(NAN, 2.0f) == 2.0f);
}

__global__ void math_d(const double* x, double* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double v = x[i];
    double* o = y + 6 * i;
    o[0] = exp(v);  o[1] = exp2(v);  o[2] = log(fabs(v));  o[3] = log1p(fabs(v));
    o[4] = fmax(v, 0.5) + fmin(v, -0.5);  o[5] = sqrt(fabs(v));
}

__global__ void divergent_sync(float* out) {
    if (threadIdx.x < 16) __syncwarp();   // waits for lanes 16..31, which wait at the barrier
    else __syncthreads();
    out[threadIdx.x] = 1.0f;
}

__global__ void spin_on_flag(volatile int* flag) {
    while (flag[0] == 0) {}   // nobody sets it: blocks never run concurrently here
}

struct Affine { int n; float scale; double shift; };

extern "C" __global__ void affine(const float* x, double* y, Affine p) {
    int i = threadIdx.x;
    if (i < p.n) y[i] = p.scale * x[i] + p.shift;
}

// -- planted bugs -------------------------------------------------------------------------------
__global__ void scale_oob(const float* x, float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) y[i] = 2.0f * x[i < n ? i : 0];   // `<=`: one element past the end
}

__global__ void misaligned_vector_load(const float* x, float4* y) {
    // x + 1 is not 16-byte aligned
    y[threadIdx.x] = reinterpret_cast<const float4*>(x + 1)[threadIdx.x];
}

__global__ void warp_sum_bad_mask(const float* x, float* out) {
    float v = x[threadIdx.x];
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0x0000ffffu, v, off);
    out[threadIdx.x] = v;
}

__global__ void half_warp_reads_outside(const float* x, float* out) {
    float v = x[threadIdx.x];
    if (threadIdx.x < 16) v += __shfl_xor_sync(0x0000ffffu, v, 16);
    out[threadIdx.x] = v;
}

__global__ void early_exit_barrier(float* out) {
    if (threadIdx.x == 3) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

__global__ void shuffle_after_exit(float* out, int quitter) {
    if (threadIdx.x == quitter) return;
    out[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
}

extern "C" __global__ void inplace_scale(float* y, const float* x, float a, long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i];
}

extern "C" __global__ void ptr_diff(const float* a, const float* b, long long* d) {
    d[0] = (long long)((const char*)b - (const char*)a);
}

extern "C" __global__ void maybe_null(const float* w, float* y) {
    y[threadIdx.x] = w ? w[threadIdx.x] : -1.0f;
}

extern "C" __global__ void say_hello(int* y) {
    if (threadIdx.x == 0) printf("hello from block %d\n", (int)blockIdx.x);
    y[threadIdx.x] = 1;
}
"""

NAMES = [
    "where_am_i", "stored_then_shuffled<true>", "stored_then_shuffled<false>",
    "block_sum<float, true>", "block_sum<float, false>", "block_sum<double, true>",
    "shuffles<float>", "shuffles<double>", "shuffles<int>", "shuffles<unsigned int>",
    "shuffles<long long>", "shuffles<__half>", "segment_sum", "votes", "reverse_dyn", "read_stale",
    "atomics", "half_convert", "half_ops", "vector_io", "offsets64", "offsets32", "scale_oob",
    "warp_sum_bad_mask", "half_warp_reads_outside", "early_exit_barrier", "shuffle_after_exit",
    "math_f", "math_d", "divergent_sync", "spin_on_flag", "inplace_scale", "ptr_diff", "maybe_null",
    "affine", "misaligned_vector_load", "say_hello",
]


@pytest.fixture(scope="module")
def mod():
    return simt.SimtModule(code=KERNELS, name_expressions=NAMES).compile()


def k(mod, name):
    return mod.get_function(name)


# ---- geometry, barriers, warps ------------------------------------------------------------

def test_thread_and_block_indices_3d(mod):
    grid, block = (3, 2, 2), (4, 2, 3)
    nthr = np.prod(block)
    out = np.full((np.prod(grid) * nthr, 12), -1, np.int32)
    k(mod, "where_am_i")(grid, block, (out,))
    axes = (np.arange(d) for d in (*grid[::-1], *block[::-1]))
    bz, by, bx, tz, ty, tx = np.meshgrid(*axes, indexing="ij")
    want = np.stack([tx, ty, tz, bx, by, bz], axis=-1).reshape(-1, 6)
    np.testing.assert_array_equal(out[:, :6], want)
    np.testing.assert_array_equal(out[:, 6:9], np.broadcast_to(block, (len(out), 3)))
    np.testing.assert_array_equal(out[:, 9:], np.broadcast_to(grid, (len(out), 3)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_reduction_through_shared_memory(mod, dtype):
    x = np.random.default_rng(1).standard_normal((6, 1000)).astype(dtype)
    out = np.zeros(6, dtype)
    name = "block_sum<float, true>" if dtype == np.float32 else "block_sum<double, true>"
    for seed in SEEDS:
        k(mod, name)(6, 256, (x, out, np.int32(1000)), seed=seed)
        np.testing.assert_allclose(out, x.sum(1, dtype=np.float64),
                                   rtol=1e-5 if dtype == np.float32 else 1e-12)


def _cuda_shuffle_sources(nthreads, arg, width):
    """Source lane of each of the four shuffle kinds, by CUDA's rules."""
    g = np.arange(nthreads)
    lane, warp0 = g % 32, g - g % 32
    lo = lane & ~(width - 1)
    hi = lo + width - 1
    idx = lo | (arg & (width - 1))
    up = np.where(lane - lo >= arg, lane - arg, lane)
    down = np.where(lane + arg <= hi, lane + arg, lane)
    xor = np.where((lane ^ arg) <= hi, lane ^ arg, lane)  # may reach an earlier segment
    return [warp0 + s for s in (idx, up, down, xor)]


SHUFFLE_TYPES = {"float": np.float32, "double": np.float64, "int": np.int32, "unsigned int": np.uint32,
                 "long long": np.int64, "__half": np.float16}


@pytest.mark.parametrize("width", [32, 16, 8])
@pytest.mark.parametrize("ctype", list(SHUFFLE_TYPES))
def test_shuffles_every_kind_and_width(mod, ctype, width):
    dtype = SHUFFLE_TYPES[ctype]
    n = 64  # two warps per block, two blocks
    x = (np.arange(2 * n) * 3 + 1).astype(dtype)
    if dtype == np.int64:
        x = x + np.int64(2**40)  # the high word must travel too
    for arg in sorted({1, 2, width // 2, width - 1, 5 % width, 17 % width}):
        out = np.zeros(4 * 2 * n, dtype)
        k(mod, f"shuffles<{ctype}>")(2, n, (x, out, np.int32(arg), np.int32(width)))
        for plane, src in zip(out.reshape(4, 2 * n), _cuda_shuffle_sources(2 * n, arg, width)):
            np.testing.assert_array_equal(plane, x[src], err_msg=f"arg={arg}")


@pytest.mark.parametrize("width", [32, 16, 8])
def test_segment_butterfly_sum(mod, width):
    x = np.random.default_rng(2).integers(-50, 50, 128).astype(np.float32)
    out = np.zeros_like(x)
    k(mod, "segment_sum")(2, 64, (x, out, np.int32(width)))
    np.testing.assert_array_equal(out, np.repeat(x.reshape(-1, width).sum(1), width))


def test_votes_and_counting_barriers(mod):
    rng = np.random.default_rng(3)
    pred = (rng.random(128) < 0.4).astype(np.int32)
    pred[32:64] = 1  # warp 1 all true
    pred[64:96] = 0  # warp 2 (block 1, warp 0) all false
    outs = [np.zeros(128, t) for t in (np.uint32, np.int32, np.int32, np.int32, np.int32, np.int32)]
    k(mod, "votes")(2, 64, (pred, *outs))
    ballot, anyv, allv, cnt, band, bor = outs
    w = pred.reshape(4, 32)
    want_ballot = (w.astype(np.uint64) << np.arange(32, dtype=np.uint64)).sum(1)
    np.testing.assert_array_equal(ballot, np.repeat(want_ballot, 32))
    np.testing.assert_array_equal(anyv, np.repeat(w.any(1), 32))
    np.testing.assert_array_equal(allv, np.repeat(w.all(1), 32))
    b = pred.reshape(2, 64)
    np.testing.assert_array_equal(cnt, np.repeat(b.sum(1), 64))
    np.testing.assert_array_equal(band, np.repeat(b.all(1), 64))
    np.testing.assert_array_equal(bor, np.repeat(b.any(1), 64))


# ---- memory ------------------------------------------------------------------------------------

def test_dynamic_shared_memory(mod):
    x = np.arange(3 * 96, dtype=np.float32)
    y = np.zeros_like(x)
    k(mod, "reverse_dyn")(3, 96, (x, y), shared_mem=96 * 4)
    np.testing.assert_array_equal(y, x.reshape(3, 96)[:, ::-1].ravel())


def test_dynamic_shared_memory_is_poisoned_before_every_block(mod):
    y = np.zeros(2 * 32, np.uint32)
    k(mod, "read_stale")(2, 32, (y,), shared_mem=32 * 4)
    assert (y == 0xFFFFFFFF).all()  # reads as NaN in float: stale data cannot pass for zeros


def test_dynamic_shared_memory_is_bounded(mod):
    y = np.zeros(64, np.float32)
    with pytest.raises(simt.SimtError, match="AddressSanitizer"):
        k(mod, "reverse_dyn")(1, 64, (y, y), shared_mem=63 * 4)


def test_atomics(mod):
    nblk, nthr = 4, 64
    n = nblk * nthr
    rng = np.random.default_rng(4)
    bins_of = rng.integers(0, 10, n).astype(np.int32)
    x = rng.standard_normal(n).astype(np.float32)
    hist = np.zeros(10, np.int32)
    fsum = np.zeros(1, np.float32)
    dsum = np.zeros(1, np.float64)
    imax = np.array([-5], np.int32)
    umax = np.zeros(1, np.uint32)
    ucount = np.zeros(1, np.uint64)
    fmax = np.array([-np.inf], np.float32)
    exch = np.zeros(1, np.int32)
    k(mod, "atomics")(nblk, nthr, (bins_of, hist, fsum, dsum, imax, umax, ucount, fmax, exch, x))
    np.testing.assert_array_equal(hist, np.bincount(bins_of, minlength=10))
    assert fsum[0] == 0.5 * n
    np.testing.assert_allclose(dsum[0], x.astype(np.float64).sum(), rtol=1e-12)
    assert imax[0] == n - 1 and umax[0] == 3 * (n - 1) and ucount[0] == n
    assert fmax[0] == x.max() and exch[0] == 42


def test_half_conversions_every_bit_pattern(mod):
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    halves = bits.view(np.float16)
    # float inputs: every half, every midpoint between neighbours (ties to even) and its two
    # float neighbours, plus overflow, underflow and random values
    f16 = np.sort(halves[np.isfinite(halves)].astype(np.float32))
    mids = (f16[:-1].astype(np.float64) + f16[1:]) / 2
    mids = mids.astype(np.float32)
    rng = np.random.default_rng(5)
    extra = np.array([65504, 65519.99, 65520, 65536, 1e30, 2**-24, 2**-25, 2**-26, 3 * 2**-26,
                      1e-30, 0.0, np.inf, -np.inf, np.nan], np.float32)
    scaled = rng.standard_normal(4000) * 10.0 ** rng.integers(-8, 6, 4000)
    fin = np.concatenate([f16, mids, np.nextafter(mids, np.float32(np.inf)),
                          np.nextafter(mids, np.float32(-np.inf)), -mids, extra,
                          scaled.astype(np.float32)])
    m = max(len(fin), 65536)
    fin = np.resize(fin, m).astype(np.float32)
    din = np.resize(np.concatenate([mids.astype(np.float64) * (1 + 2.0**-40), mids.astype(np.float64),
                                    rng.standard_normal(5000) * 1e3]), m)
    hb = np.resize(bits, m)
    h2f = np.zeros(m, np.float32)
    f2h = np.zeros(m, np.uint16)
    d2h = np.zeros(m, np.uint16)
    k(mod, "half_convert")(64, 256, (hb, h2f, fin, f2h, din, d2h, np.int32(m)))

    want = hb.view(np.float16).astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(h2f), nan)
    # bit equality: signed zeros and subnormals too
    np.testing.assert_array_equal(h2f[~nan].view(np.uint32), want[~nan].view(np.uint32))

    for got, src in ((f2h, fin), (d2h, din)):
        with np.errstate(over="ignore"):
            ref = src.astype(np.float16)
        nan = np.isnan(ref)
        assert (got[nan] == 0x7FFF).all()  # the GPU's canonical NaN
        np.testing.assert_array_equal(got[~nan], ref[~nan].view(np.uint16))


def test_half_arithmetic_and_shuffle(mod):
    rng = np.random.default_rng(6)
    a = rng.standard_normal(32).astype(np.float16)
    b = rng.standard_normal(32).astype(np.float16)
    s, p, w = (np.zeros(32, np.float16) for _ in range(3))
    k(mod, "half_ops")(1, 32, (a, b, s, p, w))
    np.testing.assert_array_equal(s, a + b)  # numpy rounds half arithmetic once, like sm_53+
    np.testing.assert_array_equal(p, a * b)
    np.testing.assert_array_equal(w, a[np.arange(32) ^ 1])


def test_vector_loads_and_layout(mod):
    x4 = np.arange(32 * 4, dtype=np.float32)
    y4 = np.zeros_like(x4)
    d2 = np.arange(32 * 2, dtype=np.float64)
    e2 = np.zeros_like(d2)
    i4 = np.arange(32 * 4, dtype=np.int32)
    j4 = np.zeros_like(i4)
    layout = np.zeros(11, np.int32)
    k(mod, "vector_io")(1, 32, (x4, y4, d2, e2, i4, j4, layout))
    np.testing.assert_array_equal(y4.reshape(-1, 4), x4.reshape(-1, 4)[:, ::-1])
    np.testing.assert_array_equal(e2.reshape(-1, 2), d2.reshape(-1, 2)[:, ::-1])
    i = i4.reshape(-1, 4)
    np.testing.assert_array_equal(j4.reshape(-1, 4), np.stack([i[:, 0] + i[:, 1], i[:, 2] + i[:, 3],
                                                              2 * i[:, 0], -i[:, 3]], 1))
    # CUDA's sizes and alignments; arrays arrive 256-byte aligned like cudaMalloc memory
    np.testing.assert_array_equal(layout, [16, 16, 16, 16, 16, 16, 8, 8, 2, 4, 0])


def test_int64_offsets(mod):
    rows, n = np.int64(3_000_000), np.int64(5_000)   # rows * n > 2**33
    base = np.arange(8, dtype=np.int64)
    out = np.zeros(8, np.int64)
    k(mod, "offsets64")(1, 8, (base, out, rows, n))
    np.testing.assert_array_equal(out, (rows - 1 - np.arange(8)) * n + base)


def test_int32_offset_overflow_is_reported(mod):
    base = np.arange(8, dtype=np.int32)
    out = np.zeros(8, np.int32)
    with pytest.raises(simt.SimtError, match="signed integer overflow"):
        k(mod, "offsets32")(1, 8, (base, out, np.int32(3_000_000), np.int32(5_000)))


def test_math_functions(mod):
    x = np.array([-3.5, -1, -0.25, 0, 0.3, 1, 2.5, 20, 88, np.inf, -np.inf, np.nan], np.float32)
    n = len(x)
    y = np.zeros(12 * n, np.float32)
    flags = np.zeros(4 * n, np.int32)
    k(mod, "math_f")(1, 32, (x, y, flags, np.int32(n)))
    y = y.reshape(n, 12).astype(np.float64)
    a = np.abs(x).astype(np.float64)
    xd = x.astype(np.float64)
    with np.errstate(all="ignore"):
        want = [np.exp(xd), np.exp2(xd), np.log(a), np.log1p(a), np.sqrt(a), 1 / np.sqrt(a), np.exp(xd),
                np.log(a), xd / 3, np.fmax(xd, 0.5) + np.fmin(xd, -0.5),
                np.copysign(2, xd) + np.copysign(1, xd),
                np.exp(xd) + np.fmax(xd, 1) + np.minimum(np.arange(n), 3)]
        for j, w in enumerate(want):
            w = w.astype(np.float32).astype(np.float64)
            np.testing.assert_allclose(y[:, j], w, rtol=4e-7, atol=0, equal_nan=True,
                                       err_msg=f"column {j}")
    f = flags.reshape(n, 4)
    np.testing.assert_array_equal(f[:, 0], np.isnan(x) | (np.isinf(x) << 1) | (np.isfinite(x) << 2))
    assert (f[:, 1] == 1).all() and (f[:, 2] == 1).all()
    # exp(float) is float, max(long long, unsigned long long) 64-bit, max(int, unsigned)
    # compares as unsigned, min(float, float) ignores NaN: CUDA's overloads
    assert (f[:, 3] == 4 + 10 * 8 + 100 * 8 + 1000 + 10000).all()

    xd = np.array([-700.5, -1, 0, 0.1, 1, 3, 700, np.inf, np.nan])
    yd = np.zeros(6 * len(xd))
    k(mod, "math_d")(1, 32, (xd, yd, np.int32(len(xd))))
    ad = np.abs(xd)
    with np.errstate(all="ignore"):
        want = np.stack([np.exp(xd), np.exp2(xd), np.log(ad), np.log1p(ad),
                         np.fmax(xd, 0.5) + np.fmin(xd, -0.5), np.sqrt(ad)], 1)
    np.testing.assert_allclose(yd.reshape(-1, 6), want, rtol=1e-15, equal_nan=True)


# ---- the planted bugs --------------------------------------------------------------------------

def test_out_of_bounds_write_raises_with_asan_report(mod):
    x = np.ones(100, np.float32)
    y = np.zeros(100, np.float32)
    with pytest.raises(simt.SimtError) as info:
        k(mod, "scale_oob")(1, 128, (x, y, np.int32(100)))
    report = info.value.report
    assert "AddressSanitizer: heap-buffer-overflow" in report
    assert "WRITE of size 4" in report
    assert ("0 bytes to the right of 400-byte region" in report      # gcc 12's libasan
            or "0 bytes after 400-byte region" in report)
    assert "scale_oob" in str(info.value)
    # the harness survives: the next launch runs in a fresh process
    k(mod, "scale_oob")(1, 128, (np.ones(101, np.float32), np.zeros(101, np.float32), np.int32(100)))


def test_missing_syncthreads_gives_a_wrong_answer(mod):
    x = np.random.default_rng(7).standard_normal((4, 256)).astype(np.float32)
    want = x.sum(1, dtype=np.float64)
    wrong_seeds = []
    for seed in SEEDS:
        out = np.zeros(4, np.float32)
        k(mod, "block_sum<float, true>")(4, 256, (x, out, np.int32(256)), seed=seed)
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
        k(mod, "block_sum<float, false>")(4, 256, (x, out, np.int32(256)), seed=seed)
        if not np.allclose(out, want, rtol=1e-5, atol=1e-5):
            wrong_seeds.append(seed)
    assert wrong_seeds, "the race of a missing __syncthreads went unnoticed for every seed"


def test_misaligned_vector_load_raises(mod):
    # a GPU faults with "misaligned address"; UBSan reports the same access
    with pytest.raises(simt.SimtError, match="misaligned address"):
        k(mod, "misaligned_vector_load")(1, 2, (np.zeros(12, np.float32), np.zeros(8, np.float32)))


def test_missing_syncthreads_across_a_warp_intrinsic_gives_a_wrong_answer(mod):
    x = np.random.default_rng(8).integers(-8, 8, (4, 256)).astype(np.float32)
    wrong_seeds = []
    for seed in SEEDS:
        out = np.zeros(4, np.float32)
        sums = np.zeros(32, np.float32)
        k(mod, "stored_then_shuffled<true>")(4, 256, (x, out, sums), shared_mem=1024, seed=seed)
        np.testing.assert_array_equal(out, x.sum(1))
        np.testing.assert_array_equal(sums, x.reshape(-1, 32).sum(1))
        k(mod, "stored_then_shuffled<false>")(4, 256, (x, out, sums), shared_mem=1024, seed=seed)
        if not np.array_equal(out, x.sum(1)):
            wrong_seeds.append(seed)
    assert wrong_seeds, "the race of a missing __syncthreads went unnoticed for every seed"


def test_shuffle_mask_without_the_calling_lane_raises(mod):
    x = np.ones(32, np.float32)
    with pytest.raises(simt.SimtError, match="does not include the calling lane"):
        k(mod, "warp_sum_bad_mask")(1, 32, (x, np.zeros(32, np.float32)))


def test_shuffle_reading_a_lane_outside_the_mask_raises(mod):
    with pytest.raises(simt.SimtError, match="not in the mask"):
        k(mod, "half_warp_reads_outside")(1, 32, (np.ones(32, np.float32), np.zeros(32, np.float32)))


def test_exit_before_barrier_is_reported(mod):
    with pytest.raises(simt.SimtError, match="have exited"):
        k(mod, "early_exit_barrier")(1, 64, (np.zeros(64, np.float32),))


def test_reading_an_exited_lane_is_reported(mod):
    # CUDA lets a mask name exited lanes, but a value read from one is undefined
    with pytest.raises(simt.SimtError, match="reads lane 7 of warp 0, which has exited"):
        k(mod, "shuffle_after_exit")(1, 32, (np.zeros(32, np.float32), np.int32(7)))
    y = np.zeros(32, np.float32)
    k(mod, "shuffle_after_exit")(1, 32, (y, np.int32(0)))  # lane 0 exits; nobody reads it
    np.testing.assert_array_equal(y[1:], 1)


def test_deadlock_is_reported(mod):
    with pytest.raises(simt.SimtError, match="deadlock") as info:
        k(mod, "divergent_sync")(1, 32, (np.zeros(32, np.float32),))
    assert "__syncwarp(mask=0xffffffff)" in info.value.report and "__syncthreads" in info.value.report


def test_spinning_kernel_times_out(mod):
    with pytest.raises(simt.SimtError, match=r"\(seed=0\) did not finish within 1 s"):
        k(mod, "spin_on_flag")(2, 1, (np.zeros(1, np.int32),), timeout=1)


def test_reading_past_a_partial_warp_is_reported(mod):
    with pytest.raises(simt.SimtError, match="does not exist"):
        k(mod, "segment_sum")(1, 48, (np.ones(48, np.float32), np.zeros(48, np.float32), np.int32(32)))
    y = np.zeros(48, np.float32)
    # full mask, 16-lane segments: nobody reads past the 48 threads
    k(mod, "segment_sum")(1, 48, (np.ones(48, np.float32), y, np.int32(16)))
    np.testing.assert_array_equal(y, 16)


# ---- the Python side ---------------------------------------------------------------------------

def test_in_place_aliasing_arguments(mod):
    y = np.arange(1000, dtype=np.float32)
    k(mod, "inplace_scale")(4, 256, (y, y, np.float32(3), np.int64(1000)))
    np.testing.assert_array_equal(y, 3 * np.arange(1000, dtype=np.float32))
    # overlapping views reach the kernel as pointers into one allocation, 4 bytes apart
    z = np.arange(10, dtype=np.float32)
    d = np.zeros(1, np.int64)
    k(mod, "ptr_diff")(1, 1, (z[:-1], z[1:], d))
    assert d[0] == 4


def test_null_pointer_and_readonly_inputs(mod):
    y = np.zeros(4, np.float32)
    k(mod, "maybe_null")(1, 4, (None, y))
    assert (y == -1).all()
    w = np.arange(4, dtype=np.float32)
    w.flags.writeable = False
    k(mod, "maybe_null")(1, 4, (w, y))
    np.testing.assert_array_equal(y, w)
    with pytest.raises(simt.SimtError, match="read-only"):
        k(mod, "maybe_null")(1, 4, (np.zeros(4, np.float32), w))


def test_argument_checks(mod):
    f = k(mod, "inplace_scale")
    y = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match="takes 4 arguments"):
        f(1, 8, (y, y, np.float32(1)))
    with pytest.raises(TypeError, match="int64 .8 bytes. but the parameter is float"):
        f(1, 8, (y, y, 1, np.int64(8)))
    with pytest.raises(TypeError, match="np.int64"):
        f(1, 8, (y, y, np.float32(1), np.int32(8)))
    with pytest.raises(TypeError, match="is an array"):
        f(1, 8, (y, y, y, np.int64(8)))
    with pytest.raises(ValueError, match="not contiguous"):
        f(1, 8, (y[::2], y[::2], np.float32(1), np.int64(4)))


def test_struct_parameter_by_value(mod):
    params = np.array((3, 2.0, 0.5), dtype=np.dtype([("n", "<i4"), ("scale", "<f4"), ("shift", "<f8")],
                                                     align=True))[()]
    x = np.arange(4, dtype=np.float32)
    y = np.zeros(4)
    k(mod, "affine")(1, 4, (x, y, params))
    np.testing.assert_array_equal(y, [0.5, 2.5, 4.5, 0])


def test_launch_limits(mod):
    f = k(mod, "reverse_dyn")
    x = np.zeros(2048, np.float32)
    with pytest.raises(simt.SimtLaunchError, match="at most 1024"):
        f(1, (64, 32), (x, x))
    with pytest.raises(simt.SimtLaunchError, match="block dimension z"):
        f(1, (1, 1, 65), (x, x))
    with pytest.raises(simt.SimtLaunchError, match="grid dimension y"):
        f((1, 0), 32, (x, x))
    with pytest.raises(simt.SimtLaunchError, match="max_dynamic_shared_size_bytes"):
        f(1, 32, (x, x), shared_mem=64 * 1024)
    with pytest.raises(simt.SimtLaunchError, match="227 KiB"):
        f.max_dynamic_shared_size_bytes = 300 * 1024
    f.max_dynamic_shared_size_bytes = 100 * 1024
    y = np.zeros_like(x)
    f(1, 1024, (x + 1, y), shared_mem=64 * 1024)
    assert (y[:1024] == 1).all()


def test_kernel_printf_reaches_stdout(mod, capsys):
    y = np.zeros(32, np.int32)
    k(mod, "say_hello")(2, 32, (y,))
    lines = capsys.readouterr().out.split("\n")[:2]
    assert sorted(lines) == ["hello from block 0", "hello from block 1"]


def test_compile_error_is_reported():
    with pytest.raises(simt.SimtCompileError, match="undeclared|not declared"):
        simt.SimtModule(code="__global__ void broken(float* y) { y[0] = nope; }",
                        name_expressions=["broken"]).compile()


def test_unknown_name_fails_without_breaking_the_module():
    m = simt.SimtModule(code='extern "C" __global__ void one(int* y) { y[0] = 1; }',
                        name_expressions=["one"])
    with pytest.raises(simt.SimtCompileError):
        m.get_function("two")
    y = np.zeros(1, np.int32)
    m.get_function("one")(1, 1, (y,))
    assert y[0] == 1


def test_options_and_raw_kernel():
    code = 'extern "C" __global__ void fill(int* y) { y[threadIdx.x] = VALUE + (USE_ARCH_FLAG); }'
    kern = simt.SimtRawKernel(code, "fill", options=("-DVALUE=7", "--use_fast_math", "-arch=sm_90",
                                                     "-D", "USE_ARCH_FLAG=1"))
    y = np.zeros(5, np.int32)
    kern(1, 5, (y,))
    assert (y == 8).all()


@pytest.mark.skipif(shutil.which(os.environ.get("NVCC", "nvcc")) is None, reason="no nvcc on PATH")
def test_kernels_of_this_file_are_valid_cuda(tmp_path):
    # The harness must not accept a dialect nvcc rejects: compile the same text for a GPU.
    prelude = ("#include <cuda_fp16.h>\n#include <cstdio>\n#include <cassert>\n"
               "#define CUSOFT_DYN_SMEM(type, name) extern __shared__ __align__(16) unsigned char "
               "cusoft_dyn_smem_[]; type* name = reinterpret_cast<type*>(cusoft_dyn_smem_)\n")
    instances = "".join(f"auto* instance_{i} = &{n};\n" for i, n in enumerate(NAMES) if "<" in n)
    src = tmp_path / "kernels.cu"
    src.write_text(prelude + KERNELS + instances)
    res = subprocess.run([os.environ.get("NVCC", "nvcc"), "-std=c++17", "-arch=sm_80",
                          "-diag-suppress", "1556", "-c", str(src), "-o", str(tmp_path / "k.o")],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
