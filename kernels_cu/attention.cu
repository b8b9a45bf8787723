// attention.cu - fused scaled-dot-product attention forward, softmax(Q Kᵀ * scale + bias) V.
//
// One kernel template, attention_fwd<T, DB, BM, BN>, instantiated per storage dtype T
// (__half, float, double), head-dim bucket DB (32, 64, 128, 256: any runtime D, Dv <= DB
// works) and tile shape (BM query rows x BN keys), chosen in cusoft/_attention_launch.py, the
// one place that also computes the grid and the dynamic shared bytes.
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
// * FMA path only (no tensor cores), float16 converted to float32 on load; float32 and
//   float64 accumulate in their own precision.
// * Rows with every key masked keep m = -inf; the shift then uses 0 so -inf - -inf (NaN)
//   never happens, their l stays 0, and they are written as zeros with lse = -inf.
//
// Shared memory (A = accumulation type): Q [BM][DB], K or V [BN][DB + 1] (one buffer, reused:
// V is loaded after the logits of the tile are computed), P [BM][BN + 1], alpha [BM].  The +1
// pads keep the column-wise reads (K rows by lanes, P rows by the row threads) free of bank
// conflicts.  Threads: 128 (kThreads), a compile-time constant the launcher repeats;
// __launch_bounds__(128, 1) lets ptxas use up to 255 registers (without the 1 it capped the
// D = 256 float variant at 128 and spilled on sm_80).
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

template <typename A> ATTN_DEV A amax(A a, A b) { return a > b ? a : b; }

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
    constexpr int KLD = DB + 1;
    constexpr int PLD = BN + 1;
    static_assert(RS >= 1 && RS * NRS == BM && CS * TCS == BN, "logit tile must split evenly");
    static_assert(RO >= 1 && RO * NRO == BM && CO * TCO == DB, "output tile must split evenly");
    static_assert(BM <= NT, "one row-owner thread per query row");

    CUSOFT_DYN_SMEM(A, smem);
    A* sQ = smem;                  // [BM][DB]
    A* sKV = sQ + BM * DB;         // [BN][KLD]
    A* sP = sKV + BN * KLD;        // [BM][PLD]
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

    for (int idx = tid; idx < BM * DB; idx += NT) {
        const int r = idx / DB, d = idx % DB;
        sQ[idx] = (i0 + r < Lq && d < D) ? attn::to_acc(qp[static_cast<long long>(r) * D + d]) : A(0);
    }

    const int tsc = tid % TCS, tsr = tid / TCS;
    const int toc = tid % TCO, tor = tid / TCO;
    A acc[RO][CO];
#pragma unroll
    for (int i = 0; i < RO; ++i)
#pragma unroll
        for (int c = 0; c < CO; ++c) acc[i][c] = A(0);
    // the row owner's online state (threads tid < BM)
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

    for (int n0 = 0; n0 < kend; n0 += BN) {
        __syncthreads();  // the previous tile's P and V are no longer read
        for (int idx = tid; idx < BN * DB; idx += NT) {
            const int j = idx / DB, d = idx % DB;
            sKV[j * KLD + d] = (n0 + j < kend && d < D)
                ? attn::to_acc(kp[static_cast<long long>(n0 + j) * D + d]) : A(0);
        }
        __syncthreads();

        A s[RS][CS];
#pragma unroll
        for (int i = 0; i < RS; ++i)
#pragma unroll
            for (int c = 0; c < CS; ++c) s[i][c] = A(0);
        for (int d = 0; d < D; ++d) {
            A qv[RS], kv[CS];
#pragma unroll
            for (int i = 0; i < RS; ++i) qv[i] = sQ[(tsr + i * NRS) * DB + d];
#pragma unroll
            for (int c = 0; c < CS; ++c) kv[c] = sKV[(tsc + c * TCS) * KLD + d];
#pragma unroll
            for (int i = 0; i < RS; ++i)
#pragma unroll
                for (int c = 0; c < CS; ++c) s[i][c] += qv[i] * kv[c];
        }
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
        __syncthreads();  // logits in sP; K no longer needed

        for (int idx = tid; idx < BN * DB; idx += NT) {
            const int j = idx / DB, d = idx % DB;
            sKV[j * KLD + d] = (n0 + j < kend && d < Dv)
                ? attn::to_acc(vp[static_cast<long long>(n0 + j) * Dv + d]) : A(0);
        }
        if (tid < BM) {
            A* row = sP + tid * PLD;
            A mt = m_run;
            for (int j = 0; j < BN; ++j) mt = attn::amax(mt, row[j]);
            // a row that has seen only masked keys shifts by 0: exp2(-inf - 0) = 0, no NaN
            const A shift = mt == attn::neg_inf<A>() ? A(0) : mt;
            const A alpha = attn::fexp2(m_run - shift);
            A sum = A(0);
            for (int j = 0; j < BN; ++j) {
                const A p = attn::fexp2(row[j] - shift);
                row[j] = p;
                sum += p;
            }
            l_run = l_run * alpha + sum;
            m_run = mt;
            sAlpha[tid] = alpha;
        }
        __syncthreads();

        const int nvalid = kend - n0 < BN ? kend - n0 : BN;
#pragma unroll
        for (int i = 0; i < RO; ++i) {
            const A alpha = sAlpha[tor + i * NRO];
#pragma unroll
            for (int c = 0; c < CO; ++c) acc[i][c] *= alpha;
        }
        for (int j = 0; j < nvalid; ++j) {
            A vv[CO];
#pragma unroll
            for (int c = 0; c < CO; ++c) vv[c] = sKV[j * KLD + toc + c * TCO];
#pragma unroll
            for (int i = 0; i < RO; ++i) {
                const A p = sP[(tor + i * NRO) * PLD + j];
#pragma unroll
                for (int c = 0; c < CO; ++c) acc[i][c] += p * vv[c];
            }
        }
    }

    __syncthreads();
    if (tid < BM) {
        const bool seen = l_run > A(0);
        sAlpha[tid] = seen ? A(1) / l_run : A(0);
        if (has_lse && i0 + tid < Lq) {
            lse[static_cast<long long>(bh) * Lq + i0 + tid] =
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
