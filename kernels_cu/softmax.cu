// cusoft/kernels_cu/softmax.cu -- forward softmax / log_softmax, logsumexp and partials.
//
// Every kernel reads the canonical layout of cusoft/_backend.py: x is (outer, n, inner),
// reduced over n.  "rows" below is outer (row layout, inner == 1) or the (outer, inner)
// columns (column layout).  Which variant runs, with what grid, block and dynamic shared
// memory, is decided in one place: cusoft/_launch.py.
//
// Bytes moved per element (R = read, W = write of one element of x / y):
//
//   softmax_rowmax + softmax_expsum + softmax_divide           3R + 1W  ("3pass")
//       The baseline: three launches, intermediates (m, s) in device memory, one warp per
//       row with strided loads.  Kept as the reference point for the benchmarks and as the
//       simplest correct answer for any layout.
//   softmax_fwd_warp<T, LOG, K>                                1R + 1W
//       Short rows (n <= 32*K, K in {1,2,4,8,16,32}): one warp per row, the row lives in
//       registers (16-byte packs per lane when rows are aligned), two shuffle reductions;
//       several rows per block, no shared memory.
//   softmax_fwd_block<T, LOG>                                  1R + 1W
//       Medium rows that fit in shared memory: one block per row, the row is cached in
//       dynamic shared memory (at x's 16-byte phase) by the first read, four 16-byte loads
//       in flight per thread, so global memory is read once.
//   softmax_fwd_online<T, LOG>                                 2R + 1W
//       Long rows: one block per row, one online (max, sum-exp) pass, then a transform pass
//       that re-reads the row from its end (the part still in L2 first) and writes it.
//   softmax_fwd_split_stats<T> + softmax_fwd_split_apply<T,LOG> 2R + 1W
//       Few very long rows (outer small): each row is cut into chunks owned by different
//       blocks; pass 1 writes a partial (m, s) per chunk to a workspace, pass 2 merges the
//       row's partials (every block of a row merges them in the same order, so all agree to
//       the bit) and normalises its chunk, chunks and packs in the reverse of pass 1's order
//       (the part still in L2 first).  Two launches on one stream; no atomics.
//   softmax_fwd_col<T, LOG>                                     2R + 1W
//       Column layout (inner > 1): threadIdx.x walks inner so a warp reads contiguous
//       memory, threadIdx.y splits n; the (m, s) of each column are merged in shared memory.
//
//   logsumexp_{warp,block,col}<T>, logsumexp_split_stats<T> + logsumexp_split_finish<T>
//   partial_{warp,block,col}<T>,   (same stats kernel)      + partial_split_finish<T>
//       One online (m, c, r) pass (1R, plus b when given) with the same group skeletons;
//       logsumexp rows whose shifted result is not finite re-read the row for SciPy's
//       direct sum (rare: +-inf, NaN, all-dropped rows, overflow).
//
// Special values follow cusoft/_backend.py (SciPy is the oracle): see RowFinish and
// lse_from_state below.
#include "common.cuh"

// Kernels live in the global namespace so that name expressions stay short
// ("softmax_fwd_warp<float, true, 4>"); the helpers come from namespace cusoft.
using namespace cusoft;

// ---------------------------------------------------------------------------------------
// Per-row output rule of softmax / log_softmax, from the row max m and s = sum exp(x - m).
// ---------------------------------------------------------------------------------------
// exp(x - m) of one row.  float16 rows (FAST) take one exp2 of (x - m) log2(e): MUFU.EX2's
// ~2^-22 relative error and the rounding of the product (|x - m| <= ~25 where the result is
// not below half's range) stay ~3 orders under half's rounding; float and double rows keep
// the libm-accurate exp.
template <typename A, bool FAST> struct ExpShift {
    A m;
    CUSOFT_DEV explicit ExpShift(A m_) : m(m_) {}
    CUSOFT_DEV A operator()(A x) const
    {
        if (FAST) return exp2f((x - m) * A(1.4426950408889634));
        return cu_exp(x - m);
    }
};

template <typename T> struct FastExp { static constexpr bool value = false; };
template <> struct FastExp<__half> { static constexpr bool value = true; };

// The row maximum of the warp and block kernels ignores NaN (blind_max: one instruction per
// element).  A NaN still decides the row: with a finite maximum, exp(NaN - m) makes the sum
// and so every output NaN; with m = -inf (or all NaN) the row is NaN anyway (mode 1); with
// m = +inf, softmax is NaN (mode 1), and log_softmax, whose mode 2 ignores the sum, checks
// the row for a NaN (rare: only rows holding +inf) and takes m = NaN if it finds one.
template <typename A, bool LOG, bool FAST = false> struct RowFinish {
    A m, v;    // v = 1/s (softmax) or log(s) (log_softmax)
    int mode;  // 0: finite max; 1: every output NaN; 2: log_softmax with m == +inf
    CUSOFT_DEV RowFinish(A m_, A s_) : m(m_), v(A(0)), mode(1)
    {
        if (is_finite(m_)) {
            mode = 0;
            // One division per row, a multiply per element (<= 1 ulp from SciPy's e/s; an
            // IEEE divide per element also drags a slow-path subroutine into every loop).
            v = LOG ? cu_log(s_) : A(1) / s_;
        } else if (LOG && m_ == cu_inf<A>()) {
            mode = 2;  // SciPy shifts by 0 here: x - inf - log(inf) -> NaN at +inf, else -inf
        }
    }
    CUSOFT_DEV A operator()(A x) const
    {
        if (mode == 0) return LOG ? (x - m) - v : ExpShift<A, FAST>(m)(x) * v;
        if (mode == 2) return x == m ? cu_nan<A>() : -cu_inf<A>();
        return cu_nan<A>();
    }
    // softmax from e = exp(x - m) already computed (LOG == false)
    CUSOFT_DEV A from_exp(A e) const { return mode == 0 ? e * v : cu_nan<A>(); }
};

// =======================================================================================
// 3pass baseline (any layout; element j of row (o, i) sits at (o*n + j)*inner + i)
// =======================================================================================
template <typename T>
__global__ void CUSOFT_BOUNDS(256)
softmax_rowmax(const T* x, acc_t<T>* mws, i64 rows, i64 n, i64 inner)
{
    typedef acc_t<T> A;
    const i64 wpb = blockDim.x / kWarp;
    const int lane = lane_id();
    for (i64 row = blockIdx.x * wpb + threadIdx.x / kWarp; row < rows; row += (i64)gridDim.x * wpb) {
        const T* xr = x + (row / inner) * n * inner + row % inner;
        MaxOp<A> mx;
        mx.v = -cu_inf<A>();
#pragma unroll 1
        for (i64 j = lane; j < n; j += kWarp) mx.v = nan_max(mx.v, Traits<T>::load(xr[j * inner]));
        mx = warp_reduce(mx);
        if (lane == 0) mws[row] = mx.v;
    }
}

template <typename T>
__global__ void CUSOFT_BOUNDS(256)
softmax_expsum(const T* x, const acc_t<T>* mws, acc_t<T>* sws, i64 rows, i64 n, i64 inner)
{
    typedef acc_t<T> A;
    const i64 wpb = blockDim.x / kWarp;
    const int lane = lane_id();
    for (i64 row = blockIdx.x * wpb + threadIdx.x / kWarp; row < rows; row += (i64)gridDim.x * wpb) {
        const T* xr = x + (row / inner) * n * inner + row % inner;
        const A m = mws[row];
        SumOp<A> s;
        s.v = A(0);
#pragma unroll 1
        for (i64 j = lane; j < n; j += kWarp) s.v += cu_exp(Traits<T>::load(xr[j * inner]) - m);
        s = warp_reduce(s);
        if (lane == 0) sws[row] = s.v;
    }
}

template <typename T, bool LOG>
__global__ void CUSOFT_BOUNDS(512)
softmax_divide(const T* x, const acc_t<T>* mws, const acc_t<T>* sws, T* y, i64 total, i64 n, i64 inner)
{
    for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < total; idx += (i64)gridDim.x * blockDim.x) {
        const i64 row = (idx / (n * inner)) * inner + idx % inner;
        const RowFinish<acc_t<T>, LOG> fin(mws[row], sws[row]);
        y[idx] = Traits<T>::store(fin(Traits<T>::load(x[idx])));
    }
}

// =======================================================================================
// Fused row-layout softmax
// =======================================================================================
template <typename T, bool LOG, int K>
__global__ void CUSOFT_BOUNDS(256)
softmax_fwd_warp(const T* x, T* y, i64 rows, i64 n)
{
    typedef acc_t<T> A;
    constexpr int N = Pack<T>::N;
    // Whole 16-byte packs per lane where the width allows it and every row starts on a
    // 16-byte boundary (n a multiple of the pack, x aligned; y likewise for the stores):
    // lane l holds packs l, l + 32, ...  Otherwise lane-interleaved elements.  Either way
    // each load instruction of a warp reads contiguous memory.
    constexpr bool PACKS = K % N == 0;
    const bool vin = PACKS && n % N == 0 && ((u64)x & 15u) == 0;
    const bool vout = vin && ((u64)y & 15u) == 0;
    const i64 wpb = blockDim.x / kWarp;
    const int lane = lane_id();
    // element of register k in either layout
    auto at = [&](int k, bool packs) -> i64 {
        return packs ? ((i64)(k / N) * kWarp + lane) * N + k % N : (i64)k * kWarp + lane;
    };
    // Loop bounds are warp-uniform, so the shuffles below always see all 32 lanes.
    for (i64 row = blockIdx.x * wpb + threadIdx.x / kWarp; row < rows; row += (i64)gridDim.x * wpb) {
        const T* xr = x + row * n;
        T* yr = y + row * n;
        A v[K];
        MaxOp<A> mx;
        mx.v = -cu_inf<A>();
        if (PACKS && vin) {
#pragma unroll
            for (int k = 0; k < K; k += N) {
                const i64 j = at(k, true);
                Pack<T> pk;
                if (j < n) pk = *reinterpret_cast<const Pack<T>*>(xr + j);
#pragma unroll
                for (int u = 0; u < N; ++u) v[k + u] = j < n ? Traits<T>::load(pk.v[u]) : -cu_inf<A>();
            }
        } else {
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const i64 j = at(k, false);
                v[k] = j < n ? Traits<T>::load(xr[j]) : -cu_inf<A>();
            }
        }
#pragma unroll
        for (int k = 0; k < K; ++k) mx.v = blind_max(mx.v, v[k]);
        A m = warp_reduce(mx).v;
        if (LOG && m == cu_inf<A>()) {  // warp-uniform; see RowFinish
            bool nan = false;
#pragma unroll
            for (int k = 0; k < K; ++k) nan = nan || is_nan(v[k]);
            if (__any_sync(kFullMask, nan)) m = cu_nan<A>();
        }
        const ExpShift<A, FastExp<T>::value> ex(m);
        SumOp<A> s;
        s.v = A(0);
#pragma unroll
        for (int k = 0; k < K; ++k)
            if (at(k, vin) < n) {
                const A e = ex(v[k]);
                s.v += e;
                if (!LOG) v[k] = e;  // softmax keeps exp(x - m): one exp per element
            }
        const RowFinish<A, LOG, FastExp<T>::value> fin(m, warp_reduce(s).v);
        auto outv = [&](int k) { return Traits<T>::store(LOG ? fin(v[k]) : fin.from_exp(v[k])); };
        if (PACKS && vout) {
#pragma unroll
            for (int k = 0; k < K; k += N) {
                const i64 j = at(k, true);
                Pack<T> pk;
#pragma unroll
                for (int u = 0; u < N; ++u) pk.v[u] = outv(k + u);
                if (j < n) *reinterpret_cast<Pack<T>*>(yr + j) = pk;
            }
        } else {
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const i64 j = at(k, vin);
                if (j < n) yr[j] = outv(k);
            }
        }
    }
}

// Dynamic shared memory: kScratchBytes + n * sizeof(T) + 16.  The cache keeps x's 16-byte
// phase (element j at cache[pad + j], pad + h a multiple of the pack), so all three passes
// over the row move 16 bytes per instruction: global -> shared in the first (four packs in
// flight per thread), shared -> registers in the other two.
template <typename T, bool LOG>
__global__ void CUSOFT_BOUNDS(512)
softmax_fwd_block(const T* x, T* y, i64 rows, i64 n)
{
    typedef acc_t<T> A;
    constexpr int N = Pack<T>::N;
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * n;
        // the cache has x's 16-byte phase, so the row helpers take their 16-byte paths on it
        T* cache = reinterpret_cast<T*>(smem + kScratchBytes) + (N - head_elems(xr, n)) % N;
        MaxOp<A> mx;
        mx.v = -cu_inf<A>();
        row_transform<4>(xr, cache, n, g.rank, g.size, [&](i64, T v) {
            mx.v = blind_max(mx.v, Traits<T>::load(v));
            return v;
        });
        A m = g.reduce(mx).v;  // its barriers also publish the cache
        if (LOG && m == cu_inf<A>()) {  // block-uniform; see RowFinish
            bool nan = false;
#pragma unroll 1
            for (i64 j = g.rank; j < n; j += g.size) nan = nan || is_nan(Traits<T>::load(cache[j]));
            if (block_any(nan, reinterpret_cast<int*>(smem))) m = cu_nan<A>();
        }
        // softmax of float/double keeps exp(x - m) in the cache (the same values the output
        // pass would recompute; each thread rewrites only the elements it read, and the
        // reduction's barriers publish them to the output pass); float16 recomputes its
        // one-instruction exp, since the half cache would round it
        constexpr bool KEEP = !LOG && sizeof(T) == sizeof(A);
        const ExpShift<A, FastExp<T>::value> ex(m);
        SumOp<A> s;
        s.v = A(0);
        if (KEEP) {
            row_transform(cache, cache, n, g.rank, g.size, [&](i64, T v) {
                const A e = ex(Traits<T>::load(v));
                s.v += e;
                return Traits<T>::store(e);
            });
        } else {
            row_visit(cache, n, g.rank, g.size, [&](i64, T v) { s.v += ex(Traits<T>::load(v)); });
        }
        const RowFinish<A, LOG, FastExp<T>::value> fin(m, g.reduce(s).v);
        // 16-byte stores where y shares x's phase (row_transform checks), from the kept exp
        // or from x
        row_transform(cache, y + row * n, n, g.rank, g.size, [&](i64, T c) {
            return Traits<T>::store(KEEP ? fin.from_exp(Traits<T>::load(c)) : fin(Traits<T>::load(c)));
        });
        __syncthreads();  // the next row overwrites the cache
    }
}

// Dynamic shared memory: kScratchBytes.
template <typename T, bool LOG>
__global__ void CUSOFT_BOUNDS(512)
softmax_fwd_online(const T* x, T* y, i64 rows, i64 n)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const T* xr = x + row * n;
        MaxSum<A> st;
        st.init();
        row_visit(xr, n, g.rank, g.size, [&](i64, T v) { st.add(Traits<T>::load(v)); });
        st = g.reduce(st);  // every read of the row happens before this barrier (out may alias x)
        const RowFinish<A, LOG, FastExp<T>::value> fin(st.m, st.s);
        // the second read from the row's end: its last-read part is still in L2
        row_transform<0, true>(xr, y + row * n, n, g.rank, g.size,
                               [&](i64, T v) { return Traits<T>::store(fin(Traits<T>::load(v))); });
    }
}

// Chunk `c` of row `row` covers [c*chunk_len, min(n, (c+1)*chunk_len)).  ws: 2 values
// (m, s) per (row, chunk), row-major.  Dynamic shared memory: kScratchBytes.
template <typename T>
__global__ void CUSOFT_BOUNDS(512)
softmax_fwd_split_stats(const T* x, acc_t<T>* ws, i64 rows, i64 n, i64 chunks, i64 chunk_len)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    for (i64 b = blockIdx.x; b < rows * chunks; b += gridDim.x) {
        const i64 row = b / chunks, start = (b % chunks) * chunk_len;
        const i64 len = n - start < chunk_len ? n - start : chunk_len;
        MaxSum<A> st;
        st.init();
        row_visit(x + row * n + start, len, g.rank, g.size, [&](i64, T v) { st.add(Traits<T>::load(v)); });
        st = g.reduce(st);
        if (g.rank == 0) {
            ws[2 * b] = st.m;
            ws[2 * b + 1] = st.s;
        }
    }
}

template <typename T, bool LOG>
__global__ void CUSOFT_BOUNDS(512)
softmax_fwd_split_apply(const T* x, const acc_t<T>* ws, T* y, i64 rows, i64 n, i64 chunks, i64 chunk_len)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    // chunks and their packs in the reverse of the stats pass's order: what that pass read
    // last (still in L2 when the input outgrows it) is re-read first
    for (i64 b0 = blockIdx.x; b0 < rows * chunks; b0 += gridDim.x) {
        const i64 b = rows * chunks - 1 - b0;
        const i64 row = b / chunks, start = (b % chunks) * chunk_len;
        const i64 len = n - start < chunk_len ? n - start : chunk_len;
        MaxSum<A> st;
        st.init();
#pragma unroll 1
        for (i64 k = g.rank; k < chunks; k += g.size) {
            MaxSum<A> p;
            p.m = ws[2 * (row * chunks + k)];
            p.s = ws[2 * (row * chunks + k) + 1];
            st = MaxSum<A>::merge(st, p);
        }
        st = g.reduce(st);  // same inputs, same order in every block of the row
        const RowFinish<A, LOG, FastExp<T>::value> fin(st.m, st.s);
        row_transform<0, true>(x + row * n + start, y + row * n + start, len, g.rank, g.size,
                               [&](i64, T v) { return Traits<T>::store(fin(Traits<T>::load(v))); });
    }
}

// =======================================================================================
// Column layout (inner > 1).  Block (bx, by): x walks inner, y splits n.  Blocks loop over
// tiles = outer * ceil(inner / bx).  Dynamic shared memory: bx*by*sizeof(state) + 16.
// =======================================================================================
// Merge the states of the `by` threads that share threadIdx.x; all of them get the result.
template <typename S> CUSOFT_DEV S column_reduce(S v, S* slots)
{
    const int bx = (int)blockDim.x, by = (int)blockDim.y, tx = (int)threadIdx.x;
    slots[threadIdx.y * bx + tx] = v;
    __syncthreads();
    S r = slots[tx];
#pragma unroll 1
    for (int k = 1; k < by; ++k) r = S::merge(r, slots[k * bx + tx]);
    __syncthreads();
    return r;
}

template <typename T, bool LOG>
__global__ void CUSOFT_BOUNDS(512)
softmax_fwd_col(const T* x, T* y, i64 outer, i64 n, i64 inner)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(MaxSum<A>, slots);
    const i64 bx = blockDim.x, itiles = (inner + bx - 1) / bx;
    for (i64 t = blockIdx.x; t < outer * itiles; t += gridDim.x) {
        const i64 i = (t % itiles) * bx + threadIdx.x;
        const bool active = i < inner;
        const i64 base = (t / itiles) * n * inner + i;
        MaxSum<A> st;
        st.init();
        if (active)
#pragma unroll 1
            for (i64 j = threadIdx.y; j < n; j += blockDim.y) st.add(Traits<T>::load(x[base + j * inner]));
        st = column_reduce(st, slots);
        if (active) {
            const RowFinish<A, LOG> fin(st.m, st.s);
#pragma unroll 1
            for (i64 j = threadIdx.y; j < n; j += blockDim.y)
                y[base + j * inner] = Traits<T>::store(fin(Traits<T>::load(x[base + j * inner])));
        }
    }
}

// =======================================================================================
// logsumexp and partials: one online (m, c, r) pass with the weights b (has_b == 0: b is a
// placeholder and every weight is 1), then a per-op finish.
// =======================================================================================
template <typename T, typename G>
CUSOFT_DEV MaxCountRest<acc_t<T>> row_state(const T* xr, const T* br, int has_b, i64 n, const G& g)
{
    typedef acc_t<T> A;
    MaxCountRest<A> st;
    st.init();
    // x through the vectorised visitor, b (when given) elementwise: one loop nest for both
    // cases (two nests made ptxas spill in logsumexp_warp<float>).
    row_visit(xr, n, g.rank, g.size,
              [&](i64 j, T v) { st.add(Traits<T>::load(v), has_b ? Traits<T>::load(br[j]) : A(1)); });
    return st;
}

// SciPy's direct sum D = sum(b * exp(x)), unshifted, over the whole row (b == 0 included).
template <typename T, typename G>
CUSOFT_DEV acc_t<T> row_direct(const T* xr, const T* br, int has_b, i64 n, const G& g)
{
    typedef acc_t<T> A;
    SumOp<A> d;
    d.v = A(0);
#pragma unroll 1
    for (i64 j = g.rank; j < n; j += g.size)
        d.v += (has_b ? Traits<T>::load(br[j]) : A(1)) * cu_exp(Traits<T>::load(xr[j]));
    return g.reduce(d).v;
}

// The shifted logsumexp of SciPy from (m, c, r).  Returns false when the result is not
// finite, in which case the caller applies lse_direct with the row's direct sum.
template <typename A>
CUSOFT_DEV bool lse_from_state(const MaxCountRest<A>& st, int has_sign, A& out, A& sgn)
{
    A q = (st.r == A(0)) ? st.r : st.r / st.c;
    sgn = sign_of(q + A(1)) * sign_of(st.c);
    if (q < A(-1)) q = -q - A(2);
    out = cu_log1p(q) + cu_log(cu_abs(st.c)) + st.m;
    if (!has_sign && sgn < A(0)) out = cu_nan<A>();
    return is_finite(out);
}

template <typename A> CUSOFT_DEV void lse_direct(A d, int has_sign, A& out, A& sgn)
{
    if (has_sign) {
        out = cu_log(cu_abs(d));
        sgn = sign_of(d);
    } else {
        out = cu_log(d);
    }
}

// logsumexp of the rows owned by group g (a warp or a block): rows row0, row0+step, ...
// Pass 1 writes SciPy's shifted result.  A row whose result is not finite (and only such a
// row: the stored value is not finite exactly when the shifted one was not) is redone in
// pass 2 from the direct sum.  Keeping the rare re-read in its own loop keeps the main loop
// free of the extra divergent reduction, which made ptxas spill.
template <typename T, typename G>
CUSOFT_DEV void lse_rows(const T* x, const T* b, int has_b, T* out, T* sgn, int has_sign, i64 row0, i64 step,
                         i64 rows, i64 n, const G& g)
{
    typedef acc_t<T> A;
    for (i64 row = row0; row < rows; row += step) {
        const MaxCountRest<A> st = g.reduce(row_state(x + row * n, b + (has_b ? row * n : 0), has_b, n, g));
        A o, s;
        lse_from_state(st, has_sign, o, s);
        if (g.rank == 0) {
            out[row] = Traits<T>::store(o);
            if (has_sign) sgn[row] = Traits<T>::store(s);
        }
    }
    g.sync();  // publish rank 0's stores to the group
    for (i64 row = row0; row < rows; row += step) {
        if (is_finite(Traits<T>::load(out[row]))) continue;  // uniform over the group
        A o, s;
        lse_direct(row_direct(x + row * n, b + (has_b ? row * n : 0), has_b, n, g), has_sign, o, s);
        if (g.rank == 0) {
            out[row] = Traits<T>::store(o);
            if (has_sign) sgn[row] = Traits<T>::store(s);
        }
    }
}

template <typename T, typename G>
CUSOFT_DEV void partial_row(const T* x, const T* b, int has_b, acc_t<T>* pm, acc_t<T>* pc, acc_t<T>* pr, i64 row,
                            i64 n, const G& g)
{
    const T* br = b + (has_b ? row * n : 0);
    const MaxCountRest<acc_t<T>> st = g.reduce(row_state(x + row * n, br, has_b, n, g));
    if (g.rank == 0) {
        pm[row] = st.m;
        pc[row] = st.c;
        pr[row] = st.r;
    }
}

template <typename T>
__global__ void CUSOFT_BOUNDS(256)
logsumexp_warp(const T* x, const T* b, int has_b, T* out, T* sgn, int has_sign, i64 rows, i64 n)
{
    const WarpGroup g;
    const i64 wpb = blockDim.x / kWarp;
    lse_rows(x, b, has_b, out, sgn, has_sign, blockIdx.x * wpb + threadIdx.x / kWarp, (i64)gridDim.x * wpb, rows, n, g);
}

template <typename T>
__global__ void CUSOFT_BOUNDS(512)
logsumexp_block(const T* x, const T* b, int has_b, T* out, T* sgn, int has_sign, i64 rows, i64 n)
{
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    lse_rows(x, b, has_b, out, sgn, has_sign, blockIdx.x, gridDim.x, rows, n, g);
}

template <typename T>
__global__ void CUSOFT_BOUNDS(256)
partial_warp(const T* x, const T* b, int has_b, acc_t<T>* pm, acc_t<T>* pc, acc_t<T>* pr, i64 rows, i64 n)
{
    const WarpGroup g;
    const i64 wpb = blockDim.x / kWarp;
    for (i64 row = blockIdx.x * wpb + threadIdx.x / kWarp; row < rows; row += (i64)gridDim.x * wpb)
        partial_row(x, b, has_b, pm, pc, pr, row, n, g);
}

template <typename T>
__global__ void CUSOFT_BOUNDS(512)
partial_block(const T* x, const T* b, int has_b, acc_t<T>* pm, acc_t<T>* pc, acc_t<T>* pr, i64 rows, i64 n)
{
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) partial_row(x, b, has_b, pm, pc, pr, row, n, g);
}

// Split rows: ws holds 3 values (m, c, r) per (row, chunk).  Shared by logsumexp and partial.
template <typename T>
__global__ void CUSOFT_BOUNDS(512)
logsumexp_split_stats(const T* x, const T* b, int has_b, acc_t<T>* ws, i64 rows, i64 n, i64 chunks, i64 chunk_len)
{
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    for (i64 k = blockIdx.x; k < rows * chunks; k += gridDim.x) {
        const i64 row = k / chunks, start = (k % chunks) * chunk_len;
        const i64 len = n - start < chunk_len ? n - start : chunk_len;
        const i64 off = row * n + start;
        const MaxCountRest<acc_t<T>> st = g.reduce(row_state(x + off, b + (has_b ? off : 0), has_b, len, g));
        if (g.rank == 0) {
            ws[3 * k] = st.m;
            ws[3 * k + 1] = st.c;
            ws[3 * k + 2] = st.r;
        }
    }
}

template <typename T, typename G>
CUSOFT_DEV MaxCountRest<acc_t<T>> merge_chunks(const acc_t<T>* ws, i64 row, i64 chunks, const G& g)
{
    MaxCountRest<acc_t<T>> st;
    st.init();
#pragma unroll 1
    for (i64 k = g.rank; k < chunks; k += g.size) {
        MaxCountRest<acc_t<T>> p;
        p.m = ws[3 * (row * chunks + k)];
        p.c = ws[3 * (row * chunks + k) + 1];
        p.r = ws[3 * (row * chunks + k) + 2];
        st = MaxCountRest<acc_t<T>>::merge(st, p);
    }
    return g.reduce(st);
}

template <typename T>
__global__ void CUSOFT_BOUNDS(512)
logsumexp_split_finish(const T* x, const T* b, int has_b, const acc_t<T>* ws, T* out, T* sgn, int has_sign, i64 rows,
                       i64 n, i64 chunks)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const MaxCountRest<A> st = merge_chunks<T>(ws, row, chunks, g);
        A o, s;
        const bool ok = lse_from_state(st, has_sign, o, s);
        // rare: one block re-reads the whole row (an empty loop for the others, see lse_rows)
        const A d = row_direct(x + row * n, b + (has_b ? row * n : 0), has_b, ok ? 0 : n, g);
        if (!ok) lse_direct(d, has_sign, o, s);
        if (g.rank == 0) {
            out[row] = Traits<T>::store(o);
            if (has_sign) sgn[row] = Traits<T>::store(s);
        }
    }
}

template <typename T>
__global__ void CUSOFT_BOUNDS(512)
partial_split_finish(const acc_t<T>* ws, acc_t<T>* pm, acc_t<T>* pc, acc_t<T>* pr, i64 rows, i64 chunks)
{
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const MaxCountRest<acc_t<T>> st = merge_chunks<T>(ws, row, chunks, g);
        if (g.rank == 0) {
            pm[row] = st.m;
            pc[row] = st.c;
            pr[row] = st.r;
        }
    }
}

// Column layout.  Dynamic shared memory: bx*by*sizeof(MaxCountRest<acc>) + 16.
template <typename T>
CUSOFT_DEV MaxCountRest<acc_t<T>> col_state(const T* x, const T* b, int has_b, i64 base, i64 n, i64 inner, bool active,
                                            MaxCountRest<acc_t<T>>* slots)
{
    typedef acc_t<T> A;
    MaxCountRest<A> st;
    st.init();
    if (active)
#pragma unroll 1
        for (i64 j = threadIdx.y; j < n; j += blockDim.y)
            st.add(Traits<T>::load(x[base + j * inner]), has_b ? Traits<T>::load(b[base + j * inner]) : A(1));
    return column_reduce(st, slots);
}

template <typename T>
__global__ void CUSOFT_BOUNDS(512)
logsumexp_col(const T* x, const T* b, int has_b, T* out, T* sgn, int has_sign, i64 outer, i64 n, i64 inner)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(MaxCountRest<A>, slots);
    int* flag = reinterpret_cast<int*>(slots + blockDim.x * blockDim.y);
    const i64 bx = blockDim.x, itiles = (inner + bx - 1) / bx;
    for (i64 t = blockIdx.x; t < outer * itiles; t += gridDim.x) {
        const i64 o = t / itiles, i = (t % itiles) * bx + threadIdx.x;
        const bool active = i < inner;
        const i64 base = o * n * inner + i;
        const MaxCountRest<A> st = col_state(x, b, has_b, base, n, inner, active, slots);
        A res, s;
        const bool bad = !lse_from_state(st, has_sign, res, s) && active;
        // Columns of one block may disagree; the direct pass is a block-wide reduction, so
        // the whole block enters it when any column needs it.
        if (block_any(bad, flag)) {
            SumOp<A> d;
            d.v = A(0);
            if (bad)
#pragma unroll 1
                for (i64 j = threadIdx.y; j < n; j += blockDim.y)
                    d.v += (has_b ? Traits<T>::load(b[base + j * inner]) : A(1)) *
                           cu_exp(Traits<T>::load(x[base + j * inner]));
            d = column_reduce(d, reinterpret_cast<SumOp<A>*>(slots));
            if (bad) lse_direct(d.v, has_sign, res, s);
        }
        if (active && threadIdx.y == 0) {
            out[o * inner + i] = Traits<T>::store(res);
            if (has_sign) sgn[o * inner + i] = Traits<T>::store(s);
        }
    }
}

template <typename T>
__global__ void CUSOFT_BOUNDS(512)
partial_col(const T* x, const T* b, int has_b, acc_t<T>* pm, acc_t<T>* pc, acc_t<T>* pr, i64 outer, i64 n, i64 inner)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(MaxCountRest<A>, slots);
    const i64 bx = blockDim.x, itiles = (inner + bx - 1) / bx;
    for (i64 t = blockIdx.x; t < outer * itiles; t += gridDim.x) {
        const i64 o = t / itiles, i = (t % itiles) * bx + threadIdx.x;
        const bool active = i < inner;
        const MaxCountRest<A> st = col_state(x, b, has_b, o * n * inner + i, n, inner, active, slots);
        if (active && threadIdx.y == 0) {
            pm[o * inner + i] = st.m;
            pc[o * inner + i] = st.c;
            pr[o * inner + i] = st.r;
        }
    }
}

