"""``python -m cusoft check``: every public function on every usable backend against SciPy.

Inputs are random and adversarial (outliers of +-1000, masked -inf entries, all -inf rows,
NaN and +inf rows, odd lengths, every axis); the reference is SciPy in float64.  One table row
per (function, backend, dtype) with the worst error; the exit status is 1 if any row fails.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from . import _dispatch

#: max |got - ref| / max(1, |ref|) allowed, per result dtype (the one tolerance table)
TOLERANCE = {np.dtype(np.float16): 2e-3, np.dtype(np.float32): 2e-6,
             np.dtype(np.float64): 1e-13}

_DTYPES = (np.float16, np.float32, np.float64)


def error(got, ref, dtype):
    """Worst relative error, or inf when NaN/inf positions differ from the reference."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return np.inf
    ref = np.where(np.abs(ref) > np.finfo(dtype).max, np.copysign(np.inf, ref), ref)
    if not np.array_equal(np.isnan(got), np.isnan(ref)):
        return np.inf
    inf = np.isinf(ref)
    if not np.array_equal(got[inf], ref[inf]):
        return np.inf
    fin = np.isfinite(ref)
    if not fin.any():
        return 0.0
    return float(np.max(np.abs(got[fin] - ref[fin]) / np.maximum(1.0, np.abs(ref[fin]))))


def _inputs(small, rng):
    """(x, axis) cases: shapes reach the warp/block/online/split/column variants unless
    ``small`` (emulated backends), adversarial rows included."""
    shapes = [((7, 33), 1), ((5, 6, 7), 0), ((3, 129), -1), ((2, 3, 4, 5), (1, 3)),
              ((4, 100), None)]
    if not small:
        shapes += [((257, 1000), 1), ((64, 5000), 1), ((2, 70001), 1), ((300, 40), 0),
                   ((1, 300000), None)]
    for shape, axis in shapes:
        x = rng.standard_normal(shape) * 5
        flat = x.reshape(-1)
        flat[:: 11] = -np.inf
        flat[3] = 1000.0
        flat[-2] = -1000.0
        yield x, axis
    # adversarial rows along the last axis
    x = rng.standard_normal((6, 17))
    x[1] = -np.inf
    x[2, 4] = np.nan
    x[3, 5] = np.inf
    x[4, :] = 1000.0
    x[5, 0] = -1000.0
    yield x, 1


def _cases(small, rng):
    """(name, input, run(x, backend), reference(x as float64)) for every public function."""
    import scipy.special as sp

    import cusoft

    def ref_backward(y, dy, axis, log):
        if log:
            return dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)
        return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))

    def flat_pair(pair):
        return np.concatenate([np.ravel(v) for v in pair])

    for x, a in _inputs(small, rng):
        b = rng.choice([-1.0, 0.0, 0.5, 2.0], size=x.shape)
        yield ("softmax", x, lambda xx, be, a=a: cusoft.softmax(xx, axis=a, backend=be),
               lambda x64, a=a: sp.softmax(x64, axis=a))
        yield ("log_softmax", x,
               lambda xx, be, a=a: cusoft.log_softmax(xx, axis=a, backend=be),
               lambda x64, a=a: sp.log_softmax(x64, axis=a))
        yield ("logsumexp", x, lambda xx, be, a=a: cusoft.logsumexp(xx, axis=a, backend=be),
               lambda x64, a=a: sp.logsumexp(x64, axis=a))
        yield ("logsumexp(b, sign)", x,
               lambda xx, be, a=a, b=b: flat_pair(cusoft.logsumexp(
                   xx, axis=a, b=b.astype(xx.dtype), return_sign=True, backend=be)),
               lambda x64, a=a, b=b: flat_pair(sp.logsumexp(
                   x64, axis=a, b=b.astype(x64.dtype), return_sign=True)))
        # gradients: the input is a softmax output of tame logits
        z = np.nan_to_num(x, nan=0.0, posinf=3.0, neginf=-3.0) / 300.0
        dy = rng.standard_normal(x.shape)
        for log, fname in ((False, "softmax_backward"), (True, "log_softmax_backward")):
            y = (sp.log_softmax if log else sp.softmax)(z, axis=a)
            fn = getattr(cusoft, fname)
            yield (fname, y,
                   lambda yy, be, a=a, dy=dy, fn=fn: fn(yy, dy.astype(yy.dtype), axis=a,
                                                      backend=be),
                   lambda y64, a=a, dy=dy, log=log: ref_backward(
                       y64, dy.astype(y64.dtype), a, log))
    # cross-entropy: labels with ignore_index and smoothing, loss and gradient per row
    x = rng.standard_normal((37, 11)) * 4
    x[3, 2] = 1000.0
    lab = rng.integers(0, 11, 37)
    lab[5] = -100
    C = x.shape[1]

    def ref_xent(x64):
        logp = sp.log_softmax(x64, axis=1)
        keep = lab != -100
        t = np.eye(C)[np.where(keep, lab, 0)] * 0.9 + 0.1 / C
        t *= keep[:, None]
        loss = -np.sum(t * logp, axis=1)
        grad = np.exp(logp) * t.sum(axis=1, keepdims=True) - t
        return np.concatenate([loss, grad.ravel()])

    def run_xent(xx, be):
        return flat_pair(cusoft.softmax_cross_entropy(
            xx, lab, axis=1, reduction="none", ignore_index=-100, label_smoothing=0.1,
            return_grad=True, backend=be))

    yield ("softmax_cross_entropy", x, run_xent, ref_xent)

    # attention: GQA, Lq != Lk, causal, a broadcast mask with a fully masked row, a bias
    q = rng.standard_normal((2, 4, 19, 24))
    k = rng.standard_normal((2, 2, 23, 24))
    v = rng.standard_normal((2, 2, 23, 20))
    mask = rng.random((1, 1, 19, 23)) > 0.2
    mask[..., 3, :] = False
    bias = rng.standard_normal((4, 1, 23))

    def ref_attention(q64, causal):
        kk = np.repeat(k, 2, axis=1)
        vv = np.repeat(v, 2, axis=1)
        s = q64 @ kk.swapaxes(-1, -2) / np.sqrt(q64.shape[-1]) + bias
        keep = mask & (np.arange(23)[None, :] <= np.arange(19)[:, None] + 4 if causal else True)
        s = np.where(keep, s, -np.inf)
        p = sp.softmax(s, axis=-1)
        return np.nan_to_num(p, nan=0.0) @ vv

    for causal in (False, True):
        yield (f"attention{' causal' if causal else ''}", q,
               lambda qq, be, c=causal: cusoft.attention(
                   qq, k.astype(qq.dtype), v.astype(qq.dtype), causal=c, mask=mask,
                   bias=bias.astype(qq.dtype), backend=be),
               lambda q64, c=causal: ref_attention(q64, c))


def _to_host(a):
    if hasattr(a, "dask"):
        import dask

        with dask.config.set(scheduler="synchronous"):
            a = a.compute()
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


def _as_input(xx, be):
    """The array a backend is given: NumPy, or for ``dask`` a Dask array cut in two along
    every axis (so reductions cross chunks); the backend name to pass on."""
    if be != "dask":
        return xx, be
    import dask.array as da

    return da.from_array(xx, chunks=tuple(max(1, (s + 1) // 2) for s in xx.shape)), None


def usable_backends():
    """Backends that can run here, with the reason for the others."""
    usable, skipped = [], {}
    try:
        import dask.array  # noqa: F401

        usable.append("dask")
    except ImportError as exc:
        skipped["dask"] = f"dask is not installed ({exc})"
    for name in ("cpu", "simt", "cupy", "numba"):
        ok, why = _dispatch.probe(name)
        if ok and name == "numba":
            # The numba backend in the CUDA simulator is proven by the test suite; here only
            # a real GPU counts.
            try:
                from numba import cuda

                ok = bool(cuda.is_available()) and not cuda.simulator_enabled
            except Exception:  # pragma: no cover - broken numba-cuda
                ok = False
            why = why if ok else "no CUDA GPU (the simulator runs in the test suite)"
        (usable.append(name) if ok else skipped.__setitem__(name, why))
    return usable, skipped


def run(backends=None, file=None, seed=0):
    """Run the matrix; print the table; return True when every row passes."""
    out = file or sys.stdout
    usable, skipped = usable_backends()
    if backends:
        usable = [b for b in backends if b in usable or b == "cpu"]
    usable.sort(key=lambda b: b == "dask")  # the device backends first, Dask last
    rows = []
    t0 = time.perf_counter()
    for be in usable:
        small = be == "simt"
        for dt in _DTYPES:
            rng = np.random.default_rng(seed)
            worst = {}
            for name, x, fn, ref in _cases(small, rng):
                xx = x.astype(dt)
                if dt == np.float16:
                    xx = np.clip(xx, -6e4, 6e4)
                with np.errstate(all="ignore"):
                    try:
                        got = _to_host(fn(*_as_input(xx, be)))
                        # the reference sees the same rounded input the backend saw; SciPy
                        # run in the input's own precision bounds ill-conditioned cases
                        err = error(got, ref(xx.astype(np.float64)), np.dtype(dt))
                        lowp = error(ref(xx), ref(xx.astype(np.float64)), np.dtype(dt))
                        if dt == np.float64 and np.finfo(np.longdouble).eps < 1e-16:
                            # for double rows, SciPy's own float64 error against extended
                            # precision measures the conditioning
                            lowp = error(ref(xx), ref(xx.astype(np.longdouble)), np.dtype(dt))
                        note = ""
                    except Exception as exc:  # reported as a failing row, not a crash
                        err, lowp, note = np.inf, np.inf, repr(exc)[:60]
                e0, l0, n0 = worst.get(name, (0.0, 0.0, ""))
                worst[name] = (max(err, e0), max(lowp if np.isfinite(lowp) else 0.0, l0),
                               n0 or note)
            for name, (err, lowp, note) in worst.items():
                ok = err <= max(TOLERANCE[np.dtype(dt)], 2 * lowp)
                rows.append((name, be, np.dtype(dt).name, err, lowp, ok, note))
    _table(rows, skipped, time.perf_counter() - t0, out)
    return all(r[5] for r in rows)


def _table(rows, skipped, seconds, out):
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p("error = max |got - ref| / max(1, |ref|) against SciPy in float64; a row passes when it "
      "is <= tol or <= 2x the error of SciPy run in the row's own dtype (scipy err; for "
      "float64 rows, SciPy float64 against SciPy in extended precision)")
    p(f"{'function':24s} {'backend':7s} {'dtype':8s} {'max error':>10s} {'scipy err':>10s} "
      f"{'tol':>6s}  result")
    p("-" * 80)
    for name, be, dt, err, lowp, ok, note in rows:
        tol = TOLERANCE[np.dtype(dt)]
        p(f"{name:24s} {be:7s} {dt:8s} {err:10.2e} {lowp:10.2e} {tol:6.0e}  "
          f"{'pass' if ok else 'FAIL'}" + (f"  {note}" if note else ""))
    for name, why in skipped.items():
        p(f"(backend {name} not run: {why})")
    n_fail = sum(1 for r in rows if not r[5])
    p(f"{len(rows) - n_fail} passed, {n_fail} failed in {seconds:.1f} s")
