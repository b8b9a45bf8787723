// cusoft/kernels_cu/xent.cu -- fused softmax cross-entropy: per-row loss and its gradient.
//
// For one row of logits x (C = n classes), weights w (or 1) and target t:
//   loss   = -sum_c w_c t_c * log_softmax(x)_c      (a term with w_c t_c == 0 adds 0, so a
//                                                     -inf logit with no target gives no NaN)
//   grad_c = g_r * (p_c * W - w_c t_c)               p = softmax(x), W = sum_c w_c t_c
// g_r = grad_scale[r * scale_step] for row r: one factor (step 0; it lives in device memory
// so a "mean" denominator computed on the GPU needs no host round trip) or one per row.
// The gradient is the fused form of d loss / d x: -t/p never appears, so p -> 0 is harmless.
// Targets: int64 labels (t = (1-eps)*onehot + eps/C; a row whose label equals ignore_index
// gives loss 0 and grad 0 without reading x; a label outside [0, C) gives loss NaN and
// grad NaN without reading x or weight: the public function rejects such labels first,
// except under CUDA graph capture, where that check would synchronise) or probability rows
// laid out like x
// (t = (1-eps)*p + eps/C).  weight (has_weight), probs (has_probs) and grad (has_grad) are
// optional: a flag plus a placeholder array (see common.cuh).  Special rows (non-finite max)
// follow log_softmax's rule of cusoft/_backend.py; see LogpRule.
//
// Variants (layout and choice: cusoft/_launch.py, launch_xent).  R = one read of x:
//   xent_warp<T, K>     1R   short rows (n <= 32*K, K <= 16): a warp per row, the logits in registers;
//                            max, then (sum exp, W) in one shuffle reduction; the second
//                            pass (loss terms, gradient) runs from registers.
//   xent_block<T>       2R   longer rows: a block per row; one online (max, sum exp, W) pass,
//                            then a pass over x for the loss terms and the gradient.
//   xent_split_stats<T> + xent_split_apply<T>
//                       2R   few very long rows: blocks own (row, chunk) pairs; partials per
//                            chunk in a workspace, merged in a fixed order (end of file).
//   xent_col<T>         2R   column layout (inner > 1): threadIdx.x walks inner (coalesced),
//                            threadIdx.y splits the classes; states meet in shared memory.
// Probability targets are read in both passes (W is needed before the first gradient write);
// labels without smoothing and without a gradient skip the second pass (block and col:
// x[label] rides along in the first pass's reduction; warp: lane 0 loads it).
// grad may alias x: the second pass reads an element before the same thread overwrites it,
// after the reduction that ends the first pass.
#include "common.cuh"

using namespace cusoft;

// Arguments of every variant, gathered once per kernel.
template <typename T> struct XentArgs {
    typedef acc_t<T> A;
    const T* x;
    const i64* labels;
    const T* probs;
    const T* weight;
    T* loss;
    T* grad;
    int has_probs, has_weight, has_grad;
    i64 ignore_index;
    A keep, base;  // 1 - eps, eps / C
    const A* scale;
    i64 scale_step, n;

    // A label row that is not computed: ignored, or a label outside [0, n).
    CUSOFT_DEV bool skip(i64 label) const
    {
        return !has_probs && (label == ignore_index || label < 0 || label >= n);
    }
    // What a skipped row holds in loss and grad: 0 if ignored, else NaN.
    CUSOFT_DEV A fill(i64 label) const { return label == ignore_index ? A(0) : cu_nan<A>(); }
    // The gradient factor of row r.
    CUSOFT_DEV A scale_of(i64 r) const { return scale[r * scale_step]; }
    // These arguments with the targets (keep, base) multiplied by f: wt() gives f w_c t_c.
    CUSOFT_DEV XentArgs scaled(A f) const
    {
        XentArgs b = *this;
        b.keep *= f;
        b.base *= f;
        return b;
    }

    // Loss without a second pass: labels, no smoothing, no gradient.
    CUSOFT_DEV bool label_only() const { return !has_probs && !has_grad && keep == A(1); }

    // w_c t_c of class c in a row whose target is `label` or the probabilities at pr[c*stride].
    CUSOFT_DEV A wt(i64 c, i64 label, const T* pr, i64 stride) const
    {
        const A t = has_probs ? keep * Traits<T>::load(pr[c * stride]) + base
                              : (c == label ? keep : A(0)) + base;
        return has_weight ? Traits<T>::load(weight[c]) * t : t;
    }
};

// log_softmax of one element from the row max m and s = sum exp(x - m), SciPy's way: a
// finite max shifts; +inf max gives NaN at the +inf elements and -inf elsewhere; a NaN or
// all -inf row gives NaN everywhere.
template <typename A> struct LogpRule {
    A m, ls;
    int mode;  // 0: finite max; 1: all NaN; 2: m == +inf
    CUSOFT_DEV LogpRule(A m_, A s_) : m(m_), ls(A(0)), mode(1)
    {
        if (is_finite(m_)) {
            mode = 0;
            ls = cu_log(s_);
        } else if (m_ == cu_inf<A>()) {
            mode = 2;
        }
    }
    CUSOFT_DEV A operator()(A x) const
    {
        if (mode == 0) return (x - m) - ls;
        if (mode == 2) return x == m ? cu_nan<A>() : -cu_inf<A>();
        return cu_nan<A>();
    }
};

// (sum exp(x - m), W): the second reduction of the warp variant.
template <typename A> struct SumPair {
    A s, w;
    static CUSOFT_DEV SumPair merge(const SumPair& a, const SumPair& b)
    {
        SumPair o;
        o.s = a.s + b.s;
        o.w = a.w + b.w;
        return o;
    }
    CUSOFT_DEV SumPair shfl_xor(int lane_mask) const
    {
        SumPair o;
        o.s = __shfl_xor_sync(kFullMask, s, lane_mask);
        o.w = __shfl_xor_sync(kFullMask, w, lane_mask);
        return o;
    }
};

// Online (m, s) of the logits, W, and one more additive value v: x[label] in the block and
// column variants (one thread holds it, the others 0, so the sum is exact and reaches every
// thread), the count K of terms with w*t != 0 in the split variant.  Four values: 32 warps
// fit kScratchBytes.
template <typename A> struct XentState {
    MaxSum<A> ms;
    A w, v;
    CUSOFT_DEV void init() { ms.init(); w = A(0); v = A(0); }
    static CUSOFT_DEV XentState merge(const XentState& a, const XentState& b)
    {
        XentState o;
        o.ms = MaxSum<A>::merge(a.ms, b.ms);
        o.w = a.w + b.w;
        o.v = a.v + b.v;
        return o;
    }
    CUSOFT_DEV XentState shfl_xor(int lane_mask) const
    {
        XentState o;
        o.ms = ms.shfl_xor(lane_mask);
        o.w = __shfl_xor_sync(kFullMask, w, lane_mask);
        o.v = __shfl_xor_sync(kFullMask, v, lane_mask);
        return o;
    }
};

// A loss term: zero-weight classes add nothing, whatever their log-probability.
template <typename A> CUSOFT_DEV A loss_term(A wt, A logp) { return wt == A(0) ? A(0) : wt * logp; }

template <typename T> CUSOFT_DEV T grad_value(acc_t<T> scale, acc_t<T> logp, acc_t<T> W, acc_t<T> wt)
{
    return Traits<T>::store(scale * (cu_exp(logp) * W - wt));
}

#define CUSOFT_XENT_PARAMS                                                                      \
    const T *x, const i64 *labels, const T *probs, int has_probs, const T *weight, int has_weight, \
        i64 ignore_index, acc_t<T> smoothing, T *loss, T *grad, int has_grad, const acc_t<T> *grad_scale, \
        i64 scale_step

template <typename T>
CUSOFT_DEV XentArgs<T> xent_args(const T* x, const i64* labels, const T* probs, int has_probs, const T* weight,
                                 int has_weight, i64 ignore_index, acc_t<T> smoothing, T* loss, T* grad,
                                 int has_grad, const acc_t<T>* grad_scale, i64 scale_step, i64 n)
{
    typedef acc_t<T> A;
    XentArgs<T> a;
    a.x = x;
    a.labels = labels;
    a.probs = probs;
    a.weight = weight;
    a.loss = loss;
    a.grad = grad;
    a.has_probs = has_probs;
    a.has_weight = has_weight;
    a.has_grad = has_grad;
    a.ignore_index = ignore_index;
    a.keep = A(1) - smoothing;
    a.base = smoothing / A(n);
    a.scale = grad_scale;
    a.scale_step = scale_step;
    a.n = n;
    return a;
}

// =======================================================================================
// Row layout
// =======================================================================================
// Two blocks per SM in the bound: with the block size alone ptxas gave K = 2 only 32
// registers and spilled once the row's gradient factor was hoisted out of the element loop
// (inside it, the factor was reloaded per element, since the gradient stores may alias it).
template <typename T, int K>
__global__ void CUSOFT_BOUNDS(256, 2)
xent_warp(CUSOFT_XENT_PARAMS, i64 rows, i64 n)
{
    typedef acc_t<T> A;
    const XentArgs<T> a = xent_args(x, labels, probs, has_probs, weight, has_weight, ignore_index, smoothing, loss,
                                    grad, has_grad, grad_scale, scale_step, n);
    const i64 wpb = blockDim.x / kWarp;
    const int lane = lane_id();
    // Loop bounds and the label are warp-uniform: the shuffles always see all 32 lanes.
    for (i64 row = blockIdx.x * wpb + threadIdx.x / kWarp; row < rows; row += (i64)gridDim.x * wpb) {
        const i64 label = has_probs ? -1 : labels[row];
        const T* xr = x + row * n;
        const T* pr = probs + (has_probs ? row * n : 0);
        T* gr = grad + row * n;
        if (a.skip(label)) {
            const T f = Traits<T>::store(a.fill(label));
            if (lane == 0) loss[row] = f;
            if (has_grad)
#pragma unroll 1
                for (i64 j = lane; j < n; j += kWarp) gr[j] = f;
            continue;
        }
        A v[K];
        MaxOp<A> mx;
        mx.v = -cu_inf<A>();
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const i64 j = (i64)k * kWarp + lane;
            v[k] = j < n ? Traits<T>::load(xr[j]) : -cu_inf<A>();
            mx.v = nan_max(mx.v, v[k]);
        }
        const A m = warp_reduce(mx).v;
        SumPair<A> sw;
        sw.s = A(0);
        sw.w = A(0);
#pragma unroll
        for (int k = 0; k < K; ++k) {
            const i64 j = (i64)k * kWarp + lane;
            if (j < n) {
                sw.s += cu_exp(v[k] - m);
                sw.w += a.wt(j, label, pr, 1);
            }
        }
        sw = warp_reduce(sw);
        const LogpRule<A> lp(m, sw.s);
        SumOp<A> l;
        l.v = A(0);
        if (a.label_only()) {
            if (lane == 0) l.v = loss_term(a.wt(label, label, pr, 1), lp(Traits<T>::load(xr[label])));
        } else {
            const A sc = has_grad ? a.scale_of(row) : A(0);
#pragma unroll
            for (int k = 0; k < K; ++k) {
                const i64 j = (i64)k * kWarp + lane;
                if (j < n) {
                    const A wt = a.wt(j, label, pr, 1), logp = lp(v[k]);
                    l.v += loss_term(wt, logp);
                    if (has_grad) gr[j] = grad_value<T>(sc, logp, sw.w, wt);
                }
            }
            l = warp_reduce(l);
        }
        if (lane == 0) loss[row] = Traits<T>::store(-l.v);
    }
}

// Pass 1 of a row over group g: the online (m, s) of the logits, W, and x[label].
template <typename T, typename G>
CUSOFT_DEV XentState<acc_t<T>> xent_row_state(const XentArgs<T>& a, const T* xr, const T* pr, i64 label, const G& g)
{
    typedef acc_t<T> A;
    XentState<A> st;
    st.init();
    row_visit(xr, a.n, g.rank, g.size, [&](i64 j, T v) {
        const A xv = Traits<T>::load(v);
        st.ms.add(xv);
        st.w += a.wt(j, label, pr, 1);
        st.v = (j == label) ? xv : st.v;
    });
    return g.reduce(st);
}

// Dynamic shared memory: kScratchBytes.
template <typename T>
__global__ void CUSOFT_BOUNDS(512)
xent_block(CUSOFT_XENT_PARAMS, i64 rows, i64 n)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    const XentArgs<T> a = xent_args(x, labels, probs, has_probs, weight, has_weight, ignore_index, smoothing, loss,
                                    grad, has_grad, grad_scale, scale_step, n);
    // Each case has a row loop of its own: one loop holding all three made ptxas spill.
    if (a.label_only()) {
        // Labels without smoothing or gradient: one pass; the loss needs x[label] only.
        for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
            const i64 label = labels[row];
            if (a.skip(label)) continue;  // uniform; written below
            const XentState<A> st = xent_row_state(a, x + row * n, probs, label, g);
            const LogpRule<A> lp(st.ms.m, st.ms.s);
            if (g.rank == 0) loss[row] = Traits<T>::store(-loss_term(a.wt(label, label, probs, 1), lp(st.v)));
        }
    } else {
        for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
            const i64 label = has_probs ? -1 : labels[row];
            if (a.skip(label)) continue;  // uniform; written below
            const T* xr = x + row * n;
            const T* pr = probs + (has_probs ? row * n : 0);
            T* gr = grad + row * n;
            // its barriers end every read of pass 1 before any gradient write (aliasing)
            const XentState<A> st = xent_row_state(a, xr, pr, label, g);
            const LogpRule<A> lp(st.ms.m, st.ms.s);
            const A sc = has_grad ? a.scale_of(row) : A(0);
            SumOp<A> l;
            l.v = A(0);
            // The gradient store sits in the loop nest of the loss terms (two nests spilled)
            // and is elementwise: x's pack is already in registers, so grad may alias x.
            row_visit(xr, n, g.rank, g.size, [&](i64 j, T v) {
                const A wt = a.wt(j, label, pr, 1), logp = lp(Traits<T>::load(v));
                l.v += loss_term(wt, logp);
                if (has_grad) gr[j] = grad_value<T>(sc, logp, st.w, wt);
            });
            l = g.reduce(l);  // also keeps the next row's scratch use behind this one
            if (g.rank == 0) loss[row] = Traits<T>::store(-l.v);
        }
    }
    if (has_probs) return;
    for (i64 row = blockIdx.x; row < rows; row += gridDim.x) {
        const i64 label = labels[row];
        if (!a.skip(label)) continue;
        const T f = Traits<T>::store(a.fill(label));
        if (g.rank == 0) loss[row] = f;
        if (has_grad) row_store(grad + row * n, n, g.rank, g.size, [&](i64) { return f; });
    }
}

// =======================================================================================
// Column layout (inner > 1).  Element (o, c, i) of x, probs and grad sits at
// (o*n + c)*inner + i; labels and loss are (outer, inner).  Block (bx, by): x walks inner,
// y splits the classes; blocks loop over tiles = outer * ceil(inner / bx).
// Dynamic shared memory: bx*by*sizeof(XentState<acc>) + 16 (4 values per thread).
// =======================================================================================
// Merge the states of the by threads sharing threadIdx.x, in threadIdx.y order.
template <typename S> CUSOFT_DEV S col_merge(S v, S* slots)
{
    const int bx = (int)blockDim.x, tx = (int)threadIdx.x;
    slots[threadIdx.y * bx + tx] = v;
    __syncthreads();
    S r = slots[tx];
#pragma unroll 1
    for (int k = 1; k < (int)blockDim.y; ++k) r = S::merge(r, slots[k * bx + tx]);
    __syncthreads();
    return r;
}

template <typename T>
__global__ void CUSOFT_BOUNDS(512)
xent_col(CUSOFT_XENT_PARAMS, i64 outer, i64 n, i64 inner)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(XentState<A>, slots);
    const XentArgs<T> a = xent_args(x, labels, probs, has_probs, weight, has_weight, ignore_index, smoothing, loss,
                                    grad, has_grad, grad_scale, scale_step, n);
    const int bx = (int)blockDim.x;
    const i64 itiles = (inner + bx - 1) / bx;
    for (i64 t = blockIdx.x; t < outer * itiles; t += gridDim.x) {
        const i64 o = t / itiles, i = (t % itiles) * bx + threadIdx.x;
        const bool active = i < inner;
        const i64 label = (active && !has_probs) ? labels[o * inner + i] : -1;
        // Columns of one block differ (ignored or not, active or not), but every thread
        // takes part in both merges below: they contain barriers.
        const bool live = active && !a.skip(label);
        const i64 base = o * n * inner + i;
        const T* pr = probs + (has_probs ? base : 0);
        XentState<A> st;
        st.init();
        if (live)
#pragma unroll 1
            for (i64 j = threadIdx.y; j < n; j += blockDim.y) {
                const A v = Traits<T>::load(x[base + j * inner]);
                st.ms.add(v);
                st.w += a.wt(j, label, pr, inner);
                st.v = (j == label) ? v : st.v;
            }
        st = col_merge(st, slots);
        const LogpRule<A> lp(st.ms.m, st.ms.s);
        SumOp<A> l;
        l.v = A(0);
        if (live && a.label_only()) {
            if (threadIdx.y == 0) l.v = loss_term(a.wt(label, label, pr, inner), lp(st.v));
        } else if (live) {
            const A sc = has_grad ? a.scale_of(o * inner + i) : A(0);
#pragma unroll 1
            for (i64 j = threadIdx.y; j < n; j += blockDim.y) {
                const i64 e = base + j * inner;
                const A wt = a.wt(j, label, pr, inner), logp = lp(Traits<T>::load(x[e]));
                l.v += loss_term(wt, logp);
                if (has_grad) grad[e] = grad_value<T>(sc, logp, st.w, wt);
            }
        } else if (active && has_grad) {
            const T f = Traits<T>::store(a.fill(label));
#pragma unroll 1
            for (i64 j = threadIdx.y; j < n; j += blockDim.y) grad[base + j * inner] = f;
        }
        l = col_merge(l, reinterpret_cast<SumOp<A>*>(slots));
        if (active && threadIdx.y == 0) loss[o * inner + i] = Traits<T>::store(live ? -l.v : a.fill(label));
    }
}

// =======================================================================================
// Split rows (row layout, few very long rows): block b of the grid-stride loop owns
// chunk b % chunks of row b / chunks, i.e. classes [start, start + len) with
// start = chunk * chunk_len.  Two launches, no atomics:
//   xent_split_stats  one partial per (row, chunk) into ws (5 values: m, s, W, D, K);
//   xent_split_apply  every block of a row merges the row's partials in the same order
//                     (same bits everywhere), writes its gradient chunk, and the chunk-0
//                     block writes the loss.
// Loss from the partials: with m the row max and s = sum exp(x - m),
//   loss = -sum_c w_c t_c (x_c - m - log s) = W log s - sum_c w_c t_c (x_c - m),
// and a chunk's part of the last sum is D + W_chunk (m_chunk - m), where
// D = sum w_c t_c (x_c - m_chunk) is taken against the chunk max (so +-1000 logits do not
// cancel at the magnitude of x).  Terms with w_c t_c == 0 are skipped.  A chunk whose max
// is not finite stores D = sum w_c t_c x_c instead; the special rows use it (LogpRule's
// cases: an all -inf or NaN row gives NaN when it has a term; a +inf max gives NaN when a
// term sits at a +inf logit, else +inf).  K counts the terms, so a row without any gives 0.
// Ignored label rows: stats skip them (ws is not read); apply writes loss 0 and grad 0 (NaN
// for a label outside [0, n)).
// grad may alias x: stats reads all of x before the apply launch; apply reads an element
// of its own chunk before the same thread overwrites it.
// Dynamic shared memory: kScratchBytes (4 values per warp).
// =======================================================================================
// ws layout: 5 values per (row, chunk), row-major: m, s, W, D, K.
static constexpr int kXentSplitVals = 5;

template <typename T>
__global__ void CUSOFT_BOUNDS(512)
xent_split_stats(CUSOFT_XENT_PARAMS, acc_t<T>* ws, i64 rows, i64 n, i64 chunks, i64 chunk_len)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    const XentArgs<T> a = xent_args(x, labels, probs, has_probs, weight, has_weight, ignore_index, smoothing, loss,
                                    grad, has_grad, grad_scale, scale_step, n);
    for (i64 b = blockIdx.x; b < rows * chunks; b += gridDim.x) {
        const i64 row = b / chunks, start = (b % chunks) * chunk_len;
        const i64 len = n - start < chunk_len ? n - start : chunk_len;
        const i64 label = has_probs ? -1 : labels[row];
        if (a.skip(label)) continue;  // uniform; apply writes the row
        const T* xc = x + row * n + start;
        const T* pr = probs + (has_probs ? row * n : 0);
        XentState<A> st;
        st.init();
        row_visit(xc, len, g.rank, g.size, [&](i64 j, T v) {
            const A wt = a.wt(start + j, label, pr, 1);
            st.ms.add(Traits<T>::load(v));
            st.w += wt;
            st.v += wt == A(0) ? A(0) : A(1);
        });
        st = g.reduce(st);
        // Second look at the chunk (cache-hot): the terms against the chunk max.
        const A mc = st.ms.m;
        const bool fin = is_finite(mc);
        SumOp<A> d;
        d.v = A(0);
        row_visit(xc, len, g.rank, g.size, [&](i64 j, T v) {
            const A wt = a.wt(start + j, label, pr, 1), xv = Traits<T>::load(v);
            d.v += loss_term(wt, fin ? xv - mc : xv);
        });
        d = g.reduce(d);
        if (g.rank == 0) {
            A* o = ws + kXentSplitVals * b;
            o[0] = st.ms.m;
            o[1] = st.ms.s;
            o[2] = st.w;
            o[3] = d.v;
            o[4] = st.v;
        }
    }
}

template <typename T>
__global__ void CUSOFT_BOUNDS(512)
xent_split_apply(CUSOFT_XENT_PARAMS, const acc_t<T>* ws, i64 rows, i64 n, i64 chunks, i64 chunk_len)
{
    typedef acc_t<T> A;
    CUSOFT_DYN_SMEM(unsigned char, smem);
    const BlockGroup g(smem);
    const XentArgs<T> a = xent_args(x, labels, probs, has_probs, weight, has_weight, ignore_index, smoothing, loss,
                                    grad, has_grad, grad_scale, scale_step, n);
    for (i64 b = blockIdx.x; b < rows * chunks; b += gridDim.x) {
        const i64 row = b / chunks, chunk = b % chunks, start = chunk * chunk_len;
        const i64 len = n - start < chunk_len ? n - start : chunk_len;
        if (!has_grad && chunk != 0) continue;  // nothing to write (uniform)
        const i64 label = has_probs ? -1 : labels[row];
        T* gc = grad + row * n + start;
        if (a.skip(label)) {
            const T f = Traits<T>::store(a.fill(label));
            if (chunk == 0 && g.rank == 0) loss[row] = f;
            if (has_grad) row_store(gc, len, g.rank, g.size, [&](i64) { return f; });
            continue;
        }
        const A* wr = ws + kXentSplitVals * row * chunks;
        XentState<A> st;
        st.init();
#pragma unroll 1
        for (i64 k = g.rank; k < chunks; k += g.size) {
            XentState<A> p;
            p.ms.m = wr[kXentSplitVals * k];
            p.ms.s = wr[kXentSplitVals * k + 1];
            p.w = wr[kXentSplitVals * k + 2];
            p.v = wr[kXentSplitVals * k + 4];
            st = XentState<A>::merge(st, p);
        }
        st = g.reduce(st);  // same inputs, same order in every block of the row
        const LogpRule<A> lp(st.ms.m, st.ms.s);
        if (chunk == 0) {
            // sum_c w_c t_c (x_c - m) over the chunks (finite max), or the raw sums of the
            // chunks without a finite max (+inf max: NaN iff a term sits at +inf).
            SumOp<A> t;
            t.v = A(0);
#pragma unroll 1
            for (i64 k = g.rank; k < chunks; k += g.size) {
                const A mk = wr[kXentSplitVals * k], dk = wr[kXentSplitVals * k + 3];
                const A wk = wr[kXentSplitVals * k + 2];
                if (lp.mode == 0)
                    t.v += is_finite(mk) ? dk + (wk == A(0) ? A(0) : wk * (mk - lp.m)) : dk;
                else if (!is_finite(mk))
                    t.v += dk;
            }
            t = g.reduce(t);
            if (g.rank == 0) {
                A l;
                if (st.v == A(0))
                    l = A(0);
                else if (lp.mode == 0)
                    l = st.w * lp.ls - t.v;
                else if (lp.mode == 2)
                    l = cu_inf<A>() - t.v;
                else
                    l = cu_nan<A>();
                loss[row] = Traits<T>::store(l);
            }
        }
        if (has_grad) {
            const T* pr = probs + (has_probs ? row * n : 0);
            // f (p W - w t) = p (f W) - w (f t): the row's factor f goes into W and the targets
            // once (kept in a register of its own it made the double kernel spill).
            const A f = a.scale_of(row), fW = f * st.w;
            const XentArgs<T> b = a.scaled(f);
            // elementwise: the pack of x is in registers before gc[j] is written (aliasing);
            // one pack in flight: the gradient body inlined four times spills on sm_90
            row_visit<1>(x + row * n + start, len, g.rank, g.size, [&](i64 j, T v) {
                gc[j] = Traits<T>::store(cu_exp(lp(Traits<T>::load(v))) * fW - b.wt(start + j, label, pr, 1));
            });
        }
    }
}
