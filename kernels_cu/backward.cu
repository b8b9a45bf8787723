// cusoft/kernels_cu/backward.cu -- gradients of softmax and log_softmax w.r.t. their input.
//
//   softmax:      out = y * (dy - sum(dy * y))      y = softmax output
//   log_softmax:  out = dy - exp(y) * sum(dy)        y = log_softmax output
//
// One template per layout with a LOG flag: the two rules differ only in the per-row sum
// and in the per-element formula (BwdRule below).  Layout and variant choice: cusoft/_launch.py
// (launch_backward).  Bytes moved per element (R = one read of y and of dy, W = one write):
//
//   softmax_bwd_warp<T, LOG, K>          1R + 1W
//       Short rows (n <= 32*K): one warp per row, y and dy live in registers, one shuffle
//       reduction; several rows per block, no shared memory.
//   softmax_bwd_block<T, LOG>            2R + 1W  (log_softmax: dy twice, y once)
//       Longer rows: one block per row; a reduction pass, then a transform pass that re-reads
//       the row (from L2 for all but huge rows).  128-bit loads when y, dy and out share
//       their 16-byte phase.
//   softmax_bwd_split_stats<T, LOG> + softmax_bwd_split_apply<T, LOG>     2R + 1W
//       Few very long rows: chunks of a row go to different blocks; pass 1 writes one partial
//       sum per chunk, pass 2 sums the row's partials in a fixed order (every block of a row
//       gets the same bits) and transforms its chunk.  Two launches, no atomics.
//   softmax_bwd_col<T, LOG>              2R + 1W
//       Column layout (inner > 1): threadIdx.x walks inner (coalesced), threadIdx.y splits n,
//       the per-column sums meet in shared memory.
//
// Aliasing (out may be y or dy): every variant reads all of a row (or, in the transform pass,
// the element it is about to overwrite, by the same thread) before it writes: the warp variant
// holds the row in registers, the others write only after the row's reduction, whose barriers
// (or the launch boundary, for split) order every read of the reduction pass before them.
#include "common.cuh"

using namespace cusoft;

// The per-row sum's term and the per-element output of each rule.
template <typename A, bool LOG> struct BwdRule {
    static CUSOFT_DEV A term(A y, A dy) { return LOG ? dy : dy * y; }
    static CUSOFT_DEV A out(A y, A dy, A s) { return LOG ? dy - cu_exp(y) * s : y * (dy - s); }
};

// f(j, a[j], b[j]) for j in [0, n), spread over threads rank..size-1.  128-bit loads of both
// arrays when they share their 16-byte phase (same-aligned allocations), else elementwise.
template <typename T, typename F>
CUSOFT_DEV void pair_visit(const T* a, const T* b, i64 n, int rank, int size, F&& f)
{
    constexpr int N = Pack<T>::N;
    const bool vec = ((((u64)a ^ (u64)b) & 15u) == 0);
    const i64 h = vec ? head_elems(a, n) : n;
#pragma unroll 1
    for (i64 j = rank; j < h; j += size) f(j, a[j], b[j]);
    const i64 nvec = (n - h) / N;
    visit_pack_pairs<PacksInFlight<T>::value>(
        reinterpret_cast<const Pack<T>*>(a + h), reinterpret_cast<const Pack<T>*>(b + h), nvec,
        rank, size, [&](i64 p, const Pack<T>& pa, const Pack<T>& pb) {
#pragma unroll
            for (int u = 0; u < N; ++u) f(h + p * N + u, pa.v[u], pb.v[u]);
        });
#pragma unroll 1
    for (i64 j = h + nvec * N + rank; j < n; j += size) f(j, a[j], b[j]);
}

// o[j] = f(a[j], b[j]) for j in [0, n); vectorised when a, b and o share their 16-byte phase.
// Each element is read and written by the same thread, so o may alias a or b.
template <typename T, typename F>
CUSOFT_DEV void pair_transform(const T* a, const T* b, T* o, i64 n, int rank, int size, F&& f)
{
    constexpr int N = Pack<T>::N;
    if (((((u64)a ^ (u64)b) | ((u64)a ^ (u64)o)) & 15u) != 0) {
#pragma unroll 1
        for (i64 j = rank; j < n; j += size) o[j] = f(a[j], b[j]);
        return;
    }
    const i64 h = head_elems(a, n);
#pragma unroll 1
    for (i64 j = rank; j < h; j += size) o[j] = f(a[j], b[j]);
    const i64 nvec = (n - h) / N;
    Pack<T>* ob = reinterpret_cast<Pack<T>*>(o + h);
    // the second pass over a and b: from the end, where the first pass left them in L2
    // (double rows keep the forward order: ptxas spilled 8 bytes of the reversed index
    // arithmetic in softmax_bwd_block<double, true> on sm_90)
    visit_pack_pairs<PacksInFlight<T>::value, sizeof(T) != 8>(
        reinterpret_cast<const Pack<T>*>(a + h), reinterpret_cast<const Pack<T>*>(b + h), nvec,
        rank, size, [&](i64 p, const Pack<T>& pa, const Pack<T>& pb) {
            Pack<T> po;
#pragma unroll
            for (int u = 0; u < N; ++u) po.v[u] = f(pa.v[u], pb.v[u]);
            ob[p] = po;
        });
#pragma unroll 1
    for (i64 j = h + nvec * N + rank; j < n; j += size) o[j] = f(a[j], b[j]);
}

// The row sum of rows [start, start + len) of one row, reduced over group g.
template <typename T, bool LOG, typename G>
CUSOFT_DEV acc_t<T> bwd_row_sum(const T* y, const T* dy, i64 len, const G& g)
{
    typedef acc_t<T> A;
    SumOp<A> s;
    s.v = A(0);
    if (LOG) {
        row_visit(dy, len, g.rank, g.size, [&](i64, T d) { s.v += Traits<T>::load(d); });
    } else {
        pair_visit(y, dy, len, g.rank, g.size,
                   [&](i64, T a, T b) { s.v += BwdRule<A, LOG>::term(Traits<T>::load(a), Traits<T>::load(b)); });
    }
    return g.reduce(s).v;
}

template <typename T, bool LOG>
CUSOFT_DEV void bwd_row_apply(const T* y, const T* dy, T* out, i64 len, acc_t<T> s, int rank, int size)
{
    typedef acc_t<T> A;
    pair_transform(y, dy, out, len, rank, size, [&](T a, T b) {
        return Traits<T>::store(BwdRule<A, LOG>::out(Traits<T>::load(a), Traits<T>::load(b), s));
    });
}

// =======================================================================================
// Row layout
// =======================================================================================
template <typename T, bool LOG, int K>
__global__ void CUSOFT_BOUNDS(256)
softmax_bwd_warp(const T* y, const T* dy, T* out, i64 rows, i64 n)
{
    typedef acc_t<T> A;
    const i64 wpb = blockDim.x / kWarp;
    const int lane = lane_id();
    // Loop bounds are warp-uniform, so the shuffles always see all 32 lanes.
    for (i64 row = blockIdx.x * wpb + threadIdx.x / kWarp; row < rows; row += (i64)gridDim.x * wpb) {
        const T* yr = y + row * n;
        const T* dr = dy + row * n;
        // Kept in the storage type: half rows take half the registers.
        T yv[K], dv[K];
        SumOp<A> s;
        s.v = A(0);
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const i64 j = (i64)k * kWarp + lane;  // lane-interleaved: coalesced loads
            if (j < n) {
                yv[k] = yr[j];
                dv[k] = dr[j];
                s.v += BwdRule<A, LOG>::term(Traits<T>::load(yv[k]), Traits<T>::load(dv[k]));
            }
        }
        const A tot = warp_reduce(s).v;  // all lanes' reads precede every write (aliasing)
        T* o = out + row * n;
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const i64 j = (i64)k * kWarp + lane;
            if (j < n)
                o[j] = Traits<T>::store(BwdRule<A, LOG>::out(Traits<T>::load(yv[k]), Traits<T>::load(dv[k]), tot));
        }
    }
}

// Dynamic shared memory: kScratchBytes.
template <typename T, bool LOG>
__global__ void CUSOFT_BOUNDS(512)
softmax_bwd_block(const T* y, const T* dy, T* out, i64 rows, i64 n)
{
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const acc_t<T> s = bwd_row_sum<T, LOG>(y + row * n, dy + row * n, n, g);
        bwd_row_apply<T, LOG>(y + row * n, dy + row * n, out + row * n, n, s, g.rank, g.size);
    }
}

// Chunk c of a row covers [c*chunk_len, min(n, (c+1)*chunk_len)); ws: one partial sum per
// (row, chunk), row-major.  Dynamic shared memory: kScratchBytes.
template <typename T, bool LOG>
__global__ void CUSOFT_BOUNDS(512)
softmax_bwd_split_stats(const T* y, const T* dy, acc_t<T>* ws, i64 rows, i64 n, i64 chunks, i64 chunk_len)
{
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    for (i64 b = blockIdx.x; b < rows * chunks; b += gridDim.x) {
        const i64 row = b / chunks, start = (b % chunks) * chunk_len;
        const i64 len = n - start < chunk_len ? n - start : chunk_len;
        const acc_t<T> s = bwd_row_sum<T, LOG>(y + row * n + start, dy + row * n + start, len, g);
        if (g.rank == 0) ws[b] = s;
    }
}

template <typename T, bool LOG>
__global__ void CUSOFT_BOUNDS(512)
softmax_bwd_split_apply(const T* y, const T* dy, const acc_t<T>* ws, T* out, i64 rows, i64 n, i64 chunks,
                        i64 chunk_len)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    for (i64 b = blockIdx.x; b < rows * chunks; b += gridDim.x) {
        const i64 row = b / chunks, start = (b % chunks) * chunk_len;
        const i64 len = n - start < chunk_len ? n - start : chunk_len;
        SumOp<A> s;
        s.v = A(0);
#pragma unroll 1
        for (i64 k = g.rank; k < chunks; k += g.size) s.v += ws[row * chunks + k];
        const A tot = g.reduce(s).v;  // same inputs, same order in every block of the row
        const i64 off = row * n + start;
        bwd_row_apply<T, LOG>(y + off, dy + off, out + off, len, tot, g.rank, g.size);
    }
}

// =======================================================================================
// Column layout (inner > 1).  Block (bx, by): x walks inner, y splits n; blocks loop over
// tiles = outer * ceil(inner / bx).  Dynamic shared memory: bx*by*sizeof(acc) + 16.
// =======================================================================================
template <typename T, bool LOG>
__global__ void CUSOFT_BOUNDS(512)
softmax_bwd_col(const T* y, const T* dy, T* out, i64 outer, i64 n, i64 inner)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(A, slots);
    const int bx = (int)blockDim.x, tx = (int)threadIdx.x;
    const i64 itiles = (inner + bx - 1) / bx;
    for (i64 t = blockIdx.x; t < outer * itiles; t += gridDim.x) {
        const i64 i = (t % itiles) * bx + tx;
        const bool active = i < inner;
        const i64 base = (t / itiles) * n * inner + i;
        A s = A(0);
        if (active)
#pragma unroll 1
            for (i64 j = threadIdx.y; j < n; j += blockDim.y)
                s += BwdRule<A, LOG>::term(Traits<T>::load(y[base + j * inner]), Traits<T>::load(dy[base + j * inner]));
        // Merge the by partial sums of a column in threadIdx.y order (every thread of the
        // column gets the same bits).
        slots[threadIdx.y * bx + tx] = s;
        __syncthreads();
        A tot = slots[tx];
#pragma unroll 1
        for (int k = 1; k < (int)blockDim.y; ++k) tot += slots[k * bx + tx];
        __syncthreads();  // the slots are reused by the next tile; all reads of y/dy are done
        if (active)
#pragma unroll 1
            for (i64 j = threadIdx.y; j < n; j += blockDim.y) {
                const i64 e = base + j * inner;
                out[e] = Traits<T>::store(BwdRule<A, LOG>::out(Traits<T>::load(y[e]), Traits<T>::load(dy[e]), tot));
            }
    }
}
