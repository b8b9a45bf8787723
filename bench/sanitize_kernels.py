"""Every RawKernel family once, on shapes that reach each variant, for compute-sanitizer.

    compute-sanitizer --tool memcheck python bench/sanitize_kernels.py [--small]
Exits non-zero if any result disagrees with SciPy (float64), so a race shows either in the
sanitizer's report or here.
"""

import sys

import numpy as np
import scipy.special as sp


def main(small):
    import cupy as cp

    import cusoft
    from cusoft._check import error

    rng = np.random.default_rng(0)
    shapes = [((64, 33), 1), ((32, 700), 1), ((4, 20000), 1), ((1, 300001), None),
              ((50, 7, 9), 1), ((300, 40), 0)]
    if small:
        shapes = [(s, a) for s, a in shapes if np.prod(s) <= 100_000]
    bad = 0
    for shape, axis in shapes:
        for dt in (np.float16, np.float32, np.float64):
            x = (rng.standard_normal(shape) * 5).astype(dt)
            x.flat[::13] = -np.inf
            xd = cp.asarray(x)
            x64 = x.astype(np.float64)
            with np.errstate(all="ignore"):
                pairs = [
                    (cusoft.softmax(xd, axis=axis), sp.softmax(x64, axis=axis)),
                    (cusoft.log_softmax(xd, axis=axis), sp.log_softmax(x64, axis=axis)),
                    (cusoft.logsumexp(xd, axis=axis), sp.logsumexp(x64, axis=axis)),
                ]
                y = sp.softmax(x64 / 100, axis=axis)
                dy = rng.standard_normal(shape)
                ref = y * (dy - np.sum(dy * y, axis=axis, keepdims=True))
                pairs.append((cusoft.softmax_backward(cp.asarray(y.astype(dt)),
                                                      cp.asarray(dy.astype(dt)), axis=axis),
                              ref))
            for got, ref in pairs:
                e = error(cp.asnumpy(cp.asarray(got)), ref, np.dtype(dt))
                if not e <= (1e-2 if dt == np.float16 else 1e-4):
                    print(f"MISMATCH {shape} axis={axis} {np.dtype(dt).name}: {e:.3g}")
                    bad += 1
    lab = cp.asarray(rng.integers(0, 50, 64))
    cusoft.softmax_cross_entropy(cp.asarray(rng.standard_normal((64, 50))), lab,
                                 return_grad=True)
    try:
        from cusoft._attention import attention

        q = cp.asarray(rng.standard_normal((1, 2, 70, 40)).astype(np.float32))
        attention(q, q, q, causal=True)
        # float16: the tensor-core kernel (cp.async rows at D = 40, element loads at D = 19)
        # and the CUDA-core one
        for d in (40, 19):
            h = cp.asarray(rng.standard_normal((1, 2, 150, d)).astype(np.float16))
            attention(h, h, h, causal=True)
            attention(h, h, h, mask=cp.asarray(rng.random((150, 150)) > 0.3))
            attention(h, h, h, method="fma")
            # float32 3xTF32 and float64 DMMA tensor-core kernels
            f = h.astype(np.float32)
            attention(f, f, f, causal=True, method="mma")
            dd = h.astype(np.float64)
            attention(dd, dd, dd, causal=True)
    except ImportError:
        pass
    cp.cuda.runtime.deviceSynchronize()
    print("sanitize run done,", bad, "mismatches")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main("--small" in sys.argv))
