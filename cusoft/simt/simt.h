// simt.h - lets CUDA C kernel source compile with a host C++17 compiler so the cusoft SIMT
// harness can run it on the CPU.  Force-included (g++ -include simt.h) in front of the kernel
// source; kernels need no edits.  The runtime half (fibers, barriers, warp exchange, the
// launch server) lives in simt_runtime.cpp.
//
// Emulation model, in short: every CUDA thread of a block is a fiber on one OS thread; a fiber
// runs until it reaches __syncthreads, a warp intrinsic or its end, and then another fiber,
// chosen in a seeded shuffled order, runs.  Blocks run one after another.
#ifndef CUSOFT_SIMT_H
#define CUSOFT_SIMT_H

#ifdef __CUDACC__
#error "simt.h is for host compilers; nvcc/NVRTC builds must not include it"
#endif

#define CUSOFT_SIMT 1

// Standard headers first: the keyword macros below must not leak into them.  <math.h> (the
// libstdc++ wrapper) also puts the float overloads (expf-style exp(float), fabs(float), isnan...)
// in the global namespace, like CUDA's device math library.  No <cstdint>: CUDA sources often
// declare their own fixed-width typedefs, which would then clash with glibc's.
#include <math.h>
#include <stdio.h>
#include <assert.h>
#include <string.h>
#include <cmath>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

// ---- keywords ----------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __builtin_align__(n) __attribute__((aligned(n)))
// Static __shared__ variables become function statics: one instance per kernel instantiation,
// shared by every fiber of the block (and, unlike on a GPU, kept from one block to the next).
#define __shared__ static
// __restrict__ is a GNU C++ keyword already.

namespace cusoft_simt {
void* dynamic_smem();
}

// Dynamic shared memory.  On CUDA kernels_cu/common.cuh defines this as
// `extern __shared__ __align__(16) type name[]`; here it is a pointer to the launch's
// shared_mem bytes (a separate heap block, so reads/writes past shared_mem are ASan errors).
#ifndef CUSOFT_DYN_SMEM
#define CUSOFT_DYN_SMEM(type, name) type* name = reinterpret_cast<type*>(::cusoft_simt::dynamic_smem())
#endif

// ---- vector types ------------------------------------------------------------------------------
#define CUSOFT_SIMT_VEC1(T, N, A)                                                               \
    struct __attribute__((aligned(A))) N##1 { T x; };                                           \
    inline N##1 make_##N##1(T x) { N##1 r; r.x = x; return r; }
#define CUSOFT_SIMT_VEC2(T, N, A)                                                               \
    struct __attribute__((aligned(A))) N##2 { T x, y; };                                        \
    inline N##2 make_##N##2(T x, T y) { N##2 r; r.x = x; r.y = y; return r; }
#define CUSOFT_SIMT_VEC3(T, N)                                                                  \
    struct N##3 { T x, y, z; };                                                                 \
    inline N##3 make_##N##3(T x, T y, T z) { N##3 r; r.x = x; r.y = y; r.z = z; return r; }
#define CUSOFT_SIMT_VEC4(T, N, A)                                                               \
    struct __attribute__((aligned(A))) N##4 { T x, y, z, w; };                                  \
    inline N##4 make_##N##4(T x, T y, T z, T w) {                                               \
        N##4 r; r.x = x; r.y = y; r.z = z; r.w = w; return r; }
#define CUSOFT_SIMT_VECS(T, N, S)                                                               \
    CUSOFT_SIMT_VEC1(T, N, S)                                                                   \
    CUSOFT_SIMT_VEC2(T, N, (2 * S > 16 ? 16 : 2 * S))                                           \
    CUSOFT_SIMT_VEC3(T, N)                                                                      \
    CUSOFT_SIMT_VEC4(T, N, (4 * S > 16 ? 16 : 4 * S))

CUSOFT_SIMT_VECS(signed char, char, 1)
CUSOFT_SIMT_VECS(unsigned char, uchar, 1)
CUSOFT_SIMT_VECS(short, short, 2)
CUSOFT_SIMT_VECS(unsigned short, ushort, 2)
CUSOFT_SIMT_VECS(int, int, 4)
CUSOFT_SIMT_VECS(unsigned int, uint, 4)
CUSOFT_SIMT_VECS(long, long, 8)
CUSOFT_SIMT_VECS(unsigned long, ulong, 8)
CUSOFT_SIMT_VECS(long long, longlong, 8)
CUSOFT_SIMT_VECS(unsigned long long, ulonglong, 8)
CUSOFT_SIMT_VECS(float, float, 4)
CUSOFT_SIMT_VECS(double, double, 8)

struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};

constexpr int warpSize = 32;

// ---- thread geometry and synchronisation (implemented in simt_runtime.cpp) ---------------------
namespace cusoft_simt {
namespace detail {
extern const uint3* g_thread_idx;  // the running fiber's threadIdx
extern uint3 g_block_idx;
extern dim3 g_block_dim;
extern dim3 g_grid_dim;

enum Op : int {
    OP_SYNCTHREADS = 1, OP_SYNCTHREADS_COUNT, OP_SYNCTHREADS_AND, OP_SYNCTHREADS_OR,
    OP_SYNCWARP, OP_SHFL_IDX, OP_SHFL_UP, OP_SHFL_DOWN, OP_SHFL_XOR,
    OP_BALLOT, OP_ANY, OP_ALL, OP_MATCH_ANY,
};
int block_barrier(int op, int pred, const char* file, int line);
unsigned long long warp_op(int op, unsigned mask, unsigned long long value, int arg, int width,
                           const char* file, int line);
unsigned active_mask();
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

template <class T>
inline unsigned long long to_bits(T v) {
    static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value,
                  "warp intrinsics exchange values of at most 8 bytes");
    unsigned long long b = 0;
    memcpy(&b, &v, sizeof(T));
    return b;
}
template <class T>
inline T from_bits(unsigned long long b) {
    T v;
    memcpy(&v, &b, sizeof(T));
    return v;
}
}  // namespace detail
}  // namespace cusoft_simt

// Device-side assert, reported with the block and thread like CUDA's (NDEBUG turns it off).
#undef assert
#ifdef NDEBUG
#define assert(e) (static_cast<void>(0))
#else
#define assert(e) \
    ((e) ? static_cast<void>(0) \
         : ::cusoft_simt::detail::fail("assertion `%s' failed at %s:%d in %s", #e, __FILE__, __LINE__, __func__))
#endif

#define threadIdx (static_cast<const uint3&>(*::cusoft_simt::detail::g_thread_idx))
#define blockIdx (static_cast<const uint3&>(::cusoft_simt::detail::g_block_idx))
#define blockDim (static_cast<const dim3&>(::cusoft_simt::detail::g_block_dim))
#define gridDim (static_cast<const dim3&>(::cusoft_simt::detail::g_grid_dim))

#define CUSOFT_SIMT_WHERE const char* cusoft_file = __builtin_FILE(), int cusoft_line = __builtin_LINE()
#define CUSOFT_SIMT_AT cusoft_file, cusoft_line

inline void __syncthreads(CUSOFT_SIMT_WHERE) {
    ::cusoft_simt::detail::block_barrier(::cusoft_simt::detail::OP_SYNCTHREADS, 0, CUSOFT_SIMT_AT);
}
inline int __syncthreads_count(int pred, CUSOFT_SIMT_WHERE) {
    return ::cusoft_simt::detail::block_barrier(::cusoft_simt::detail::OP_SYNCTHREADS_COUNT, pred, CUSOFT_SIMT_AT);
}
inline int __syncthreads_and(int pred, CUSOFT_SIMT_WHERE) {
    return ::cusoft_simt::detail::block_barrier(::cusoft_simt::detail::OP_SYNCTHREADS_AND, pred, CUSOFT_SIMT_AT);
}
inline int __syncthreads_or(int pred, CUSOFT_SIMT_WHERE) {
    return ::cusoft_simt::detail::block_barrier(::cusoft_simt::detail::OP_SYNCTHREADS_OR, pred, CUSOFT_SIMT_AT);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, CUSOFT_SIMT_WHERE) {
    ::cusoft_simt::detail::warp_op(::cusoft_simt::detail::OP_SYNCWARP, mask, 0, 0, 32, CUSOFT_SIMT_AT);
}
inline unsigned __activemask() { return ::cusoft_simt::detail::active_mask(); }

template <class T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize, CUSOFT_SIMT_WHERE) {
    using namespace ::cusoft_simt::detail;
    return from_bits<T>(warp_op(OP_SHFL_IDX, mask, to_bits(var), src_lane, width, CUSOFT_SIMT_AT));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned int delta, int width = warpSize, CUSOFT_SIMT_WHERE) {
    using namespace ::cusoft_simt::detail;
    return from_bits<T>(warp_op(OP_SHFL_UP, mask, to_bits(var), static_cast<int>(delta), width, CUSOFT_SIMT_AT));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned int delta, int width = warpSize, CUSOFT_SIMT_WHERE) {
    using namespace ::cusoft_simt::detail;
    return from_bits<T>(warp_op(OP_SHFL_DOWN, mask, to_bits(var), static_cast<int>(delta), width, CUSOFT_SIMT_AT));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize, CUSOFT_SIMT_WHERE) {
    using namespace ::cusoft_simt::detail;
    return from_bits<T>(warp_op(OP_SHFL_XOR, mask, to_bits(var), lane_mask, width, CUSOFT_SIMT_AT));
}
inline unsigned __ballot_sync(unsigned mask, int pred, CUSOFT_SIMT_WHERE) {
    using namespace ::cusoft_simt::detail;
    return static_cast<unsigned>(warp_op(OP_BALLOT, mask, pred != 0, 0, 32, CUSOFT_SIMT_AT));
}
inline int __any_sync(unsigned mask, int pred, CUSOFT_SIMT_WHERE) {
    using namespace ::cusoft_simt::detail;
    return static_cast<int>(warp_op(OP_ANY, mask, pred != 0, 0, 32, CUSOFT_SIMT_AT));
}
inline int __all_sync(unsigned mask, int pred, CUSOFT_SIMT_WHERE) {
    using namespace ::cusoft_simt::detail;
    return static_cast<int>(warp_op(OP_ALL, mask, pred != 0, 0, 32, CUSOFT_SIMT_AT));
}
template <class T>
inline unsigned __match_any_sync(unsigned mask, T value, CUSOFT_SIMT_WHERE) {
    using namespace ::cusoft_simt::detail;
    return static_cast<unsigned>(warp_op(OP_MATCH_ANY, mask, to_bits(value), 0, 32, CUSOFT_SIMT_AT));
}

// Fibers switch only at the calls above, so memory is sequentially consistent: fences are no-ops.
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
inline void __nanosleep(unsigned) {}
// A per-process tick count: monotonic, but says nothing about time on a GPU.
inline long long int clock64() {
    static long long int ticks = 0;
    return ticks += 1000;
}

// ---- bit reinterpretation and integer intrinsics ------------------------------------------------
namespace cusoft_simt {
namespace detail {
template <class To, class From>
inline To bit_cast(From f) {
    static_assert(sizeof(To) == sizeof(From), "bit_cast size mismatch");
    To t;
    memcpy(&t, &f, sizeof(To));
    return t;
}
}  // namespace detail
}  // namespace cusoft_simt

inline float __int_as_float(int i) { return ::cusoft_simt::detail::bit_cast<float>(i); }
inline int __float_as_int(float f) { return ::cusoft_simt::detail::bit_cast<int>(f); }
inline float __uint_as_float(unsigned int i) { return ::cusoft_simt::detail::bit_cast<float>(i); }
inline unsigned int __float_as_uint(float f) { return ::cusoft_simt::detail::bit_cast<unsigned int>(f); }
inline double __longlong_as_double(long long i) { return ::cusoft_simt::detail::bit_cast<double>(i); }
inline long long __double_as_longlong(double d) { return ::cusoft_simt::detail::bit_cast<long long>(d); }
inline int __double2hiint(double d) { return static_cast<int>(__double_as_longlong(d) >> 32); }
inline int __double2loint(double d) { return static_cast<int>(__double_as_longlong(d) & 0xffffffffLL); }
inline double __hiloint2double(int hi, int lo) {
    return __longlong_as_double(static_cast<long long>((static_cast<unsigned long long>(static_cast<unsigned>(hi)) << 32) |
                                                       static_cast<unsigned>(lo)));
}
inline int __popc(unsigned int x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned int __brev(unsigned int x) {
    unsigned int r = 0;
    for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
    return r;
}
inline int __mul24(int a, int b) { return (a << 8 >> 8) * (b << 8 >> 8); }
inline unsigned int __umul24(unsigned a, unsigned b) { return (a & 0xffffffu) * (b & 0xffffffu); }
inline int __mulhi(int a, int b) { return static_cast<int>((static_cast<long long>(a) * b) >> 32); }
inline unsigned int __umulhi(unsigned a, unsigned b) {
    return static_cast<unsigned>((static_cast<unsigned long long>(a) * b) >> 32);
}
inline long long __mul64hi(long long a, long long b) { return static_cast<long long>((static_cast<__int128>(a) * b) >> 64); }
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return static_cast<unsigned long long>((static_cast<unsigned __int128>(a) * b) >> 64);
}

// ---- min / max ---------------------------------------------------------------------------------
// CUDA's exact overload set, so a call that is ambiguous for nvcc (max(float, int),
// min(int, long long)) fails to compile here too.  Mixed signedness compares as unsigned;
// the floating-point ones ignore a NaN like fminf/fmaxf.
#define CUSOFT_SIMT_MINMAX(R, A, B)                                                             \
    inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
    inline R max(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(b) : static_cast<R>(a); }
CUSOFT_SIMT_MINMAX(int, int, int)
CUSOFT_SIMT_MINMAX(unsigned int, unsigned int, unsigned int)
CUSOFT_SIMT_MINMAX(unsigned int, int, unsigned int)
CUSOFT_SIMT_MINMAX(unsigned int, unsigned int, int)
CUSOFT_SIMT_MINMAX(long, long, long)
CUSOFT_SIMT_MINMAX(unsigned long, unsigned long, unsigned long)
CUSOFT_SIMT_MINMAX(unsigned long, long, unsigned long)
CUSOFT_SIMT_MINMAX(unsigned long, unsigned long, long)
CUSOFT_SIMT_MINMAX(long long, long long, long long)
CUSOFT_SIMT_MINMAX(unsigned long long, unsigned long long, unsigned long long)
CUSOFT_SIMT_MINMAX(unsigned long long, long long, unsigned long long)
CUSOFT_SIMT_MINMAX(unsigned long long, unsigned long long, long long)
#undef CUSOFT_SIMT_MINMAX
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline double max(double a, float b) { return fmax(a, b); }
inline unsigned int umin(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned int umax(unsigned a, unsigned b) { return a < b ? b : a; }
inline long long llmin(long long a, long long b) { return a < b ? a : b; }
inline long long llmax(long long a, long long b) { return a < b ? b : a; }
inline unsigned long long ullmin(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline unsigned long long ullmax(unsigned long long a, unsigned long long b) { return a < b ? b : a; }

// ---- float math --------------------------------------------------------------------------------
// The host libm is at least as accurate as CUDA's; the fast intrinsics (__expf ...) are mapped to
// the accurate functions, so results can differ from a GPU by the GPU's documented ulp error.
inline float __expf(float x) { return expf(x); }
inline float __exp10f(float x) { return exp10f(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __log10f(float x) { return log10f(x); }
inline float __powf(float x, float y) { return powf(x, y); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanf(float x) { return tanf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float fdividef(float a, float b) { return a / b; }
inline double fdivide(double a, double b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline double __dsqrt_rn(double x) { return sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float rcbrtf(float x) { return 1.0f / cbrtf(x); }
inline double rcbrt(double x) { return 1.0 / cbrt(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline int __float2int_rn(float x) { return static_cast<int>(rintf(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(floorf(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(ceilf(x)); }
inline unsigned __float2uint_rn(float x) { return static_cast<unsigned>(rintf(x)); }
inline unsigned __float2uint_rz(float x) { return static_cast<unsigned>(x); }
inline long long __float2ll_rn(float x) { return static_cast<long long>(rintf(x)); }
inline long long __float2ll_rz(float x) { return static_cast<long long>(x); }
inline int __double2int_rn(double x) { return static_cast<int>(rint(x)); }
inline int __double2int_rz(double x) { return static_cast<int>(x); }
inline long long __double2ll_rn(double x) { return static_cast<long long>(rint(x)); }
inline long long __double2ll_rz(double x) { return static_cast<long long>(x); }
inline float __int2float_rn(int x) { return static_cast<float>(x); }
inline float __uint2float_rn(unsigned x) { return static_cast<float>(x); }
inline float __ll2float_rn(long long x) { return static_cast<float>(x); }
inline double __int2double_rn(int x) { return static_cast<double>(x); }
inline double __ll2double_rn(long long x) { return static_cast<double>(x); }
inline float __double2float_rn(double x) { return static_cast<float>(x); }

// ---- read-only / cache-hinted loads and stores -------------------------------------------------
template <class T> inline T __ldg(const T* p) { return *p; }
template <class T> inline T __ldcg(const T* p) { return *p; }
template <class T> inline T __ldca(const T* p) { return *p; }
template <class T> inline T __ldcs(const T* p) { return *p; }
template <class T> inline T __ldlu(const T* p) { return *p; }
template <class T> inline T __ldcv(const T* p) { return *p; }
template <class T> inline void __stwb(T* p, T v) { *p = v; }
template <class T> inline void __stcg(T* p, T v) { *p = v; }
template <class T> inline void __stcs(T* p, T v) { *p = v; }
template <class T> inline void __stwt(T* p, T v) { *p = v; }

// ---- __half ------------------------------------------------------------------------------------
namespace cusoft_simt {
namespace detail {
// IEEE binary16 <-> binary64, round to nearest even.  Every float is a double, so one routine
// serves __float2half and __double2half without double rounding.
inline unsigned short double_to_half_bits(double d) {
    unsigned long long b;
    memcpy(&b, &d, 8);
    unsigned short sign = static_cast<unsigned short>((b >> 48) & 0x8000u);
    double a = d < 0 ? -d : d;
    if (a != a) return 0x7fffu;                            // canonical NaN, as the GPU's cvt.rn.f16
    if (a >= 65520.0) return sign | 0x7c00u;               // 65520 is the rounding midpoint to inf
    if (a < 6.103515625e-05) {                             // below 2**-14: subnormal (or zero)
        double q = rint(a * 16777216.0);                   // units of 2**-24, exact scaling
        return sign | static_cast<unsigned short>(q);      // q == 1024 is the smallest normal
    }
    int e;
    frexp(a, &e);                                          // a = f * 2**e, f in [0.5, 1)
    double m = rint(ldexp(a, 11 - e));                     // 11 significant bits, in [1024, 2048]
    return sign | static_cast<unsigned short>(((e + 14) << 10) + (static_cast<int>(m) - 1024));
}
inline float half_bits_to_float(unsigned short h) {
    unsigned sign = (h & 0x8000u) << 16;
    unsigned exp = (h >> 10) & 0x1fu;
    unsigned man = h & 0x3ffu;
    float mag;
    if (exp == 0) {
        mag = ldexpf(static_cast<float>(man), -24);
    } else if (exp == 31) {
        unsigned bits = 0x7f800000u | (man << 13) | (man ? 0x400000u : 0u);
        memcpy(&mag, &bits, 4);
    } else {
        unsigned bits = ((exp + 112) << 23) | (man << 13);
        memcpy(&mag, &bits, 4);
    }
    unsigned out;
    memcpy(&out, &mag, 4);
    out |= sign;
    memcpy(&mag, &out, 4);
    return mag;
}
}  // namespace detail
}  // namespace cusoft_simt

struct __half_raw { unsigned short x; };

struct __attribute__((aligned(2))) __half {
    unsigned short __x;
    __half() = default;
    __half(const __half_raw& r) : __x(r.x) {}
    __half(float f) : __x(::cusoft_simt::detail::double_to_half_bits(f)) {}
    __half(double d) : __x(::cusoft_simt::detail::double_to_half_bits(d)) {}
    __half(int i) : __x(::cusoft_simt::detail::double_to_half_bits(i)) {}
    __half(unsigned int i) : __x(::cusoft_simt::detail::double_to_half_bits(i)) {}
    __half(long long i) : __x(::cusoft_simt::detail::double_to_half_bits(static_cast<double>(i))) {}
    __half(unsigned long long i) : __x(::cusoft_simt::detail::double_to_half_bits(static_cast<double>(i))) {}
    __half& operator=(float f) { __x = ::cusoft_simt::detail::double_to_half_bits(f); return *this; }
    __half& operator=(double d) { __x = ::cusoft_simt::detail::double_to_half_bits(d); return *this; }
    __half& operator=(const __half_raw& r) { __x = r.x; return *this; }
    operator float() const { return ::cusoft_simt::detail::half_bits_to_float(__x); }
    operator __half_raw() const { __half_raw r; r.x = __x; return r; }
    explicit operator bool() const { return (__x & 0x7fffu) != 0; }
};
typedef __half half;

struct __attribute__((aligned(4))) __half2 {
    __half x, y;
    __half2() = default;
    __half2(__half a, __half b) : x(a), y(b) {}
};
typedef __half2 half2;

inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline __half __double2half(double d) { return __half(d); }
inline float __half2float(__half h) { return ::cusoft_simt::detail::half_bits_to_float(h.__x); }
inline __half __int2half_rn(int i) { return __half(i); }
inline __half __ushort_as_half(unsigned short u) { __half_raw r; r.x = u; return __half(r); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __short_as_half(short s) { return __ushort_as_half(static_cast<unsigned short>(s)); }
inline short __half_as_short(__half h) { return static_cast<short>(h.__x); }
inline int __half2int_rz(__half h) { return static_cast<int>(__half2float(h)); }
inline int __half2int_rn(__half h) { return static_cast<int>(rintf(__half2float(h))); }
inline __half2 make_half2(__half a, __half b) { return __half2(a, b); }
inline __half2 __halves2half2(__half a, __half b) { return __half2(a, b); }
inline __half2 __floats2half2_rn(float a, float b) { return __half2(__half(a), __half(b)); }
inline __half2 __float2half2_rn(float a) { return __half2(__half(a), __half(a)); }
inline __half2 __float22half2_rn(float2 f) { return __half2(__half(f.x), __half(f.y)); }
inline float2 __half22float2(__half2 h) { return make_float2(__half2float(h.x), __half2float(h.y)); }
inline __half __low2half(__half2 h) { return h.x; }
inline __half __high2half(__half2 h) { return h.y; }
inline float __low2float(__half2 h) { return __half2float(h.x); }
inline float __high2float(__half2 h) { return __half2float(h.y); }

// Half arithmetic is done in double (exact for +, -, *; correctly rounded then for /) and rounded
// once to half, which is what sm_53+ half instructions return.
#define CUSOFT_SIMT_HOP(NAME, OP)                                                               \
    inline __half NAME(__half a, __half b) {                                                    \
        return __half(static_cast<double>(__half2float(a)) OP static_cast<double>(__half2float(b))); }
CUSOFT_SIMT_HOP(__hadd, +)
CUSOFT_SIMT_HOP(__hsub, -)
CUSOFT_SIMT_HOP(__hmul, *)
CUSOFT_SIMT_HOP(__hdiv, /)
#undef CUSOFT_SIMT_HOP
inline __half __hneg(__half a) { return __ushort_as_half(static_cast<unsigned short>(a.__x ^ 0x8000u)); }
inline __half __habs(__half a) { return __ushort_as_half(static_cast<unsigned short>(a.__x & 0x7fffu)); }
inline __half __hfma(__half a, __half b, __half c) {
    return __half(fma(static_cast<double>(__half2float(a)), static_cast<double>(__half2float(b)),
                      static_cast<double>(__half2float(c))));
}
inline bool __hisnan(__half a) { return (a.__x & 0x7fffu) > 0x7c00u; }
inline int __hisinf(__half a) { return (a.__x & 0x7fffu) == 0x7c00u ? ((a.__x & 0x8000u) ? -1 : 1) : 0; }
inline bool __heq(__half a, __half b) { return __half2float(a) == __half2float(b); }
inline bool __hne(__half a, __half b) { return !__hisnan(a) && !__hisnan(b) && __half2float(a) != __half2float(b); }
inline bool __hlt(__half a, __half b) { return __half2float(a) < __half2float(b); }
inline bool __hle(__half a, __half b) { return __half2float(a) <= __half2float(b); }
inline bool __hgt(__half a, __half b) { return __half2float(a) > __half2float(b); }
inline bool __hge(__half a, __half b) { return __half2float(a) >= __half2float(b); }
inline __half __hmax(__half a, __half b) {  // NaN-ignoring, like fmaxf
    if (__hisnan(a)) return b;
    if (__hisnan(b)) return a;
    return __hgt(b, a) ? b : a;
}
inline __half __hmin(__half a, __half b) {
    if (__hisnan(a)) return b;
    if (__hisnan(b)) return a;
    return __hlt(b, a) ? b : a;
}
inline __half hexp(__half a) { return __half(expf(__half2float(a))); }
inline __half hlog(__half a) { return __half(logf(__half2float(a))); }
inline __half hsqrt(__half a) { return __half(sqrtf(__half2float(a))); }
inline __half2 __hadd2(__half2 a, __half2 b) { return __half2(__hadd(a.x, b.x), __hadd(a.y, b.y)); }
inline __half2 __hsub2(__half2 a, __half2 b) { return __half2(__hsub(a.x, b.x), __hsub(a.y, b.y)); }
inline __half2 __hmul2(__half2 a, __half2 b) { return __half2(__hmul(a.x, b.x), __hmul(a.y, b.y)); }
inline __half2 __hmax2(__half2 a, __half2 b) { return __half2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }

inline __half operator+(const __half& a, const __half& b) { return __hadd(a, b); }
inline __half operator-(const __half& a, const __half& b) { return __hsub(a, b); }
inline __half operator*(const __half& a, const __half& b) { return __hmul(a, b); }
inline __half operator/(const __half& a, const __half& b) { return __hdiv(a, b); }
inline __half operator-(const __half& a) { return __hneg(a); }
inline __half operator+(const __half& a) { return a; }
inline __half& operator+=(__half& a, const __half& b) { return a = __hadd(a, b); }
inline __half& operator-=(__half& a, const __half& b) { return a = __hsub(a, b); }
inline __half& operator*=(__half& a, const __half& b) { return a = __hmul(a, b); }
inline __half& operator/=(__half& a, const __half& b) { return a = __hdiv(a, b); }
inline bool operator==(const __half& a, const __half& b) { return __heq(a, b); }
inline bool operator!=(const __half& a, const __half& b) { return __hne(a, b); }
inline bool operator<(const __half& a, const __half& b) { return __hlt(a, b); }
inline bool operator<=(const __half& a, const __half& b) { return __hle(a, b); }
inline bool operator>(const __half& a, const __half& b) { return __hgt(a, b); }
inline bool operator>=(const __half& a, const __half& b) { return __hge(a, b); }

// ---- atomics -----------------------------------------------------------------------------------
// A fiber is never interrupted between two synchronisation calls, so a plain read-modify-write is
// atomic here.  The overload set is CUDA's (sm_70+), so a type CUDA lacks fails to compile here too.
#define CUSOFT_SIMT_ATOMIC(NAME, T, EXPR)                                                       \
    inline T NAME(T* address, T val) { T old = *address; *address = (EXPR); return old; }
#define CUSOFT_SIMT_ATOMIC_BLOCK(NAME, T, EXPR)                                                 \
    CUSOFT_SIMT_ATOMIC(NAME, T, EXPR)                                                           \
    CUSOFT_SIMT_ATOMIC(NAME##_block, T, EXPR)                                                   \
    CUSOFT_SIMT_ATOMIC(NAME##_system, T, EXPR)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicAdd, int, old + val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicAdd, unsigned int, old + val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicAdd, unsigned long long, old + val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicAdd, float, old + val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicAdd, double, old + val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicAdd, __half, __hadd(old, val))
CUSOFT_SIMT_ATOMIC_BLOCK(atomicSub, int, old - val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicSub, unsigned int, old - val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicExch, int, val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicExch, unsigned int, val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicExch, unsigned long long, val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicExch, float, val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicMax, int, old < val ? val : old)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicMax, unsigned int, old < val ? val : old)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicMax, long long, old < val ? val : old)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicMax, unsigned long long, old < val ? val : old)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicMin, int, val < old ? val : old)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicMin, unsigned int, val < old ? val : old)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicMin, long long, val < old ? val : old)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicMin, unsigned long long, val < old ? val : old)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicAnd, int, old & val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicAnd, unsigned int, old & val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicAnd, unsigned long long, old & val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicOr, int, old | val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicOr, unsigned int, old | val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicOr, unsigned long long, old | val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicXor, int, old ^ val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicXor, unsigned int, old ^ val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicXor, unsigned long long, old ^ val)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicInc, unsigned int, old >= val ? 0u : old + 1u)
CUSOFT_SIMT_ATOMIC_BLOCK(atomicDec, unsigned int, (old == 0u || old > val) ? val : old - 1u)
#undef CUSOFT_SIMT_ATOMIC_BLOCK
#undef CUSOFT_SIMT_ATOMIC
#define CUSOFT_SIMT_CAS(T)                                                                      \
    inline T atomicCAS(T* address, T compare, T val) {                                          \
        T old = *address; if (old == compare) *address = val; return old; }                     \
    inline T atomicCAS_block(T* address, T compare, T val) { return atomicCAS(address, compare, val); } \
    inline T atomicCAS_system(T* address, T compare, T val) { return atomicCAS(address, compare, val); }
CUSOFT_SIMT_CAS(int)
CUSOFT_SIMT_CAS(unsigned int)
CUSOFT_SIMT_CAS(unsigned long long)
CUSOFT_SIMT_CAS(unsigned short)
#undef CUSOFT_SIMT_CAS

// ---- tensor-core primitives (PTX mma.sync / ldmatrix), warp-collective ---------------------------
// CUDA C reaches these instructions only through inline PTX, which a host compiler cannot run, so
// a kernel wraps each in a small device function whose non-__CUDACC__ branch calls the emulation
// below.  The emulation follows the fragment layouts of the PTX ISA (groupID g = lane / 4,
// threadID_in_group t = lane % 4) and moves every element between lanes with warp shuffles, so a
// kernel that gets a layout wrong gives a wrong answer here as it would on the GPU.  All 32 lanes
// of the warp must call them together (the shuffles check it).
namespace cusoft_simt {
namespace detail {
inline int lane_id() {
    const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    return static_cast<int>(tid & 31u);
}
inline unsigned pack_halves(unsigned short lo, unsigned short hi) {
    return static_cast<unsigned>(lo) | (static_cast<unsigned>(hi) << 16);
}
inline float half_lo(unsigned w) { return half_bits_to_float(static_cast<unsigned short>(w & 0xffffu)); }
inline float half_hi(unsigned w) { return half_bits_to_float(static_cast<unsigned short>(w >> 16)); }
inline const unsigned short* ldmatrix_row(const void* p, int src, const char* file, int line) {
    const unsigned long long a = warp_op(OP_SHFL_IDX, 0xffffffffu, to_bits(p), src, 32, file, line);
    if (a & 15u) fail("ldmatrix: row address %#llx of lane %d is not 16-byte aligned (%s:%d)", a, src, file, line);
    return reinterpret_cast<const unsigned short*>(static_cast<unsigned long long>(a));
}
}  // namespace detail

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: d (16x8 float) += a (16x16 half, row) *
// b (16x8 half, col).  Lane (g, t) holds a = {A[g][2t..2t+1], A[g+8][2t..], A[g][2t+8..],
// A[g+8][2t+8..]}, b = {B[2t..2t+1][g], B[2t+8..2t+9][g]}, d = {D[g][2t], D[g][2t+1],
// D[g+8][2t], D[g+8][2t+1]}; a half pair packs the lower column (or row) in the low 16 bits.
// Products of halves are exact in float; the sum runs in float, in k order.
inline void mma_m16n8k16_f32f16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                CUSOFT_SIMT_WHERE) {
    using namespace detail;
    const int lane = lane_id(), g = lane >> 2, t = lane & 3;
    float arow[2][16], bcol[2][16];
    for (int s = 0; s < 4; ++s) {
        const int src = 4 * g + s;  // holds rows g, g+8 at k = 2s, 2s+1, 2s+8, 2s+9
        unsigned w[4];
        for (int r = 0; r < 4; ++r)
            w[r] = static_cast<unsigned>(warp_op(OP_SHFL_IDX, 0xffffffffu, a[r], src, 32, CUSOFT_SIMT_AT));
        for (int h = 0; h < 2; ++h) {
            arow[h][2 * s] = half_lo(w[h]);
            arow[h][2 * s + 1] = half_hi(w[h]);
            arow[h][2 * s + 8] = half_lo(w[h + 2]);
            arow[h][2 * s + 9] = half_hi(w[h + 2]);
        }
        for (int c = 0; c < 2; ++c) {
            const int bsrc = 4 * (2 * t + c) + s;  // holds column n = 2t + c at k = 2s.., 2s+8..
            const unsigned b0 = static_cast<unsigned>(warp_op(OP_SHFL_IDX, 0xffffffffu, b[0], bsrc, 32, CUSOFT_SIMT_AT));
            const unsigned b1 = static_cast<unsigned>(warp_op(OP_SHFL_IDX, 0xffffffffu, b[1], bsrc, 32, CUSOFT_SIMT_AT));
            bcol[c][2 * s] = half_lo(b0);
            bcol[c][2 * s + 1] = half_hi(b0);
            bcol[c][2 * s + 8] = half_lo(b1);
            bcol[c][2 * s + 9] = half_hi(b1);
        }
    }
    for (int h = 0; h < 2; ++h)
        for (int c = 0; c < 2; ++c) {
            float acc = d[2 * h + c];
            for (int k = 0; k < 16; ++k) acc += arow[h][k] * bcol[c][k];
            d[2 * h + c] = acc;
        }
}

// cvt.rna.tf32.f32: x rounded to 10 mantissa bits (to nearest, ties away from zero), returned
// as the bits of a float whose low 13 bits are zero; NaN and infinities pass unchanged.
inline unsigned cvt_rna_tf32(float x) {
    unsigned u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0x7f800000u) return u;
    return (u + 0x1000u) & 0xffffe000u;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: d (16x8 float) += a (16x8 tf32) b (8x8
// tf32).  Lane (g, t) holds a = {A[g][t], A[g+8][t], A[g][t+4], A[g+8][t+4]}, b = {B[t][g],
// B[t+4][g]}, d as for m16n8k16.  The tensor core reads only the tf32 bits of each operand: the
// low 13 mantissa bits are dropped here, so a kernel that feeds unrounded floats loses the
// precision it would lose on the GPU.  Products of tf32 values are exact in float.
inline void mma_m16n8k8_f32tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2],
                                CUSOFT_SIMT_WHERE) {
    using namespace detail;
    const int lane = lane_id(), g = lane >> 2, t = lane & 3;
    auto f = [](unsigned long long w) {
        const unsigned u = static_cast<unsigned>(w) & 0xffffe000u;
        float x;
        memcpy(&x, &u, 4);
        return x;
    };
    float arow[2][8], bcol[2][8];
    for (int s = 0; s < 4; ++s) {
        const int src = 4 * g + s;  // holds rows g, g+8 at k = s, s+4
        for (int r = 0; r < 4; ++r)
            arow[r & 1][s + 4 * (r >> 1)] = f(warp_op(OP_SHFL_IDX, 0xffffffffu, a[r], src, 32, CUSOFT_SIMT_AT));
        for (int c = 0; c < 2; ++c) {
            const int bsrc = 4 * (2 * t + c) + s;  // holds column n = 2t + c at k = s, s+4
            bcol[c][s] = f(warp_op(OP_SHFL_IDX, 0xffffffffu, b[0], bsrc, 32, CUSOFT_SIMT_AT));
            bcol[c][s + 4] = f(warp_op(OP_SHFL_IDX, 0xffffffffu, b[1], bsrc, 32, CUSOFT_SIMT_AT));
        }
    }
    for (int h = 0; h < 2; ++h)
        for (int c = 0; c < 2; ++c) {
            float acc = d[2 * h + c];
            for (int k = 0; k < 8; ++k) acc += arow[h][k] * bcol[c][k];
            d[2 * h + c] = acc;
        }
}

// mma.sync.aligned.m8n8k4.row.col.f64.f64.f64.f64: (d0, d1) = D[g][2t], D[g][2t+1] (8x8 double)
// += a (8x4, lane (g, t) holds A[g][t]) b (4x8, lane (g, t) holds B[t][g]); fused multiply-adds
// in k order.
inline void mma_m8n8k4_f64(double& d0, double& d1, double a, double b, CUSOFT_SIMT_WHERE) {
    using namespace detail;
    const int lane = lane_id(), g = lane >> 2, t = lane & 3;
    double arow[4], bcol[2][4];
    for (int k = 0; k < 4; ++k) {
        arow[k] = from_bits<double>(warp_op(OP_SHFL_IDX, 0xffffffffu, to_bits(a), 4 * g + k, 32, CUSOFT_SIMT_AT));
        for (int c = 0; c < 2; ++c)
            bcol[c][k] = from_bits<double>(
                warp_op(OP_SHFL_IDX, 0xffffffffu, to_bits(b), 4 * (2 * t + c) + k, 32, CUSOFT_SIMT_AT));
    }
    for (int k = 0; k < 4; ++k) {
        d0 = fma(arow[k], bcol[0][k], d0);
        d1 = fma(arow[k], bcol[1][k], d1);
    }
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: four 8x8 matrices of 16-bit elements; lane
// 8j + r gives the (16-byte aligned) address of row r of matrix j; lane (g, t) receives in r[j]
// the pair M_j[g][2t..2t+1] (M_j[2t][g], M_j[2t+1][g] with trans).
inline void ldmatrix_x4(unsigned (&r)[4], const void* row, bool trans, CUSOFT_SIMT_WHERE) {
    using namespace detail;
    const int lane = lane_id(), g = lane >> 2, t = lane & 3;
    for (int j = 0; j < 4; ++j) {
        if (!trans) {
            // every lane must take part in each shuffle: fetch the row this lane needs
            const unsigned short* p = ldmatrix_row(row, 8 * j + g, CUSOFT_SIMT_AT);
            r[j] = pack_halves(p[2 * t], p[2 * t + 1]);
        } else {
            const unsigned short* p0 = ldmatrix_row(row, 8 * j + 2 * t, CUSOFT_SIMT_AT);
            const unsigned short* p1 = ldmatrix_row(row, 8 * j + 2 * t + 1, CUSOFT_SIMT_AT);
            r[j] = pack_halves(p0[g], p1[g]);
        }
    }
}
}  // namespace cusoft_simt

// ---- asynchronous copies (PTX cp.async), per thread ---------------------------------------------
// A copy issued with cp_async is not performed when issued: it waits in its thread's queue until
// cp_async_wait(n) (cp.async.wait_group n) completes every committed group but the newest n.
// __syncthreads does not complete it (as on a GPU), so a kernel that reads the destination
// before waiting reads the poisoned shared memory and gives a wrong answer here.
namespace cusoft_simt {
namespace detail {
struct AsyncCopy { void* dst; const void* src; int bytes; int src_bytes; };
struct AsyncQueue {
    std::vector<AsyncCopy> copies;
    std::vector<size_t> group_end;  // copies[0, group_end[i]) belong to groups 0..i
    void* owner = nullptr;          // the dynamic shared memory of the block that issued them
    unsigned bx = 0, by = 0, bz = 0;
};
inline AsyncQueue& async_queue(const char* file, int line) {
    static AsyncQueue queues[1024];
    const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    AsyncQueue& q = queues[tid];
    void* smem = dynamic_smem();
    if (q.owner != smem || q.bx != blockIdx.x || q.by != blockIdx.y || q.bz != blockIdx.z) {
        if (!q.copies.empty())
            fail("cp.async: thread %u left %zu copies of an earlier block never waited for (%s:%d)",
                 tid, q.copies.size(), file, line);
        q.group_end.clear();
        q.owner = smem;
        q.bx = blockIdx.x; q.by = blockIdx.y; q.bz = blockIdx.z;
    }
    return q;
}
}  // namespace detail

// cp.async.{ca,cg}.shared.global [dst], [src], bytes, src_bytes: copies src_bytes and zero-fills
// the rest of the bytes (4, 8 or 16, both addresses aligned to it).
inline void cp_async(void* dst, const void* src, int bytes, int src_bytes, CUSOFT_SIMT_WHERE) {
    using namespace detail;
    if ((bytes != 4 && bytes != 8 && bytes != 16) || src_bytes < 0 || src_bytes > bytes)
        fail("cp.async: bad sizes %d/%d (%s:%d)", bytes, src_bytes, CUSOFT_SIMT_AT);
    if ((reinterpret_cast<unsigned long long>(dst) | reinterpret_cast<unsigned long long>(src)) % bytes)
        fail("cp.async: %d-byte copy with a misaligned address (%s:%d)", bytes, CUSOFT_SIMT_AT);
    async_queue(CUSOFT_SIMT_AT).copies.push_back(AsyncCopy{dst, src, bytes, src_bytes});
}
inline void cp_async_commit(CUSOFT_SIMT_WHERE) {
    detail::AsyncQueue& q = detail::async_queue(CUSOFT_SIMT_AT);
    q.group_end.push_back(q.copies.size());
}
inline void cp_async_wait(int newest_pending, CUSOFT_SIMT_WHERE) {
    detail::AsyncQueue& q = detail::async_queue(CUSOFT_SIMT_AT);
    const long done_groups = static_cast<long>(q.group_end.size()) - newest_pending;
    if (done_groups <= 0) return;
    const size_t n = q.group_end[done_groups - 1];
    for (size_t i = 0; i < n; ++i) {
        const detail::AsyncCopy& c = q.copies[i];
        memcpy(c.dst, c.src, static_cast<size_t>(c.src_bytes));
        memset(static_cast<char*>(c.dst) + c.src_bytes, 0, static_cast<size_t>(c.bytes - c.src_bytes));
    }
    q.copies.erase(q.copies.begin(), q.copies.begin() + static_cast<long>(n));
    q.group_end.erase(q.group_end.begin(), q.group_end.begin() + done_groups);
    for (size_t& e : q.group_end) e -= n;
}
}  // namespace cusoft_simt

#endif  // CUSOFT_SIMT_H
