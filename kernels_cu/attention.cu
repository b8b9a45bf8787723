// attention.cu - fused scaled-dot-product attention forward, softmax(Q Kᵀ * scale + bias) V.
//
// Two families with one argument list, chosen in cusoft/_attention_launch.py (the one place
// that also computes the grid and the dynamic shared bytes), each instantiated per head-dim
// bucket DB (32, 64, 128, 256: any runtime D, Dv <= DB works) and tile shape (BM query rows x
// BN keys):
// * attention_fwd<T, DB, BM, BN>, CUDA cores, T = __half, float, double (this first part);
// * attention_fwd_tc<Ops, DB, BM, BN>, tensor cores, Ops = attn::HalfOps (mma.sync f16),
//   attn::Tf32x3Ops (float, 3xTF32) or attn::DmmaOps (double) (the second part, below).
//
// Why this shape:
// * A block owns BM query rows of one (batch, head); the Q tile is loaded once and stays in
//   shared memory while the block walks the K/V tiles, so the Lq x Lk logits never leave the
//   chip (device traffic: Q, O once; K, V once per query tile).
// * The online softmax state lives with the row: the running max m and sum l (in the log2
//   domain, logits pre-multiplied by scale*log2(e) so one exp2 does the work) are kept by the
//   thread that owns the row, the BM x Dv accumulator is spread over all threads' registers
//   and is rescaled by alpha = exp2(m_old - m_new) once per tile; it is normalised once, at
//   the end.
// * Causal: query i sees keys j <= i + (Lk - Lq) (aligned to the bottom-right corner); tiles
//   entirely above the diagonal are never visited (loop bound), only the tiles that straddle
//   it are masked element by element.
// * mask (uint8, non-zero = keep) and bias (T) are read through four element strides
//   (batch, head, row, key); a broadcast axis has stride 0, so a [1, 1, Lq, Lk] bias is read
//   from its own Lq x Lk memory by every head.
// * CUDA-core FMAs, float16 converted to float32 on load; float32 and float64 accumulate in
//   their own precision.
// * Rows with every key masked keep m = -inf; the shift then uses 0 so -inf - -inf (NaN)
//   never happens, their l stays 0, and they are written as zeros with lse = -inf.
//
// Shared memory (A = accumulation type, VE = 16 / sizeof(A)): Q [BM][DB], K or V
// [BN][DB + VE] (one buffer, reused: V is loaded after the logits of the tile are computed),
// P [BM][BN + VE], alpha [BM].  Both products read shared memory 16 bytes at a time along
// their summed index (d for Q Kᵀ, keys for P V): the Q and P rows a warp reads are one
// address for all its lanes (broadcasts), the K rows distinct and, thanks to the VE pad,
// in distinct bank groups.  That is VE times fewer shared loads per FMA than element loads
// (which made the FMA loop shared-memory bound).  Threads: 128 (kThreads), a compile-time
// constant the launcher repeats; __launch_bounds__(128, 1) lets ptxas use up to 255
// registers (without the 1 it capped the D = 256 float variant at 128 and spilled on sm_80).
//
// Compiles under NVRTC (CuPy RawModule, cuda_fp16.h only under __CUDACC__) and under a host
// C++ compiler with cusoft/simt/simt.h force-included.

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define ATTN_DEV __device__ __forceinline__
#else
#define ATTN_DEV inline
#endif

#if defined(__CUDACC__) && !defined(CUSOFT_DYN_SMEM)
// One untyped extern array: declaring it with a different element type per instantiation
// would not compile under nvcc.
#define CUSOFT_DYN_SMEM(type, name)                                                       \
    extern __shared__ __align__(16) unsigned char cusoft_dyn_smem_[];                     \
    type* name = reinterpret_cast<type*>(cusoft_dyn_smem_)
#endif

namespace attn {

static constexpr int kThreads = 128;

template <typename T> struct AccOf { typedef float type; };
template <> struct AccOf<double> { typedef double type; };

ATTN_DEV float to_acc(__half x) { return __half2float(x); }
ATTN_DEV float to_acc(float x) { return x; }
ATTN_DEV double to_acc(double x) { return x; }

ATTN_DEV void store(__half* p, float x) { *p = __float2half_rn(x); }
ATTN_DEV void store(float* p, float x) { *p = x; }
ATTN_DEV void store(double* p, double x) { *p = x; }

ATTN_DEV float fexp2(float x) { return exp2f(x); }
ATTN_DEV double fexp2(double x) { return exp2(x); }
ATTN_DEV float flog2(float x) { return log2f(x); }
ATTN_DEV double flog2(double x) { return log2(x); }

template <typename A> ATTN_DEV A neg_inf();
#ifdef __CUDACC__
template <> ATTN_DEV float neg_inf<float>() { return __int_as_float(0xff800000); }
template <> ATTN_DEV double neg_inf<double>() {
    return __longlong_as_double(static_cast<long long>(0xfff0000000000000ULL));
}
#else
template <> ATTN_DEV float neg_inf<float>() { return -__builtin_huge_valf(); }
template <> ATTN_DEV double neg_inf<double>() { return -__builtin_huge_val(); }
#endif

// NaN-ignoring maximum (one FMNMX for float); a NaN logit still reaches its row's output
// through exp2(NaN - shift) in the sum
ATTN_DEV float amax(float a, float b) { return fmaxf(a, b); }
ATTN_DEV double amax(double a, double b) { return fmax(a, b); }

// 16 bytes of A from shared memory (16-byte aligned): 4 floats or 2 doubles
template <typename A> struct Vec16;
template <> struct Vec16<float> {
    static constexpr int N = 4;
    typedef float4 V;
    static ATTN_DEV float4 zero() { return make_float4(0.f, 0.f, 0.f, 0.f); }
    static ATTN_DEV void load(float (&r)[4], const float* p) {
        const float4 v = *reinterpret_cast<const float4*>(p);
        r[0] = v.x; r[1] = v.y; r[2] = v.z; r[3] = v.w;
    }
};
template <> struct Vec16<double> {
    static constexpr int N = 2;
    typedef double2 V;
    static ATTN_DEV double2 zero() { return make_double2(0.0, 0.0); }
    static ATTN_DEV void load(double (&r)[2], const double* p) {
        const double2 v = *reinterpret_cast<const double2*>(p);
        r[0] = v.x; r[1] = v.y;
    }
};

// cp.async.cg 16 bytes global -> shared, zero-filled when !valid (nothing is read then).
ATTN_DEV void cp_async16(void* dst, const void* src, bool valid)
{
#ifdef __CUDACC__
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(addr), "l"(src), "r"(valid ? 16 : 0));
#else
    cusoft_simt::cp_async(dst, src, 16, valid ? 16 : 0);
#endif
}

ATTN_DEV void cp_async_commit()
{
#ifdef __CUDACC__
    asm volatile("cp.async.commit_group;\n" ::);
#else
    cusoft_simt::cp_async_commit();
#endif
}

// waits until every committed group of this thread but the newest N has landed
template <int N>
ATTN_DEV void cp_async_wait()
{
#ifdef __CUDACC__
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N));
#else
    cusoft_simt::cp_async_wait(N);
#endif
}

ATTN_DEV __half zero_of(__half) { return __float2half_rn(0.0f); }
ATTN_DEV float zero_of(float) { return 0.0f; }
ATTN_DEV double zero_of(double) { return 0.0; }

// x as the shared tile's type: half stays half (tensor cores), else the accumulation type
template <typename A, typename T> ATTN_DEV A load_as(T x) { return to_acc(x); }
template <> ATTN_DEV __half load_as<__half, __half>(__half x) { return x; }

// Starts filling rows [0, NROWS) x columns [0, DB) of a shared tile of A (row stride LD, a
// multiple of 16 bytes) from src (row stride ncols): `valid` rows of `ncols` columns, zeros
// elsewhere.  Where the tile keeps the storage type (float, double, and half for the tensor
// cores), ncols holds whole 16-byte vectors and src is 16-byte aligned, the copy is
// asynchronous (cp.async, 16 bytes per thread and instruction, a compile-time trip count);
// otherwise element by element (half -> float for the CUDA cores), done on return.  Either
// way one cp.async group is committed: the caller waits (cp_async_wait) and syncs before
// reading the tile.
template <typename T, typename A, int DB, int LD, int NROWS>
ATTN_DEV void fill_rows(A* dst, const T* src, int valid, int ncols, int tid)
{
    constexpr int NT = kThreads;
    constexpr int VE = 16 / sizeof(A);
    if (sizeof(T) == sizeof(A) && ncols % VE == 0 &&
        (reinterpret_cast<unsigned long long>(src) & 15ull) == 0) {
        constexpr int CH = DB / VE;
        constexpr int ITERS = (NROWS * CH + NT - 1) / NT;
#pragma unroll 4
        for (int it = 0; it < ITERS; ++it) {
            const int idx = tid + it * NT;
            if ((NROWS * CH) % NT != 0 && idx >= NROWS * CH) break;
            const int r = idx / CH, c = (idx - r * CH) * VE;
            const bool ok = r < valid && c < ncols;
            cp_async16(dst + r * LD + c, ok ? src + static_cast<long long>(r) * ncols + c : src, ok);
        }
    } else {
        const A zero = zero_of(A());
        for (int idx = tid; idx < NROWS * DB; idx += NT) {
            const int r = idx / DB, d = idx - r * DB;
            dst[r * LD + d] = (r < valid && d < ncols)
                ? load_as<A>(src[static_cast<long long>(r) * ncols + d]) : zero;
        }
    }
    cp_async_commit();
}

}  // namespace attn

// q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), out (B, Hq, Lq, Dv): C-contiguous.
// lse (B, Hq, Lq) in the accumulation type, natural log, written when has_lse.
// mask/bias: element (b, h, i, j) at b*s0 + h*s1 + i*s2 + j*s3, read when has_mask/has_bias.
// Grid: x = b * Hq + h, y = query tile.  Block: kThreads.
template <typename T, int DB, int BM, int BN>
__global__ void __launch_bounds__(128, 1)
attention_fwd(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
              const unsigned char* __restrict__ mask, const T* __restrict__ bias,
              T* __restrict__ out, typename attn::AccOf<T>::type* __restrict__ lse,
              int Hq, int Hkv, int Lq, int Lk, int D, int Dv,
              typename attn::AccOf<T>::type scale_log2, int causal,
              int has_mask, int has_bias, int has_lse,
              long long ms0, long long ms1, long long ms2, long long ms3,
              long long bs0, long long bs1, long long bs2, long long bs3)
{
    typedef typename attn::AccOf<T>::type A;
    constexpr int NT = attn::kThreads;
    // logits: each thread owns RS rows x CS keys, lanes of a warp walk consecutive keys
    constexpr int TCS = BN < 32 ? BN : 32;
    constexpr int NRS = NT / TCS;
    constexpr int RS = BM / NRS;
    constexpr int CS = BN / TCS;
    // accumulator: each thread owns RO rows x CO output columns
    constexpr int TCO = DB < 32 ? DB : 32;
    constexpr int NRO = NT / TCO;
    constexpr int RO = BM / NRO;
    constexpr int CO = DB / TCO;
    // shared reads are 16 bytes wide (VE elements) along d (Q, K) and along keys (P); the
    // VE pad keeps every row 16-byte aligned and puts the eight rows a quarter-warp reads in
    // eight different bank groups
    constexpr int VE = attn::Vec16<A>::N;
    constexpr int KLD = DB + VE;
    constexpr int PLD = BN + VE;
    static_assert(DB % VE == 0 && BN % VE == 0, "rows must hold whole 16-byte vectors");
    static_assert(RS >= 1 && RS * NRS == BM && CS * TCS == BN, "logit tile must split evenly");
    static_assert(RO >= 1 && RO * NRO == BM && CO * TCO == DB, "output tile must split evenly");

    CUSOFT_DYN_SMEM(A, smem);
    A* sQ = smem;                  // [BM][DB]
    A* sK = sQ + BM * DB;          // [BN][KLD]
    A* sV = sK + BN * KLD;         // [BN][KLD]
    A* sP = sV + BN * KLD;         // [BM][PLD]
    A* sAlpha = sP + BM * PLD;     // [BM]

    const int tid = threadIdx.x;
    const int bh = blockIdx.x;
    const int b = bh / Hq;
    const int h = bh - b * Hq;
    const int hk = h / (Hq / Hkv);
    const int i0 = blockIdx.y * BM;
    const int offset = Lk - Lq;

    const T* qp = q + (static_cast<long long>(bh) * Lq + i0) * D;
    const T* kp = k + (static_cast<long long>(b) * Hkv + hk) * Lk * D;
    const T* vp = v + (static_cast<long long>(b) * Hkv + hk) * Lk * Dv;
    const unsigned char* mp = mask + (has_mask ? b * ms0 + h * ms1 : 0);
    const T* bp = bias + (has_bias ? b * bs0 + h * bs1 : 0);

    attn::fill_rows<T, A, DB, DB, BM>(sQ, qp, Lq - i0, D, tid);

    const int tsc = tid % TCS, tsr = tid / TCS;
    const int toc = tid % TCO, tor = tid / TCO;
    A acc[RO][CO];
#pragma unroll
    for (int i = 0; i < RO; ++i)
#pragma unroll
        for (int c = 0; c < CO; ++c) acc[i][c] = A(0);
    // the online softmax state: TPR adjacent lanes share a query row (row tid / TPR), each
    // walking every TPR-th key of the tile; the TPR copies of (m_run, l_run) stay equal
    constexpr int TPR = NT / BM;
    static_assert(TPR * BM == NT && TPR <= 32 && (TPR & (TPR - 1)) == 0,
                  "threads per row: a power of two within a warp");
    const int srow = tid / TPR, ssub = tid % TPR;
    A m_run = attn::neg_inf<A>();
    A l_run = A(0);

    // keys a query of this tile can see: the causal bound skips whole tiles above the diagonal
    int kend = Lk;
    if (causal) {
        const int last = i0 + BM - 1 < Lq - 1 ? i0 + BM - 1 : Lq - 1;
        kend = last + offset + 1 < Lk ? last + offset + 1 : Lk;
        if (kend < 0) kend = 0;
    }
    const A log2e = A(1.4426950408889634);

    // Pipeline (float/double tiles, where fill_rows is cp.async): Q and the first K tile are
    // in flight before the loop; V of a tile loads while Q Kᵀ, the masking and the softmax
    // run, and the next K tile while the softmax and P V run.  half tiles convert on the way
    // in, so theirs are plain loads done before fill_rows returns.
    if (kend > 0) attn::fill_rows<T, A, DB, KLD, BN>(sK, kp, kend, D, tid);
    for (int n0 = 0; n0 < kend; n0 += BN) {
        attn::cp_async_wait<0>();
        __syncthreads();  // K (and Q) landed for every thread; the last P V is done with sV, sP
        attn::fill_rows<T, A, DB, KLD, BN>(sV, vp + static_cast<long long>(n0) * Dv, kend - n0, Dv, tid);

        A s[RS][CS];
#pragma unroll
        for (int i = 0; i < RS; ++i)
#pragma unroll
            for (int c = 0; c < CS; ++c) s[i][c] = A(0);
        // VE values of d at a time: each thread's K rows as 16-byte loads, then each Q row
        // (the same address for the whole warp: a broadcast) against them.  d runs past D to
        // the next multiple of VE over the zero padding.
        for (int d0 = 0; d0 < D; d0 += VE) {
            A kv[CS][VE];
#pragma unroll
            for (int c = 0; c < CS; ++c) attn::Vec16<A>::load(kv[c], sK + (tsc + c * TCS) * KLD + d0);
#pragma unroll
            for (int i = 0; i < RS; ++i) {
                A qv[VE];
                attn::Vec16<A>::load(qv, sQ + (tsr + i * NRS) * DB + d0);
#pragma unroll
                for (int e = 0; e < VE; ++e)
#pragma unroll
                    for (int c = 0; c < CS; ++c) s[i][c] += qv[e] * kv[c][e];
            }
        }
        // tiles with every key valid and no mask or bias only scale (one path, apart from
        // the per-element rule below, which the compiler would otherwise interleave with it)
        const bool plain = !has_mask && !has_bias && n0 + BN <= kend &&
                           (!causal || n0 + BN - 1 <= i0 + offset);
        if (plain) {
#pragma unroll
            for (int i = 0; i < RS; ++i)
#pragma unroll
                for (int c = 0; c < CS; ++c)
                    sP[(tsr + i * NRS) * PLD + tsc + c * TCS] = s[i][c] * scale_log2;
        } else {
#pragma unroll
            for (int i = 0; i < RS; ++i) {
                const int r = tsr + i * NRS;
                const int qi = i0 + r;
#pragma unroll
                for (int c = 0; c < CS; ++c) {
                    const int cj = tsc + c * TCS;
                    const int kj = n0 + cj;
                    bool keep = qi < Lq && kj < kend && (!causal || kj <= qi + offset);
                    if (keep && has_mask) keep = mp[qi * ms2 + kj * ms3] != 0;
                    A val = s[i][c] * scale_log2;
                    if (keep && has_bias) val += attn::to_acc(bp[qi * bs2 + kj * bs3]) * log2e;
                    sP[r * PLD + cj] = keep ? val : attn::neg_inf<A>();
                }
            }
        }
        __syncthreads();  // logits in sP; every warp is done with sK

        const bool more = n0 + BN < kend;
        if (more)
            attn::fill_rows<T, A, DB, KLD, BN>(sK, kp + static_cast<long long>(n0 + BN) * D,
                                               kend - n0 - BN, D, tid);
        {
            // every thread: BN / TPR keys of one row, then the max and the sum over the TPR
            // lanes of the row by xor shuffles (the groups are aligned, so they stay inside)
            A* row = sP + srow * PLD;
            A mt = m_run;
#pragma unroll 8
            for (int j = ssub; j < BN; j += TPR) mt = attn::amax(mt, row[j]);
#pragma unroll
            for (int w = 1; w < TPR; w <<= 1) mt = attn::amax(mt, __shfl_xor_sync(0xffffffffu, mt, w));
            // a row that has seen only masked keys shifts by 0: exp2(-inf - 0) = 0, no NaN
            const A shift = mt == attn::neg_inf<A>() ? A(0) : mt;
            const A alpha = attn::fexp2(m_run - shift);
            A sum = A(0);
#pragma unroll 8
            for (int j = ssub; j < BN; j += TPR) {
                const A p = attn::fexp2(row[j] - shift);
                row[j] = p;
                sum += p;
            }
#pragma unroll
            for (int w = 1; w < TPR; w <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, w);
            l_run = l_run * alpha + sum;
            m_run = mt;
            if (ssub == 0) sAlpha[srow] = alpha;
        }
        if (more)
            attn::cp_async_wait<1>();  // this tile's V (the next K may still be in flight)
        else
            attn::cp_async_wait<0>();
        __syncthreads();  // probabilities, alpha and V visible to every warp

        const int nvalid = kend - n0 < BN ? kend - n0 : BN;
#pragma unroll
        for (int i = 0; i < RO; ++i) {
            const A alpha = sAlpha[tor + i * NRO];
#pragma unroll
            for (int c = 0; c < CO; ++c) acc[i][c] *= alpha;
        }
        // VE keys at a time: the V rows of this thread's columns, then each P row (a warp
        // broadcast) as one 16-byte load.  Keys past nvalid have p = 0 and zero V rows.
        for (int j0 = 0; j0 < nvalid; j0 += VE) {
            A vv[VE][CO];
#pragma unroll
            for (int e = 0; e < VE; ++e)
#pragma unroll
                for (int c = 0; c < CO; ++c) vv[e][c] = sV[(j0 + e) * KLD + toc + c * TCO];
#pragma unroll
            for (int i = 0; i < RO; ++i) {
                A p[VE];
                attn::Vec16<A>::load(p, sP + (tor + i * NRO) * PLD + j0);
#pragma unroll
                for (int e = 0; e < VE; ++e)
#pragma unroll
                    for (int c = 0; c < CO; ++c) acc[i][c] += p[e] * vv[e][c];
            }
        }
    }

    attn::cp_async_wait<0>();  // kend == 0: Q was never waited for
    __syncthreads();
    if (ssub == 0) {
        const bool seen = l_run != A(0);  // NaN (a NaN logit) is seen: NaN out
        sAlpha[srow] = seen ? A(1) / l_run : A(0);
        if (has_lse && i0 + srow < Lq) {
            lse[static_cast<long long>(bh) * Lq + i0 + srow] =
                seen ? (m_run + attn::flog2(l_run)) * A(0.6931471805599453) : attn::neg_inf<A>();
        }
    }
    __syncthreads();
    T* op = out + (static_cast<long long>(bh) * Lq + i0) * Dv;
#pragma unroll
    for (int i = 0; i < RO; ++i) {
        const int r = tor + i * NRO;
        if (i0 + r >= Lq) continue;
        const A inv = sAlpha[r];
#pragma unroll
        for (int c = 0; c < CO; ++c) {
            const int d = toc + c * TCO;
            if (d < Dv) attn::store(op + static_cast<long long>(r) * Dv + d, acc[i][c] * inv);
        }
    }
}

// ---- tensor cores ----------------------------------------------------------------------------------
//
// attention_fwd_tc<Ops, DB, BM, BN>: one kernel with the arguments of attention_fwd<T, ...>
// that runs both products on tensor cores, FlashAttention-2 style; Ops picks the instructions:
// * HalfOps (float16): PTX mma.sync m16n8k16, half inputs, float accumulation.  P is rounded
//   to half before P V (as FlashAttention does).
// * DmmaOps (float64): mma.sync m8n8k4 (DMMA), IEEE float64 fused multiply-adds.
// * Tf32x3Ops (float32): mma.sync m16n8k8 on tf32 operands, each float
//   x split as big = tf32(x) + small = tf32(x - big), a b ~ big·big + big·small + small·big
//   (the dropped small·small is ~2^-22 of a b): float32 accuracy at tensor-core speed (the
//   "3xTF32" of CUTLASS, which PyTorch's float32 SDPA also uses on sm_80+).
// Common shape:
// * 4 warps; warp w owns query rows [16 MT w, 16 MT (w + 1)) of the block's BM = 64 MT rows, as
//   MT m16 tiles.  The logits S = Q Kᵀ of a (16 x BN) tile and the (16 x DB) output accumulator
//   live in registers in the mma accumulator layout: lane (g, t) = (lane / 4, lane % 4) holds
//   rows g and g + 8, columns 2t and 2t + 1 of every n8 tile, so the row max and row sum need
//   only the four lanes of a quad (two xor shuffles), and P is turned into the A operand of
//   P V in registers, never stored (half: two n8 logit tiles are one k16 step; tf32: one n8
//   tile is one k8 step whose k index is permuted, k = t <-> key 2t, k = t + 4 <-> key 2t + 1,
//   and V's rows are read in the same order).
// * Q, K, V tiles are staged in shared memory in the storage type; rows padded (half: DB + 8,
//   16-byte aligned for ldmatrix with the eight rows of one 8x8 matrix in eight bank groups;
//   float: DB + 4, so the fragment reads of a warp, rows g / columns t or rows 2t / columns g,
//   hit 32 different banks).  Tiles arrive by cp.async (16-byte chunks): V overlaps Q Kᵀ and
//   the softmax, the next K overlaps P V; ragged or misaligned rows fall back to element loads.
// * Everything else is the FMA kernel's rule: log2-domain online softmax with the max shift
//   (never exp of an unshifted logit), causal tiles above the diagonal skipped, masks and biases
//   through broadcast strides, zero padding for ragged D / Lq / Lk, fully masked rows -> zeros
//   and lse = -inf.  The row sum l is kept per lane and summed over the quad at the end.
// The PTX primitives (mma, ldmatrix, cvt.rna.tf32, cp.async) are the only lines a host compiler
// cannot run: under the SIMT harness they are replaced by its emulation of the same fragment
// layouts and rounding (cusoft/simt/simt.h), so the layout logic of these kernels runs there.

namespace attn {

ATTN_DEV void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1)
{
#ifdef __CUDACC__
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    const unsigned b[2] = {b0, b1};
    cusoft_simt::mma_m16n8k16_f32f16(d, a, b);
#endif
}

// d += a b, m16n8k8 on tf32 operands (a: A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4];
// b: B[t][g], B[t+4][g])
ATTN_DEV void mma1688(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1)
{
#ifdef __CUDACC__
    asm volatile(
        "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    const unsigned b[2] = {b0, b1};
    cusoft_simt::mma_m16n8k8_f32tf32(d, a, b);
#endif
}

// (d0, d1) += a b, m8n8k4 in double (a: A[g][t]; b: B[t][g]; d: D[g][2t], D[g][2t+1])
ATTN_DEV void mma884(double& d0, double& d1, double a, double b)
{
#ifdef __CUDACC__
    asm volatile("mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64 {%0, %1}, {%2}, {%3}, {%0, %1};\n"
                 : "+d"(d0), "+d"(d1) : "d"(a), "d"(b));
#else
    cusoft_simt::mma_m8n8k4_f64(d0, d1, a, b);
#endif
}

// x rounded to tf32 (10 mantissa bits, to nearest, ties away), as the bits of a float
ATTN_DEV unsigned to_tf32(float x)
{
#ifdef __CUDACC__
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
#else
    return cusoft_simt::cvt_rna_tf32(x);
#endif
}

// x = big + small, both tf32
ATTN_DEV void split_tf32(float x, unsigned& big, unsigned& small)
{
    big = to_tf32(x);
    small = to_tf32(x - __uint_as_float(big));
}

// r[j] = this lane's pair of 8x8 matrix j; `row` is the shared address of the row this lane
// supplies (lane 8j + r: row r of matrix j).
ATTN_DEV void ldsm_x4(unsigned (&r)[4], const __half* row)
{
#ifdef __CUDACC__
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
#else
    cusoft_simt::ldmatrix_x4(r, row, false);
#endif
}

ATTN_DEV void ldsm_x4_trans(unsigned (&r)[4], const __half* row)
{
#ifdef __CUDACC__
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
#else
    cusoft_simt::ldmatrix_x4(r, row, true);
#endif
}

// two floats -> packed half pair, lo in the low 16 bits (the operand order of mma)
ATTN_DEV unsigned pack_half2(float lo, float hi)
{
    const unsigned short l = __half_as_ushort(__float2half_rn(lo));
    const unsigned short h = __half_as_ushort(__float2half_rn(hi));
    return static_cast<unsigned>(l) | (static_cast<unsigned>(h) << 16);
}


// two adjacent outputs (p 2-element aligned)
ATTN_DEV void store2(__half* p, float a, float b) { *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b); }
ATTN_DEV void store2(float* p, float a, float b) { *reinterpret_cast<float2*>(p) = make_float2(a, b); }
ATTN_DEV void store2(double* p, double a, double b) { *reinterpret_cast<double2*>(p) = make_double2(a, b); }

// Where one block stands: what the logit masking and the epilogue need.
template <typename T, typename Acc>
struct TcTile {
    int i0, n0, kend, offset, Lq, causal, has_mask, has_bias;
    const unsigned char* mp;
    const T* bp;
    long long ms2, ms3, bs2, bs3;
    Acc scale_log2;
};

// Masks the logits of a non-plain (MT x 16) x (NS x 8) accumulator tile and takes them to the
// log2 domain (masked -> -inf, bias added after the scale).  Plain tiles (every key valid,
// nothing masked, no bias, scale > 0) are left raw: online_softmax scales them inside its
// exp2 argument.  The index-only rule (ragged edges, causal diagonal) and the loads of mask
// and bias are separate passes, so a tile without mask or bias runs no loads or 64-bit
// address arithmetic.
template <typename T, typename Acc, int MT, int NS>
ATTN_DEV void scale_and_mask(Acc (&s)[MT][NS][4], const TcTile<T, Acc>& tl, int wrow, int g, int t)
{
    const Acc log2e = Acc(1.4426950408889634);
    const Acc ninf = neg_inf<Acc>();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int n = 0; n < NS; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int qi = tl.i0 + wrow + mt * 16 + g + 8 * (e >> 1);
                const int kj = tl.n0 + n * 8 + 2 * t + (e & 1);
                const bool keep = qi < tl.Lq && kj < tl.kend && (!tl.causal || kj <= qi + tl.offset);
                s[mt][n][e] = keep ? s[mt][n][e] * tl.scale_log2 : ninf;
            }
    if (!tl.has_mask && !tl.has_bias) return;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            const int qi = tl.i0 + wrow + mt * 16 + g + 8 * hr;
            if (qi >= tl.Lq) continue;  // already -inf
            const unsigned char* mrow = tl.mp + qi * tl.ms2;
            const T* brow = tl.bp + qi * tl.bs2;
#pragma unroll
            for (int n = 0; n < NS; ++n)
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                    Acc& val = s[mt][n][2 * hr + c];
                    const int kj = tl.n0 + n * 8 + 2 * t + c;
                    if (kj >= tl.kend || (tl.causal && kj > qi + tl.offset)) continue;  // -inf
                    if (tl.has_mask && mrow[kj * tl.ms3] == 0) val = ninf;
                    else if (tl.has_bias) val += to_acc(brow[kj * tl.bs3]) * log2e;
                }
        }
}

// The online softmax step of one logit tile: row max over the quad, rescale of the running sum
// and of the output accumulator, s <- exp2(mul * s - shift).  Rows g (e = 0, 1), g + 8
// (e = 2, 3).  mul > 0 takes raw logits to the log2 domain (scale * log2 e; plain tiles) or
// is 1 (tiles scale_and_mask took there): the maximum commutes with a positive multiplier
// (rounding is monotone), and the scale rides in the exp2 argument as one fused multiply-add.
template <typename Acc, int MT, int NS, int NO>
ATTN_DEV void online_softmax(Acc (&s)[MT][NS][4], Acc (&o)[MT][NO][4], Acc (&m_run)[MT][2],
                             Acc (&l_run)[MT][2], Acc mul)
{
    const Acc ninf = neg_inf<Acc>();
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            Acc mx = s[mt][0][2 * hr];
            mx = amax(mx, s[mt][0][2 * hr + 1]);
#pragma unroll
            for (int n = 1; n < NS; ++n) {
                mx = amax(mx, s[mt][n][2 * hr]);
                mx = amax(mx, s[mt][n][2 * hr + 1]);
            }
            mx = amax(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = amax(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            mx = amax(m_run[mt][hr], mx * mul);
            // a row that has seen only masked keys shifts by 0: exp2(-inf - 0) = 0, no NaN
            const Acc shift = mx == ninf ? Acc(0) : mx;
            const Acc alpha = fexp2(m_run[mt][hr] - shift);
            Acc sum = Acc(0);
#pragma unroll
            for (int n = 0; n < NS; ++n)
#pragma unroll
                for (int e = 2 * hr; e < 2 * hr + 2; ++e) {
                    const Acc p = fexp2(fma(s[mt][n][e], mul, -shift));
                    s[mt][n][e] = p;
                    sum += p;
                }
            l_run[mt][hr] = l_run[mt][hr] * alpha + sum;
            m_run[mt][hr] = mx;
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                o[mt][n][2 * hr] *= alpha;
                o[mt][n][2 * hr + 1] *= alpha;
            }
        }
}

// Normalises the accumulator once (the quad's partial sums make the row sum) and writes the
// block's rows of out (and lse).
template <typename T, typename Acc, int MT, int NO>
ATTN_DEV void write_rows(const Acc (&o)[MT][NO][4], const Acc (&m_run)[MT][2],
                         const Acc (&l_run)[MT][2], T* out, Acc* lse, int bh, int i0, int Lq,
                         int Dv, int has_lse, int wrow, int g, int t)
{
    T* op = out + (static_cast<long long>(bh) * Lq + i0) * Dv;
    // a lane's two adjacent columns go out as one 4- (half), 8- (float) or 16-byte store when every
    // row start is aligned to it
    const bool pairs = Dv % 2 == 0 &&
        reinterpret_cast<unsigned long long>(out) % (2 * sizeof(T)) == 0;
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
            Acc l = l_run[mt][hr];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const int r = wrow + mt * 16 + g + 8 * hr;
            if (i0 + r >= Lq) continue;
            const bool seen = l != Acc(0);  // 0 only when every key was masked; NaN is seen
            const Acc inv = seen ? Acc(1) / l : Acc(0);
            if (has_lse && t == 0)
                lse[static_cast<long long>(bh) * Lq + i0 + r] =
                    seen ? (m_run[mt][hr] + flog2(l)) * Acc(0.6931471805599453) : neg_inf<Acc>();
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                const int d = n * 8 + 2 * t;
                T* dst = op + static_cast<long long>(r) * Dv + d;
                if (pairs && d + 1 < Dv) {
                    store2(dst, o[mt][n][2 * hr] * inv, o[mt][n][2 * hr + 1] * inv);
                } else {
                    if (d < Dv) store(dst, o[mt][n][2 * hr] * inv);
                    if (d + 1 < Dv) store(dst + 1, o[mt][n][2 * hr + 1] * inv);
                }
            }
        }
}

}  // namespace attn (reopened below for the operand ops)

// The one tensor-core kernel: tiles, pipeline, masking, softmax, epilogue.  Ops supplies the
// storage and accumulation types, the shared row padding and the two products (qk: S += Q Kᵀ
// of one key tile; pv: O += P V): attn::HalfOps (float16, lse float32), attn::Tf32x3Ops
// (float32) or attn::DmmaOps (float64).  Arguments as attention_fwd.
template <class Ops, int DB, int BM, int BN>
__global__ void __launch_bounds__(128, 1)
attention_fwd_tc(const typename Ops::T* __restrict__ q, const typename Ops::T* __restrict__ k,
                       const typename Ops::T* __restrict__ v, const unsigned char* __restrict__ mask,
                       const typename Ops::T* __restrict__ bias, typename Ops::T* __restrict__ out,
                       typename Ops::Acc* __restrict__ lse, int Hq, int Hkv, int Lq, int Lk, int D, int Dv,
                       typename Ops::Acc scale_log2, int causal, int has_mask, int has_bias, int has_lse,
                       long long ms0, long long ms1, long long ms2, long long ms3,
                       long long bs0, long long bs1, long long bs2, long long bs3)
{
    using namespace attn;
    typedef typename Ops::T T;
    typedef typename Ops::Acc Acc;
    constexpr int NW = kThreads / 32;
    constexpr int MT = BM / (16 * NW);  // m16 tiles per warp
    constexpr int NS = BN / 8;          // n8 logit tiles per m16 tile
    constexpr int NO = DB / 8;          // n8 output tiles
    constexpr int LD = DB + Ops::kPad;
    static_assert(MT >= 1 && MT * 16 * NW == BM, "BM must be 64 x (m16 tiles per warp)");
    static_assert(BN % 16 == 0 && DB % 16 == 0, "tiles are multiples of 16");

    CUSOFT_DYN_SMEM(T, smem);
    T* sQ = smem;            // [BM][LD]
    T* sK = sQ + BM * LD;    // [BN][LD]
    T* sV = sK + BN * LD;    // [BN][LD]

    const int tid = threadIdx.x;
    const int lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int bh = blockIdx.x;
    const int b = bh / Hq;
    const int h = bh - b * Hq;
    const int hk = h / (Hq / Hkv);
    const int wrow = warp * 16 * MT;

    TcTile<T, Acc> tl;
    tl.i0 = blockIdx.y * BM;
    tl.offset = Lk - Lq;
    tl.Lq = Lq;
    tl.causal = causal;
    tl.has_mask = has_mask;
    tl.has_bias = has_bias;
    tl.mp = mask + (has_mask ? b * ms0 + h * ms1 : 0);
    tl.bp = bias + (has_bias ? b * bs0 + h * bs1 : 0);
    tl.ms2 = ms2; tl.ms3 = ms3; tl.bs2 = bs2; tl.bs3 = bs3;
    tl.scale_log2 = scale_log2;
    const int i0 = tl.i0;

    const T* qp = q + (static_cast<long long>(bh) * Lq + i0) * D;
    const T* kp = k + (static_cast<long long>(b) * Hkv + hk) * Lk * D;
    const T* vp = v + (static_cast<long long>(b) * Hkv + hk) * Lk * Dv;

    Acc o[MT][NO][4];
    Acc m_run[MT][2], l_run[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int n = 0; n < NO; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) o[mt][n][e] = Acc(0);
        m_run[mt][0] = m_run[mt][1] = neg_inf<Acc>();
        l_run[mt][0] = l_run[mt][1] = Acc(0);
    }

    // keys a query of this tile can see: the causal bound skips whole tiles above the diagonal
    int kend = Lk;
    if (causal) {
        const int last = i0 + BM - 1 < Lq - 1 ? i0 + BM - 1 : Lq - 1;
        kend = last + tl.offset + 1 < Lk ? last + tl.offset + 1 : Lk;
        if (kend < 0) kend = 0;
    }
    tl.kend = kend;

    // Pipeline (FlashAttention-2's): Q and the first K tile are in flight before the loop; in
    // the loop, V of this tile loads while Q Kᵀ and the softmax run, and K of the next tile
    // while P V runs.  One buffer each: the barrier before a load orders it after every warp's
    // last read of the buffer.
    fill_rows<T, T, DB, LD, BM>(sQ, qp, Lq - i0, D, tid);
    if (kend > 0) fill_rows<T, T, DB, LD, BN>(sK, kp, kend < BN ? kend : BN, D, tid);
    for (int n0 = 0; n0 < kend; n0 += BN) {
        const int nvalid = kend - n0 < BN ? kend - n0 : BN;
        tl.n0 = n0;
        cp_async_wait<0>();
        __syncthreads();  // K (and Q) landed for every thread; no warp still reads sV
        fill_rows<T, T, DB, LD, BN>(sV, vp + static_cast<long long>(n0) * Dv, nvalid, Dv, tid);

        Acc s[MT][NS][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt)
#pragma unroll
            for (int n = 0; n < NS; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) s[mt][n][e] = Acc(0);
        Ops::template qk<DB, LD, MT, NS>(s, sQ, sK, wrow, lane);

        const bool plain = !has_mask && !has_bias && n0 + BN <= kend &&
                           (!causal || n0 + BN - 1 <= i0 + tl.offset) && scale_log2 > Acc(0);
        if (!plain) scale_and_mask<T, Acc, MT, NS>(s, tl, wrow, g, t);
        online_softmax<Acc, MT, NS, NO>(s, o, m_run, l_run, plain ? scale_log2 : Acc(1));

        cp_async_wait<0>();
        __syncthreads();  // V landed; no warp still reads sK
        if (n0 + BN < kend) {
            const int nnext = kend - n0 - BN < BN ? kend - n0 - BN : BN;
            fill_rows<T, T, DB, LD, BN>(sK, kp + static_cast<long long>(n0 + BN) * D, nnext, D, tid);
        }
        Ops::template pv<DB, LD, MT, NS, NO>(o, s, sV, lane);
    }
    cp_async_wait<0>();  // kend == 0: Q was never waited for
    write_rows<T, Acc, MT, NO>(o, m_run, l_run, out, lse, bh, i0, Lq, Dv, has_lse, wrow, g, t);
}

namespace attn {

// float16: m16n8k16, fragments by ldmatrix.  Q row lane % 16, column block lane / 16; K
// (B operand, n-major) row lane % 8 + 8 (lane / 16), column block (lane / 8) % 2; V (B operand,
// k-major, .trans) row lane % 8 + 8 ((lane / 8) % 2), column block lane / 16.
struct HalfOps {
    typedef __half T;
    typedef float Acc;
    static constexpr int kPad = 8;  // shared row padding, elements

    template <int DB, int LD, int MT, int NS>
    static ATTN_DEV void qk(float (&s)[MT][NS][4], const __half* sQ, const __half* sK, int wrow,
                            int lane)
    {
        const __half* qrow = sQ + (wrow + (lane & 15)) * LD + 8 * (lane >> 4);
        const __half* krow = sK + ((lane & 7) + 8 * (lane >> 4)) * LD + 8 * ((lane >> 3) & 1);
#pragma unroll
        for (int kk = 0; kk < DB / 16; ++kk) {
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) ldsm_x4(a[mt], qrow + mt * 16 * LD + kk * 16);
#pragma unroll
            for (int np = 0; np < NS / 2; ++np) {
                unsigned bk[4];
                ldsm_x4(bk, krow + np * 16 * LD + kk * 16);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma16816(s[mt][2 * np], a[mt], bk[0], bk[1]);
                    mma16816(s[mt][2 * np + 1], a[mt], bk[2], bk[3]);
                }
            }
        }
    }

    // logit tiles 2kp, 2kp + 1 (rounded to half) are the A operand of k16 step kp
    template <int DB, int LD, int MT, int NS, int NO>
    static ATTN_DEV void pv(float (&o)[MT][NO][4], const float (&p)[MT][NS][4], const __half* sV,
                            int lane)
    {
        const __half* vrow = sV + ((lane & 7) + 8 * ((lane >> 3) & 1)) * LD + 8 * (lane >> 4);
#pragma unroll
        for (int kp = 0; kp < NS / 2; ++kp) {
            unsigned a[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                a[mt][0] = pack_half2(p[mt][2 * kp][0], p[mt][2 * kp][1]);
                a[mt][1] = pack_half2(p[mt][2 * kp][2], p[mt][2 * kp][3]);
                a[mt][2] = pack_half2(p[mt][2 * kp + 1][0], p[mt][2 * kp + 1][1]);
                a[mt][3] = pack_half2(p[mt][2 * kp + 1][2], p[mt][2 * kp + 1][3]);
            }
#pragma unroll
            for (int np = 0; np < NO / 2; ++np) {
                unsigned bv[4];
                ldsm_x4_trans(bv, vrow + kp * 16 * LD + np * 16);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma16816(o[mt][2 * np], a[mt], bv[0], bv[1]);
                    mma16816(o[mt][2 * np + 1], a[mt], bv[2], bv[3]);
                }
            }
        }
    }
};

// float32: m16n8k8 3xTF32, fragments by 32-bit shared loads, split on the fly.
struct Tf32x3Ops {
    typedef float T;
    typedef float Acc;
    static constexpr int kPad = 4;

    // d += a b to float accuracy from the big/small halves of both operands
    static ATTN_DEV void mma3(float (&d)[4], const unsigned (&ab)[4], const unsigned (&as)[4],
                              unsigned b0b, unsigned b1b, unsigned b0s, unsigned b1s)
    {
        mma1688(d, as, b0b, b1b);
        mma1688(d, ab, b0s, b1s);
        mma1688(d, ab, b0b, b1b);
    }

    template <int DB, int LD, int MT, int NS>
    static ATTN_DEV void qk(float (&s)[MT][NS][4], const float* sQ, const float* sK, int wrow,
                            int lane)
    {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll 2
        for (int kk = 0; kk < DB / 8; ++kk) {
            unsigned ab[MT][4], as[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const float* qr = sQ + (wrow + mt * 16 + g) * LD + kk * 8 + t;
                split_tf32(qr[0], ab[mt][0], as[mt][0]);
                split_tf32(qr[8 * LD], ab[mt][1], as[mt][1]);
                split_tf32(qr[4], ab[mt][2], as[mt][2]);
                split_tf32(qr[8 * LD + 4], ab[mt][3], as[mt][3]);
            }
#pragma unroll
            for (int n = 0; n < NS; ++n) {
                const float* kr = sK + (n * 8 + g) * LD + kk * 8 + t;
                unsigned b0b, b0s, b1b, b1s;
                split_tf32(kr[0], b0b, b0s);
                split_tf32(kr[4], b1b, b1s);
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) mma3(s[mt][n], ab[mt], as[mt], b0b, b1b, b0s, b1s);
            }
        }
    }

    // logit tile j is the A operand of k8 step j with k = t <-> key 2t, k = t + 4 <-> key 2t + 1
    // (this lane's own accumulator elements); V's rows are read in that order
    template <int DB, int LD, int MT, int NS, int NO>
    static ATTN_DEV void pv(float (&o)[MT][NO][4], const float (&p)[MT][NS][4], const float* sV,
                            int lane)
    {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int j = 0; j < NS; ++j) {
            unsigned ab[MT][4], as[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                split_tf32(p[mt][j][0], ab[mt][0], as[mt][0]);  // row g, key 2t
                split_tf32(p[mt][j][2], ab[mt][1], as[mt][1]);  // row g + 8, key 2t
                split_tf32(p[mt][j][1], ab[mt][2], as[mt][2]);  // row g, key 2t + 1
                split_tf32(p[mt][j][3], ab[mt][3], as[mt][3]);  // row g + 8, key 2t + 1
            }
            const float* vr = sV + (j * 8 + 2 * t) * LD + g;
#pragma unroll
            for (int n = 0; n < NO; ++n) {
                unsigned b0b, b0s, b1b, b1s;
                split_tf32(vr[n * 8], b0b, b0s);       // key 2t, column n*8 + g
                split_tf32(vr[LD + n * 8], b1b, b1s);  // key 2t + 1
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) mma3(o[mt][n], ab[mt], as[mt], b0b, b1b, b0s, b1s);
            }
        }
    }
};


// float64: m8n8k4 (DMMA), two per m16 tile (rows g and g + 8 of the accumulator layout), so the
// block loop is the same; fragments by 8-byte shared loads.  P V permutes keys as Tf32x3Ops
// does, one k4 step per parity: k = t <-> key 2t (then 2t + 1) of an n8 logit tile.
struct DmmaOps {
    typedef double T;
    typedef double Acc;
    static constexpr int kPad = 2;  // 16-byte rows; fragment reads at the 2-wavefront minimum

    template <int DB, int LD, int MT, int NS>
    static ATTN_DEV void qk(double (&s)[MT][NS][4], const double* sQ, const double* sK, int wrow,
                            int lane)
    {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll 4
        for (int kk = 0; kk < DB / 4; ++kk) {
            double at[MT], ab[MT];
#pragma unroll
            for (int mt = 0; mt < MT; ++mt) {
                const double* qr = sQ + (wrow + mt * 16 + g) * LD + kk * 4 + t;
                at[mt] = qr[0];
                ab[mt] = qr[8 * LD];
            }
#pragma unroll
            for (int n = 0; n < NS; ++n) {
                const double b = sK[(n * 8 + g) * LD + kk * 4 + t];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt) {
                    mma884(s[mt][n][0], s[mt][n][1], at[mt], b);
                    mma884(s[mt][n][2], s[mt][n][3], ab[mt], b);
                }
            }
        }
    }

    template <int DB, int LD, int MT, int NS, int NO>
    static ATTN_DEV void pv(double (&o)[MT][NO][4], const double (&p)[MT][NS][4], const double* sV,
                            int lane)
    {
        const int g = lane >> 2, t = lane & 3;
#pragma unroll
        for (int j = 0; j < NS; ++j)
#pragma unroll
            for (int par = 0; par < 2; ++par) {
                const double* vr = sV + (j * 8 + 2 * t + par) * LD + g;
#pragma unroll
                for (int n = 0; n < NO; ++n) {
                    const double b = vr[n * 8];  // key 2t + par, column n*8 + g
#pragma unroll
                    for (int mt = 0; mt < MT; ++mt) {
                        mma884(o[mt][n][0], o[mt][n][1], p[mt][j][par], b);      // row g
                        mma884(o[mt][n][2], o[mt][n][3], p[mt][j][2 + par], b);  // row g + 8
                    }
                }
            }
    }
};

}  // namespace attn
