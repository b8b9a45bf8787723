"""Softmax speed: cusoft against the peers measured in the same run.

CPU (always): cusoft's NumPy path against ``scipy.special.softmax``; each time also as a
fraction of the measured copy bandwidth (bytes read + written, one pass each way).
GPU (when CuPy sees one): the fused RawKernels, the ``3pass`` baseline, CuPy's
``cupyx.scipy.special.softmax`` and PyTorch's ``softmax`` if importable, over (rows x cols)
from 1 x 2^24 to 2^16 x 256 in float16/32/64, as a fraction of the device-to-device copy
bandwidth.  Every configuration is validated against a float64 reference before it is timed.

    python bench/bench_softmax.py [--cpu-only] [--quick] [--out bench/results]

Writes ``<device>-<date>-softmax.json`` into the output folder and prints a table.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time

import numpy as np
import scipy.special as sp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import cusoft  # noqa: E402
from cusoft._check import TOLERANCE, error  # noqa: E402


def _best(fn, reps=7, warm=2):
    for _ in range(warm):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(min(ts))


def cpu_copy_bw():
    """Bytes per second (read + written) of a large in-memory copy: the CPU's ceiling."""
    a = np.random.default_rng(0).standard_normal(1 << 24).astype(np.float32)
    b = np.empty_like(a)
    t, _ = _best(lambda: np.copyto(b, a))
    return 2 * a.nbytes / t


def cpu_rows(quick):
    rng = np.random.default_rng(0)
    shapes = [((4096, 4096), 1), ((65536, 256), 1), ((256, 65536), 1), ((1, 1 << 24), None),
              ((4096, 4096), 0)]
    if quick:
        shapes = [((4096, 4096), 1)]
    copy_bw = cpu_copy_bw()
    rows = []
    for dt in (np.float32, np.float64):
        for shape, axis in shapes:
            x = (rng.standard_normal(shape) * 4).astype(dt)
            x.flat[:: 1009] = 30.0          # outliers: probabilities are not all tiny
            ref = sp.softmax(x.astype(np.float64), axis=axis)
            err = error(cusoft.softmax(x, axis=axis), ref, np.dtype(dt))
            assert err <= TOLERANCE[np.dtype(dt)], (shape, dt, err)
            t_sp, _ = _best(lambda: sp.softmax(x, axis=axis), reps=5)
            t_cu, _ = _best(lambda: cusoft.softmax(x, axis=axis), reps=5)
            out = np.empty_like(x)
            t_out, _ = _best(lambda: cusoft.softmax(x, axis=axis, out=out), reps=5)
            rows.append(dict(device="cpu", shape=list(shape), axis=axis, dtype=np.dtype(dt).name,
                             max_error=err, scipy_s=t_sp, cusoft_s=t_cu, cusoft_out_s=t_out,
                             speedup_vs_scipy=t_sp / t_cu,
                             fraction_of_copy_bw=(2 * x.nbytes / t_cu) / copy_bw))
    return rows, dict(copy_GBps=copy_bw / 1e9, cores=os.cpu_count())


def gpu_rows(quick):
    import cupy as cp

    try:
        import cupyx.scipy.special as cxs
    except ImportError:  # pragma: no cover
        cxs = None
    try:
        import torch

        has_torch = torch.cuda.is_available()
    except ImportError:
        torch, has_torch = None, False

    def gbench(fn, reps=50):
        for _ in range(3):
            fn()
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        ts = []
        for _ in range(reps):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            ts.append(cp.cuda.get_elapsed_time(start, stop) * 1e-3)
        return float(np.median(ts))

    big = cp.empty(1 << 28, cp.uint8)
    big2 = cp.empty_like(big)
    copy_bw = 2 * big.nbytes / gbench(lambda: cp.copyto(big2, big))
    del big, big2
    shapes = [(1, 1 << 24), (16, 1 << 20), (256, 65536), (4096, 4096), (16384, 4096),
              (65536, 1024), (65536, 256)]
    if quick:
        shapes = [(16384, 4096), (1, 1 << 24)]
    rows = []
    rng = cp.random.default_rng(0)
    for dt in (cp.float16, cp.float32, cp.float64):
        for shape in shapes:
            x = (rng.standard_normal(shape, dtype=cp.float32) * 4).astype(dt)
            axis = 1
            # validate on a sample of rows (rows are independent): keeps the float64 reference
            # cheap on 2^24..2^26-element inputs
            sample = slice(0, min(64, shape[0]))
            ref = sp.softmax(cp.asnumpy(x[sample]).astype(np.float64), axis=axis)
            row = dict(device="gpu", shape=list(shape), dtype=np.dtype(dt).name)
            bytes_moved = 2 * x.nbytes
            peers = {"cusoft": lambda: cusoft.softmax(x, axis=axis)}
            try:
                cusoft.softmax(x, axis=axis, method="3pass")
                peers["cusoft_3pass"] = lambda: cusoft.softmax(x, axis=axis, method="3pass")
            except (TypeError, ValueError):
                pass
            try:  # the Numba-CUDA fallback on the same (CAI, zero-copy) array
                cusoft.softmax(x, axis=axis, backend="numba")
                peers["cusoft_numba"] = lambda: cusoft.softmax(x, axis=axis, backend="numba")
            except Exception as exc:
                row["cusoft_numba_skipped"] = f"{type(exc).__name__}: {exc}"[:120]
            if cxs is not None:
                peers["cupyx"] = lambda: cxs.softmax(x, axis=axis)
            if has_torch:
                tx = torch.as_tensor(x, device="cuda")
                peers["torch"] = lambda: torch.softmax(tx, dim=axis)
            for name, fn in peers.items():
                got = cp.asnumpy(cp.asarray(fn())[sample])
                err = error(got, ref, np.dtype(dt))
                row[f"{name}_error"] = err
                if not err <= max(TOLERANCE[np.dtype(dt)], 1e-2 if dt == cp.float16 else 0):
                    row[f"{name}_s"] = None
                    continue
                t = gbench(fn)
                row[f"{name}_s"] = t
                row[f"{name}_fraction_of_copy_bw"] = bytes_moved / t / copy_bw
            if row.get("cusoft_s"):
                for peer in ("cupyx", "torch", "cusoft_3pass", "cusoft_numba"):
                    if row.get(f"{peer}_s"):
                        row[f"speedup_vs_{peer}"] = row[f"{peer}_s"] / row["cusoft_s"]
            rows.append(row)
    dev = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    return rows, dict(copy_GBps=copy_bw / 1e9, gpu=dev["name"].decode())


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-only", action="store_true")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    result = dict(date=_dt.date.today().isoformat(), host=platform.node(),
                  numpy=np.__version__, cusoft=cusoft.__version__)
    rows, meta = cpu_rows(args.quick)
    result["cpu"] = dict(meta, rows=rows)
    device = "cpu"
    if not args.cpu_only:
        try:
            import cupy as cp

            have_gpu = cp.cuda.runtime.getDeviceCount() > 0
        except Exception:
            have_gpu = False
        if have_gpu:
            grows, gmeta = gpu_rows(args.quick)
            result["gpu"] = dict(gmeta, rows=grows)
            device = gmeta["gpu"].replace(" ", "_")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{device}-{result['date']}-softmax.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"CPU copy bandwidth {meta['copy_GBps']:.1f} GB/s (read + write)")
    print(f"{'shape':>14s} {'axis':>4s} {'dtype':8s} {'scipy ms':>9s} {'cusoft ms':>10s} "
          f"{'x scipy':>8s} {'of copy bw':>10s}")
    for r in rows:
        print(f"{str(tuple(r['shape'])):>14s} {str(r['axis']):>4s} {r['dtype']:8s} "
              f"{r['scipy_s']*1e3:9.2f} "
              f"{r['cusoft_s']*1e3:10.2f} {r['speedup_vs_scipy']:8.2f} "
              f"{r['fraction_of_copy_bw']:10.0%}")
    if "gpu" in result:
        g = result["gpu"]
        print(f"\nGPU {g['gpu']}: copy bandwidth {g['copy_GBps']:.0f} GB/s (read + write)")
        for r in g["rows"]:
            parts = [f"{k}={v:.3g}" for k, v in r.items()
                     if k.startswith(("speedup", "cusoft_fraction")) and v is not None]
            print(f"  {str(tuple(r['shape'])):>14s} {r['dtype']:8s} " + " ".join(parts))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
