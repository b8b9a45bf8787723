"""The contract every cusoft backend implements.

The public functions (``cusoft/_softmax.py`` …) validate arguments with NumPy semantics,
bring the data into the *canonical layout* and call one method of a backend object.
A backend never sees an axis argument, a tuple of axes or a non-contiguous array.

Canonical layout
----------------
Every array argument is a C-contiguous 3-D array ``(outer, n, inner)`` of the backend's own
array type (NumPy for ``cpu`` and ``simt``, CuPy for ``cupy``, a ``__cuda_array_interface__``
device array for ``numba``) and of one compute dtype: float16, float32 or float64.
The reduction runs over axis 1 (length ``n``):

* ``inner == 1``  -> the *row* layout: each of the ``outer`` rows is contiguous;
* ``inner > 1``   -> the *column* layout: element (o, j, i) sits at ``(o*n + j)*inner + i``;
  kernels let consecutive threads walk ``i`` so loads stay coalesced.

Reduced outputs (logsumexp, partials, per-row losses) are C-contiguous ``(outer, inner)``.
``out`` arrays may alias inputs (same memory, same layout): a kernel must read everything it
needs of a row before it writes that row (row-in-registers or shared-memory variants do this
naturally; a streaming variant must not write before its last read of the row).

Special values (SciPy of the installed version is the oracle; see ``cusoft/_numerics.py``,
which states each rule once, in NumPy, and is used by the CPU backend and the tests):

* softmax: a row whose max is not finite (+inf, -inf for an all -inf row, or NaN) is all NaN.
* log_softmax: let m = row max.  NaN in the row -> all NaN.  m == -inf -> all NaN.
  m == +inf -> NaN where x == +inf, -inf elsewhere.  Otherwise x - m - log(sum(exp(x - m))).
* logsumexp (with optional weights b, same shape as x after broadcasting):
  elements with b == 0 are dropped (treated as x = -inf).  m = max; c = sum of b over the
  elements equal to m; r = sum of b*exp(x - m) over the others; q = r / c (q = 0 when r == 0);
  sgn = sign(q + 1) * sign(c); if q < -1: q = -q - 2; out = log1p(q) + log(|c|) + m.
  When out is not finite SciPy falls back to the direct sum D = sum(b*exp(x)) (unshifted,
  so it may overflow): out = log(|D|) if return_sign else log(D), sgn = sign(D).
  Without return_sign, sgn < 0 gives out = NaN.  (Kernels take the direct pass only for the
  rare rows whose result is not finite.)
* partial state (public ``logsumexp_partial``/``merge_partials``): m = max, s = sum over the
  row of (1 if x == m else exp(x - m)); so an all -inf row is (-inf, n) and an all-finite row
  has s >= 1.  Merge: M = max(m1, m2); s = s1*w1 + s2*w2 with w = 1 if m == M else exp(m - M).

Accumulation: float16 in float32, float32 in float32, float64 in float64.
"""

from __future__ import annotations


class Backend:
    """Base class; a concrete backend overrides every method it supports."""

    #: short name used by ``backend=`` and ``use_backend``
    name = "abstract"

    def available(self):
        """Return ``(ok, reason)``: whether the backend can run here and, if not, why."""
        raise NotImplementedError

    # -- forward ---------------------------------------------------------------------------
    def softmax(self, x, out, log):
        """Write softmax (``log=False``) or log_softmax (``log=True``) of x into out."""
        raise NotImplementedError(f"{self.name}: softmax")

    def logsumexp(self, x, b, out, sign):
        """Reduce axis 1.  b: None or an array like x.  out: (outer, inner).
        sign: None (return_sign=False: negative sums give NaN) or an (outer, inner) array."""
        raise NotImplementedError(f"{self.name}: logsumexp")

    def partial(self, x, b, m, c, r):
        """The mergeable state of each row: m = max (b == 0 elements dropped), c = sum of b
        at the maxima (the count when b is None), r = sum of b*exp(x - m) elsewhere.
        m, c, r: (outer, inner) arrays of x.dtype (float16 results are stored in float32)."""
        raise NotImplementedError(f"{self.name}: partial")

    # -- backward --------------------------------------------------------------------------
    def softmax_backward(self, y, dy, out, log):
        """log=False: out = y*(dy - sum(dy*y)), y the softmax output.
        log=True: out = dy - exp(y)*sum(dy), y the log_softmax output."""
        raise NotImplementedError(f"{self.name}: softmax_backward")

    # -- cross-entropy ---------------------------------------------------------------------
    def cross_entropy(self, x, labels, probs, weight, ignore_index, smoothing, loss, grad,
                      grad_scale):
        """Fused softmax cross-entropy over axis 1 (the class axis, length C = n).

        x: logits (outer, C, inner).  Exactly one of
          labels: int64 (outer, inner) class indices (rows equal to ignore_index give loss 0,
                  grad 0, and ignore_index is -2**63 when there is none), or
          probs:  (outer, C, inner) target probabilities, x.dtype.
        weight: None or float (C,) class weights in the compute dtype.
        smoothing: label smoothing eps in [0, 1]; the target becomes (1-eps)*t + eps/C.
        loss: (outer, inner) per-row loss, written: -sum_c w_c t_c log_softmax(x)_c.
        grad: None or like x; written grad_scale * (p*sum_c(w_c t_c) - w*t), p = softmax(x),
          where grad_scale is an (outer, inner) float array or a Python float (the reduction's
          1/N or 1/sum(w) factor, computed by the caller).
        """
        raise NotImplementedError(f"{self.name}: cross_entropy")

    # -- attention -------------------------------------------------------------------------
    def attention(self, q, k, v, mask, bias, out, lse, scale, causal):
        """See ``cusoft/_attention.py`` for the layout it receives."""
        raise NotImplementedError(f"{self.name}: attention")
