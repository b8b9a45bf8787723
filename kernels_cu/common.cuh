// cusoft/kernels_cu/common.cuh -- building blocks shared by every kernels_cu/*.cu file.
//
// How this file is compiled
// -------------------------
// The loader (cusoft/_cupy/_module.py: source()) *inlines* this header: the line
// `#include "common.cuh"` of an op file is replaced by this text before the source reaches
// NVRTC (CuPy), nvcc (tests) or the CPU emulator (cusoft/simt).  No -I option is needed and
// all three compile byte-identical text.
//
// NVRTC has no C/C++ standard headers, so nothing here includes <cmath>, <cstdint>, ...:
// integer types are spelled out and the special values are built from bit patterns.
// Everything CUDA-only sits under `#ifdef __CUDACC__` (defined by nvcc and NVRTC); the CPU
// emulator (cusoft/simt/simt.h) supplies __half, the built-in variables, __syncthreads,
// __shfl_xor_sync and CUSOFT_DYN_SMEM for the host compiler.
//
// Conventions for kernels written on top of this file
// ---------------------------------------------------
// * Canonical layout (see cusoft/_backend.py): x is (outer, n, inner), C-contiguous.  Every
//   offset is an i64: outer*n*inner may exceed 2^31.
// * Accumulate in acc_t<T> (float for __half and float, double for double).
// * All shared memory is *dynamic* (CUSOFT_DYN_SMEM); the launcher (cusoft/_launch.py)
//   computes its size.  Block reductions use the first CUSOFT_SCRATCH_BYTES bytes.
// * Group reductions return bit-identical results on every participating thread (operands
//   are always merged in lane/warp order), so a decision taken on a reduced value (e.g. the
//   non-finite fallback of logsumexp) is uniform and may itself contain a reduction.
// * No null pointers: optional arrays are passed with an int flag (has_b, has_sign) and a
//   placeholder array, so the CuPy and emulator argument marshalling stay trivial.
#ifndef CUSOFT_COMMON_CUH
#define CUSOFT_COMMON_CUH

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define CUSOFT_DEV __device__ __forceinline__
#define CUSOFT_BOUNDS(...) __launch_bounds__(__VA_ARGS__)
// Dynamic shared memory as a typed pointer.  One untyped symbol for every kernel (declaring
// it with different element types in different templates would not link under nvcc).
#define CUSOFT_DYN_SMEM(type, name)                                                       \
    extern __shared__ __align__(16) unsigned char cusoft_dyn_smem_[];                     \
    type* name = reinterpret_cast<type*>(cusoft_dyn_smem_)
#else
#define CUSOFT_DEV __device__ inline
#define CUSOFT_BOUNDS(...)
#endif

namespace cusoft {

typedef long long i64;
typedef unsigned long long u64;

static constexpr int kWarp = 32;
static constexpr unsigned kFullMask = 0xffffffffu;
// Bytes at the start of dynamic shared memory reserved for block reductions: room for one
// state (up to 3 doubles) per warp of a 1024-thread block, plus a flag word.
static constexpr int kScratchBytes = 1024;

// ---------------------------------------------------------------------------------------
// dtype traits
// ---------------------------------------------------------------------------------------
template <typename T> struct Traits;

template <> struct Traits<__half> {
    typedef float acc;  // half is accumulated in float: 11-bit mantissas lose sums fast
    static CUSOFT_DEV float load(__half v) { return __half2float(v); }
    static CUSOFT_DEV __half store(float v) { return __float2half(v); }
};
template <> struct Traits<float> {
    typedef float acc;
    static CUSOFT_DEV float load(float v) { return v; }
    static CUSOFT_DEV float store(float v) { return v; }
};
template <> struct Traits<double> {
    typedef double acc;
    static CUSOFT_DEV double load(double v) { return v; }
    static CUSOFT_DEV double store(double v) { return v; }
};
template <typename T> using acc_t = typename Traits<T>::acc;

// Math on the accumulation type, overloaded so templates stay type-generic.  The accurate
// libm-style functions are used on purpose (not __expf): kernels are memory bound.
CUSOFT_DEV float cu_exp(float v) { return expf(v); }
CUSOFT_DEV double cu_exp(double v) { return exp(v); }
CUSOFT_DEV float cu_log(float v) { return logf(v); }
CUSOFT_DEV double cu_log(double v) { return log(v); }
CUSOFT_DEV float cu_log1p(float v) { return log1pf(v); }
CUSOFT_DEV double cu_log1p(double v) { return log1p(v); }
CUSOFT_DEV float cu_abs(float v) { return fabsf(v); }
CUSOFT_DEV double cu_abs(double v) { return fabs(v); }

// Special values from bit patterns (NVRTC has neither INFINITY nor __builtin_huge_val).
template <typename A> CUSOFT_DEV A cu_inf();
template <typename A> CUSOFT_DEV A cu_nan();
#ifdef __CUDACC__
template <> CUSOFT_DEV float cu_inf<float>() { return __int_as_float(0x7f800000); }
template <> CUSOFT_DEV double cu_inf<double>() { return __longlong_as_double(0x7ff0000000000000LL); }
template <> CUSOFT_DEV float cu_nan<float>() { return __int_as_float(0x7fc00000); }
template <> CUSOFT_DEV double cu_nan<double>() { return __longlong_as_double(0x7ff8000000000000LL); }
#else
template <> CUSOFT_DEV float cu_inf<float>() { return __builtin_huge_valf(); }
template <> CUSOFT_DEV double cu_inf<double>() { return __builtin_huge_val(); }
template <> CUSOFT_DEV float cu_nan<float>() { return __builtin_nanf(""); }
template <> CUSOFT_DEV double cu_nan<double>() { return __builtin_nan(""); }
#endif

// Classification by comparison only: correct without fast-math, needs no intrinsics.
template <typename A> CUSOFT_DEV bool is_nan(A v) { return v != v; }
template <typename A> CUSOFT_DEV bool is_finite(A v) { return v - v == A(0); }
// numpy.sign: -1, 0, +1, NaN for NaN.
template <typename A> CUSOFT_DEV A sign_of(A v)
{
    return v > A(0) ? A(1) : (v < A(0) ? A(-1) : (v == A(0) ? A(0) : v));
}
// NaN-propagating max (numpy.max semantics; fmaxf would drop the NaN).  The result is
// `a` when a is NaN, so merging in a fixed order gives one well-defined answer.
template <typename A> CUSOFT_DEV A nan_max(A a, A b) { return (a != a || a > b) ? a : b; }
// NaN-blind max: one FMNMX where nan_max takes three instructions.  For callers that find
// a NaN another way (see softmax_fwd_warp / softmax_fwd_block).
CUSOFT_DEV float blind_max(float a, float b) { return fmaxf(a, b); }
CUSOFT_DEV double blind_max(double a, double b) { return fmax(a, b); }

// ---------------------------------------------------------------------------------------
// Online softmax state (m, s): m = running max, s = sum of (1 if x == m else exp(x - m)).
// The x == m term is counted as 1 explicitly so that an all -inf row is (-inf, n) and a
// +inf max does not produce inf - inf (the partial-state rule of cusoft/_backend.py).
// ---------------------------------------------------------------------------------------
template <typename A> struct MaxSum {
    A m, s;
    CUSOFT_DEV void init() { m = -cu_inf<A>(); s = A(0); }
    CUSOFT_DEV void add(A x)
    {
        if (x > m || x != x) {
            // new maximum (or a NaN, which then poisons the state for good)
            s = s * cu_exp(m - x) + A(1);
            m = x;
        } else if (x == m) {
            s += A(1);
        } else {
            s += cu_exp(x - m);
        }
    }
    // Ordered merge: the result depends on (a, b) only, never on which thread computes it.
    static CUSOFT_DEV MaxSum merge(const MaxSum& a, const MaxSum& b)
    {
        // Written with selects only: merges run inside shuffle loops, where branches would
        // cost convergence barriers (and ptxas spills them).
        MaxSum r;
        r.m = nan_max(a.m, b.m);
        const A sa = (a.m == r.m) ? a.s : a.s * cu_exp(a.m - r.m);
        const A sb = (b.m == r.m) ? b.s : b.s * cu_exp(b.m - r.m);
        r.s = (r.m != r.m) ? r.m : sa + sb;
        return r;
    }
    CUSOFT_DEV MaxSum shfl_xor(int lane_mask) const
    {
        MaxSum o;
        o.m = __shfl_xor_sync(kFullMask, m, lane_mask);
        o.s = __shfl_xor_sync(kFullMask, s, lane_mask);
        return o;
    }
};

// Weighted online state (m, c, r) for logsumexp with b and for the public partials:
// m = max over elements with w != 0, c = sum of w at the maxima, r = sum of w*exp(x - m)
// elsewhere.  NaN state is (NaN, 0, NaN): no element compares equal to NaN.
template <typename A> struct MaxCountRest {
    A m, c, r;
    CUSOFT_DEV void init() { m = -cu_inf<A>(); c = A(0); r = A(0); }
    CUSOFT_DEV void add(A x, A w)
    {
        if (w == A(0)) return;  // SciPy drops b == 0 elements (x treated as -inf)
        if (x > m || x != x) {
            r = (r + c) * cu_exp(m - x);
            c = (x == x) ? w : A(0);
            m = x;
        } else if (x == m) {
            c += w;
        } else {
            r += w * cu_exp(x - m);
        }
    }
    static CUSOFT_DEV MaxCountRest merge(const MaxCountRest& a, const MaxCountRest& b)
    {
        MaxCountRest o;
        o.m = nan_max(a.m, b.m);
        const bool at = a.m == o.m, bt = b.m == o.m;  // both false only for a NaN max
        const A ra = at ? a.r : (a.c + a.r) * cu_exp(a.m - o.m);
        const A rb = bt ? b.r : (b.c + b.r) * cu_exp(b.m - o.m);
        o.c = (at ? a.c : A(0)) + (bt ? b.c : A(0));
        o.r = (o.m != o.m) ? o.m : ra + rb;
        return o;
    }
    CUSOFT_DEV MaxCountRest shfl_xor(int lane_mask) const
    {
        MaxCountRest o;
        o.m = __shfl_xor_sync(kFullMask, m, lane_mask);
        o.c = __shfl_xor_sync(kFullMask, c, lane_mask);
        o.r = __shfl_xor_sync(kFullMask, r, lane_mask);
        return o;
    }
};

// Plain max / sum as "states" so the same group reductions serve every kernel.
template <typename A> struct MaxOp {
    A v;
    static CUSOFT_DEV MaxOp merge(const MaxOp& a, const MaxOp& b) { MaxOp o; o.v = nan_max(a.v, b.v); return o; }
    CUSOFT_DEV MaxOp shfl_xor(int lane_mask) const { MaxOp o; o.v = __shfl_xor_sync(kFullMask, v, lane_mask); return o; }
};
template <typename A> struct SumOp {
    A v;
    static CUSOFT_DEV SumOp merge(const SumOp& a, const SumOp& b) { SumOp o; o.v = a.v + b.v; return o; }
    CUSOFT_DEV SumOp shfl_xor(int lane_mask) const { SumOp o; o.v = __shfl_xor_sync(kFullMask, v, lane_mask); return o; }
};

// ---------------------------------------------------------------------------------------
// Warp and block reductions
// ---------------------------------------------------------------------------------------
CUSOFT_DEV int lane_id() { return (int)(threadIdx.x & (kWarp - 1)); }

// Butterfly over the full warp; each step merges (lower lane, higher lane) so both partners
// compute the same expression and every lane ends with the same bits.
template <typename S> CUSOFT_DEV S warp_reduce(S v)
{
    const int lane = lane_id();
#pragma unroll
    for (int off = kWarp / 2; off > 0; off >>= 1) {
        const S o = v.shfl_xor(off);
        v = (lane & off) ? S::merge(o, v) : S::merge(v, o);
    }
    return v;
}

// Block-wide reduction for a 1-D block (blockDim.x a multiple of 32, <= 1024).  scratch:
// kScratchBytes of shared memory.  Every thread returns the same value.  Contains two
// __syncthreads, so every thread of the block must call it; scratch is free again on return.
template <typename S> CUSOFT_DEV S block_reduce(S v, void* scratch)
{
    S* slots = reinterpret_cast<S*>(scratch);
    const int warp = (int)(threadIdx.x / kWarp);
    const int nwarps = (int)(blockDim.x / kWarp);
    v = warp_reduce(v);
    if (lane_id() == 0) slots[warp] = v;
    __syncthreads();
    S r = slots[0];
#pragma unroll 1
    for (int w = 1; w < nwarps; ++w) r = S::merge(r, slots[w]);
    __syncthreads();
    return r;
}

// ---------------------------------------------------------------------------------------
// 16-byte vector access with scalar head and tail
// ---------------------------------------------------------------------------------------
template <typename T> struct alignas(16) Pack {
    static constexpr int N = 16 / sizeof(T);
    T v[N];
};

// Elements before the first 16-byte boundary of p (p is element-aligned).
template <typename T> CUSOFT_DEV i64 head_elems(const T* p, i64 n)
{
    i64 h = (i64)(((u64)16 - ((u64)p & 15u)) & 15u) / (i64)sizeof(T);
    return h < n ? h : n;
}

// The round structure of visit_packs / visit_pack_pairs: per round, load(u, q) for each of
// its U packs q (a partial last round skips the missing ones), then use(u, q) for each.
// REV walks the packs from the end (thread rank takes nvec - 1 - rank, ...): a second pass
// over data read moments ago finds its most recently read part, the part still in L2, first.
template <int U, bool REV, typename L, typename F>
CUSOFT_DEV void pack_rounds(i64 nvec, int rank, int size, L&& load, F&& use)
{
#pragma unroll 1
    for (i64 p = rank; p < nvec; p += U * (i64)size) {
        // the last round may be partial: its loads are predicated, still issued together
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (u == 0 || p + u * (i64)size < nvec) {
                const i64 q = p + u * (i64)size;
                load(u, REV ? nvec - 1 - q : q);
            }
#pragma unroll
        for (int u = 0; u < U; ++u)
            if (u == 0 || p + u * (i64)size < nvec) {
                const i64 q = p + u * (i64)size;
                use(u, REV ? nvec - 1 - q : q);
            }
    }
}

// f(p, body[p]) for the packs p = rank, rank + size, ... < nvec, U at a time: all of a
// round's loads are issued before the first use, so each thread keeps U 16-byte loads in
// flight (a plain strided loop waits for every load before the next: one load in flight
// per thread, too few bytes to cover the memory latency).  f is inlined U times: callers
// with a heavy per-element body take the smaller PacksInFlight<T> (no spills under
// __launch_bounds__(512)).
template <typename T> struct PacksInFlight {
    static constexpr int value = sizeof(T) == 4 ? 4 : 1;
};
template <int U, bool REV = false, typename T, typename F>
CUSOFT_DEV void visit_packs(const Pack<T>* body, i64 nvec, int rank, int size, F&& f)
{
    Pack<T> pk[U];
    pack_rounds<U, REV>(
        nvec, rank, size, [&](int u, i64 q) { pk[u] = body[q]; }, [&](int u, i64 q) { f(q, pk[u]); });
}

// visit_packs over two arrays with the same phase: f(p, a[p], b[p]), 2U loads in flight.
template <int U, bool REV = false, typename T, typename F>
CUSOFT_DEV void visit_pack_pairs(const Pack<T>* a, const Pack<T>* b, i64 nvec, int rank, int size,
                                 F&& f)
{
    Pack<T> pa[U], pb[U];
    pack_rounds<U, REV>(
        nvec, rank, size,
        [&](int u, i64 q) {
            pa[u] = a[q];
            pb[u] = b[q];
        },
        [&](int u, i64 q) { f(q, pa[u], pb[u]); });
}

// Call f(j, x[j]) once for every j in [0, n), spread over threads rank..size-1 of a group.
// The 16-byte-aligned body is read with 128-bit loads; head and tail elementwise.
template <int U = 0, typename T, typename F>
CUSOFT_DEV void row_visit(const T* x, i64 n, int rank, int size, F&& f)
{
    constexpr int N = Pack<T>::N;
    const i64 h = head_elems(x, n);
#pragma unroll 1
    for (i64 j = rank; j < h; j += size) f(j, x[j]);
    const i64 nvec = (n - h) / N;
    visit_packs<U ? U : PacksInFlight<T>::value>(reinterpret_cast<const Pack<T>*>(x + h), nvec, rank, size,
                [&](i64 p, const Pack<T>& pk) {
#pragma unroll
                    for (int u = 0; u < N; ++u) f(h + p * N + u, pk.v[u]);
                });
#pragma unroll 1
    for (i64 j = h + nvec * N + rank; j < n; j += size) f(j, x[j]);
}

// y[j] = f(j, x[j]) for j in [0, n).  Vector loads and stores when x and y share their
// 16-byte phase (always true for out == x and for same-aligned allocations), else scalar.
// Safe when y aliases x: each element is read before it is written, by the same thread.
// REV: the body from its end (a re-read of a row or chunk a pass has just streamed).
template <int U = 0, bool REV = false, typename T, typename F>
CUSOFT_DEV void row_transform(const T* x, T* y, i64 n, int rank, int size, F&& f)
{
    constexpr int N = Pack<T>::N;
    if ((((u64)x ^ (u64)y) & 15u) != 0) {
#pragma unroll 1
        for (i64 j = rank; j < n; j += size) y[j] = f(j, x[j]);
        return;
    }
    const i64 h = head_elems(x, n);
#pragma unroll 1
    for (i64 j = rank; j < h; j += size) y[j] = f(j, x[j]);
    const i64 nvec = (n - h) / N;
    Pack<T>* yb = reinterpret_cast<Pack<T>*>(y + h);
    visit_packs<U ? U : PacksInFlight<T>::value, REV>(reinterpret_cast<const Pack<T>*>(x + h), nvec, rank, size,
                [&](i64 p, Pack<T> pk) {
#pragma unroll
                    for (int u = 0; u < N; ++u) pk.v[u] = f(h + p * N + u, pk.v[u]);
                    yb[p] = pk;
                });
#pragma unroll 1
    for (i64 j = h + nvec * N + rank; j < n; j += size) y[j] = f(j, x[j]);
}

// y[j] = g(j) for j in [0, n) with 128-bit stores on the aligned body of y.
template <typename T, typename G>
CUSOFT_DEV void row_store(T* y, i64 n, int rank, int size, G&& g)
{
    constexpr int N = Pack<T>::N;
    const i64 h = head_elems(y, n);
#pragma unroll 1
    for (i64 j = rank; j < h; j += size) y[j] = g(j);
    const i64 nvec = (n - h) / N;
    Pack<T>* yb = reinterpret_cast<Pack<T>*>(y + h);
#pragma unroll 1
    for (i64 p = rank; p < nvec; p += size) {
        Pack<T> pk;
#pragma unroll
        for (int u = 0; u < N; ++u) pk.v[u] = g(h + p * N + u);
        yb[p] = pk;
    }
#pragma unroll 1
    for (i64 j = h + nvec * N + rank; j < n; j += size) y[j] = g(j);
}

// ---------------------------------------------------------------------------------------
// Thread groups that own one row: a warp or a whole (1-D) block.  Kernels written against
// a group (rank, size, reduce) work unchanged for both.
// ---------------------------------------------------------------------------------------
struct WarpGroup {
    int rank, size;
    CUSOFT_DEV WarpGroup() : rank(lane_id()), size(kWarp) {}
    template <typename S> CUSOFT_DEV S reduce(S v) const { return warp_reduce(v); }
    CUSOFT_DEV void sync() const { __syncwarp(); }
};
struct BlockGroup {
    int rank, size;
    void* scratch;  // kScratchBytes of shared memory
    CUSOFT_DEV explicit BlockGroup(void* s) : rank((int)threadIdx.x), size((int)blockDim.x), scratch(s) {}
    template <typename S> CUSOFT_DEV S reduce(S v) const { return block_reduce(v, scratch); }
    CUSOFT_DEV void sync() const { __syncthreads(); }
};

// True on every thread when pred is true on any thread of the block (2-D blocks too).
// flag: one int of shared memory.  Three barriers: call it from every thread, rarely.
CUSOFT_DEV bool block_any(bool pred, int* flag)
{
    if (threadIdx.x == 0 && threadIdx.y == 0) *flag = 0;
    __syncthreads();
    if (pred) *flag = 1;
    __syncthreads();
    const bool any = *flag != 0;
    __syncthreads();
    return any;
}

}  // namespace cusoft

#endif  // CUSOFT_COMMON_CUH
