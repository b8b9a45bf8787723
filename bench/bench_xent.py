"""Cross-entropy speed on the CPU: cusoft against a SciPy composition, in the same run.

The peer is what a SciPy user writes without cusoft: ``scipy.special.log_softmax``, the
label terms gathered from it, and the gradient ``exp(logp) - onehot`` scaled by 1/N (loss
and gradient of the "mean" reduction).  Both are validated against a float64 reference
first; times are medians, also as a fraction of the measured copy bandwidth (one read of
the logits, one write of the gradient).

    python bench/bench_xent.py [--quick] [--out bench/results]

Writes ``cpu-<date>-xent.json`` into the output folder and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys

import numpy as np
import scipy.special as sp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import cusoft  # noqa: E402
from bench_softmax import _best, cpu_copy_bw  # noqa: E402


def scipy_xent(x, lab, axis):
    """loss and gradient of the mean cross-entropy, the SciPy way (class axis ``axis``)."""
    xr = np.moveaxis(x, axis, -1)
    logp = sp.log_softmax(xr, axis=-1)
    rows = np.arange(lab.size)
    flat = logp.reshape(-1, logp.shape[-1])
    loss = -flat[rows, lab.ravel()].mean()
    g = np.exp(flat)
    g[rows, lab.ravel()] -= 1
    g /= lab.size
    return loss, np.moveaxis(g.reshape(logp.shape), -1, axis)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    copy_bw = cpu_copy_bw()
    cases = [((4096, 4096), 1), ((65536, 256), 1), ((4096, 4096), 0)]
    if args.quick:
        cases = cases[:1]
    rows = []
    for dt in (np.float32, np.float64):
        for shape, axis in cases:
            x = (rng.standard_normal(shape) * 4).astype(dt)
            lab = rng.integers(0, shape[axis], shape[1 - axis])
            want = scipy_xent(x.astype(np.float64), lab, axis)
            got = cusoft.softmax_cross_entropy(x, lab, axis=axis, return_grad=True)
            peer = scipy_xent(x, lab, axis)
            tol = 1e-5 if dt == np.float32 else 1e-12
            for g, p, w in zip(got, peer, want):
                assert np.allclose(g, w, rtol=tol, atol=tol) and np.allclose(p, w, rtol=1e-4,
                                                                              atol=1e-6)
            t_sp, _ = _best(lambda: scipy_xent(x, lab, axis), reps=5)
            t_cu, _ = _best(lambda: cusoft.softmax_cross_entropy(x, lab, axis=axis,
                                                                 return_grad=True), reps=5)
            t_loss, _ = _best(lambda: cusoft.softmax_cross_entropy(x, lab, axis=axis), reps=5)
            rows.append(dict(shape=list(shape), axis=axis, dtype=np.dtype(dt).name,
                             scipy_s=t_sp, cusoft_s=t_cu, cusoft_loss_only_s=t_loss,
                             speedup_vs_scipy=t_sp / t_cu,
                             fraction_of_copy_bw=(2 * x.nbytes / t_cu) / copy_bw))
    date = _dt.date.today().isoformat()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"cpu-{date}-xent.json")
    with open(path, "w") as f:
        json.dump(dict(date=date, copy_GBps=copy_bw / 1e9, cores=os.cpu_count(), rows=rows),
                  f, indent=1)
    print(f"CPU copy bandwidth {copy_bw / 1e9:.1f} GB/s (read + write); loss + gradient, "
          f"mean over integer labels")
    print(f"{'shape':>14s} {'axis':>4s} {'dtype':8s} {'scipy ms':>9s} {'cusoft ms':>10s} "
          f"{'x scipy':>8s} {'of copy bw':>10s} {'loss only ms':>12s}")
    for r in rows:
        print(f"{str(tuple(r['shape'])):>14s} {r['axis']:>4d} {r['dtype']:8s} "
              f"{r['scipy_s'] * 1e3:9.2f} {r['cusoft_s'] * 1e3:10.2f} "
              f"{r['speedup_vs_scipy']:8.2f} {r['fraction_of_copy_bw']:10.0%} "
              f"{r['cusoft_loss_only_s'] * 1e3:12.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
