"""logsumexp speed: cusoft against SciPy (CPU) and cupyx / PyTorch (GPU) in the same run.

    python bench/bench_logsumexp.py [--out bench/results]

Validates each configuration against SciPy in float64 first; writes
``<device>-<date>-logsumexp.json`` and prints a table.  Bytes moved: one read of the input.
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
sys.path.insert(0, os.path.dirname(__file__))
import cusoft  # noqa: E402
from bench_softmax import _best, cpu_copy_bw  # noqa: E402
from cusoft._check import TOLERANCE, error  # noqa: E402

CASES = [((4096, 4096), 1), ((65536, 256), 1), ((1, 1 << 24), None), ((4096, 4096), 0)]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    read_bw = cpu_copy_bw()               # a copy reads and writes: half its time per pass
    rows = []
    for dt in (np.float32, np.float64):
        for shape, axis in CASES:
            x = (rng.standard_normal(shape) * 4).astype(dt)
            ref = sp.logsumexp(x.astype(np.float64), axis=axis)
            err = error(cusoft.logsumexp(x, axis=axis), ref, np.dtype(dt))
            assert err <= TOLERANCE[np.dtype(dt)], (shape, dt, err)
            t_sp, _ = _best(lambda: sp.logsumexp(x, axis=axis), reps=5)
            t_cu, _ = _best(lambda: cusoft.logsumexp(x, axis=axis), reps=5)
            rows.append(dict(shape=list(shape), axis=axis, dtype=np.dtype(dt).name,
                             max_error=err, scipy_s=t_sp, cusoft_s=t_cu,
                             speedup_vs_scipy=t_sp / t_cu,
                             fraction_of_read_bw=x.nbytes / t_cu / read_bw))
    res = dict(date=_dt.date.today().isoformat(), device="cpu", read_GBps=read_bw / 1e9,
               rows=rows)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"cpu-{res['date']}-logsumexp.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print(f"{'shape':>14s} {'axis':>5s} {'dtype':8s} {'scipy ms':>9s} {'cusoft ms':>10s} "
          f"{'x scipy':>8s} {'of read bw':>10s}")
    for r in rows:
        print(f"{str(tuple(r['shape'])):>14s} {str(r['axis']):>5s} {r['dtype']:8s} "
              f"{r['scipy_s']*1e3:9.2f} {r['cusoft_s']*1e3:10.2f} {r['speedup_vs_scipy']:8.2f} "
              f"{r['fraction_of_read_bw']:10.0%}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
