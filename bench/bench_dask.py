"""softmax(axis=None) of one huge float32 vector: Dask (LocalCluster) vs SciPy on one array.

    python bench/bench_dask.py                       # 2**30 elements (4 GiB), 2 workers
    python bench/bench_dask.py --elements 2**26      # a quick run

Dask side: the input is generated on the workers and persisted (data already distributed,
not timed); the timed step is ``cusoft.softmax(x).persist()``: per-chunk (m, c, r) states,
a tree merge, and a normalisation pass — every task holds one chunk.  Bytes moved: x is read
twice and y written once, 3·n·4 B; "GB/s" below is the ideal 2·n·4 B over the time.

SciPy side (a separate process, so its peak RSS is its own): ``scipy.special.softmax`` on the
same-size NumPy array, which materialises ``x - max``, ``exp``, and the quotient — several
full-size temporaries.  ``cusoft.softmax`` on the NumPy array is timed in the same process.

Validation first (stops on failure): the Dask float32 logsumexp against a float64 reference
built independently (SciPy per chunk in float64, merged with ``np.logaddexp.reduce``), and
softmax on a subsample of chunks against ``exp(x64 - lse64)``.  Results go to
bench/results/bench_dask_<elements>.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOL = 2e-6   # float32 row of the tolerance table: |got - ref| / max(1, |ref|)
#: with 2**30 elements every probability is ~1e-9, so the table's absolute-style bound says
#: little; the subsample is also held to a relative bound (float32 rounding of x - m, exp and
#: the sum: a few 1e-7 times |x - m|)
REL_TOL = 1e-5


def _errors(got, ref):
    """(table error, relative error) of a float32 result against its float64 reference."""
    got = np.asarray(got, np.float64)
    return (float(np.max(np.abs(got - ref) / np.maximum(1.0, np.abs(ref)))),
            float(np.max(np.abs(got - ref) / np.abs(ref))))


def _int(s):
    """An element count: ``1073741824`` or ``2**30``."""
    if "**" in s:
        base, exp = s.split("**")
        return int(base) ** int(exp)
    return int(s)


def _peak_rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # Linux: KiB


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- the SciPy / single-array side (run in a child process) -------------------------------

def numpy_side(n, seed, repeats):
    import scipy.special as sp

    sys.path.insert(0, str(ROOT))
    import cusoft

    x = np.random.default_rng(seed).standard_normal(n, dtype=np.float32)
    base = _rss()
    out = {"input_bytes": x.nbytes, "rss_with_input": base}
    # validate both on a subsample before timing (the full float64 copy would not fit)
    sub = slice(0, min(n, 1 << 20))
    step = 1 << 24    # float64 reference in slices: a full float64 copy would not fit
    lse = float(np.logaddexp.reduce([sp.logsumexp(x[i:i + step].astype(np.float64))
                                     for i in range(0, n, step)]))
    for name, fn in (("scipy", sp.softmax), ("cusoft_numpy", cusoft.softmax)):
        y = fn(x)
        ref = np.exp(x[sub].astype(np.float64) - lse)
        err, rel = _errors(y[sub], ref)
        out[f"{name}_max_err"], out[f"{name}_rel_err"] = err, rel
        if not (err <= TOL and rel <= REL_TOL):
            raise SystemExit(f"{name}: validation failed, errors {err:.3g}, {rel:.3g}")
        del y
    for name, fn in (("cusoft_numpy", cusoft.softmax), ("scipy", sp.softmax)):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            y = fn(x)
            times.append(time.perf_counter() - t0)
            del y
        out[f"{name}_s"] = min(times)
    # ru_maxrss is the high-water mark of the whole process: SciPy ran last, and its peak is
    # above the cusoft one, so it is SciPy's peak (input included)
    out["scipy_peak_rss"] = _peak_rss()
    return out


def _child_numpy(n, seed, repeats):
    code = (f"import sys, json; sys.path.insert(0, {str(HERE)!r}); import bench_dask as b; "
            f"print('JSON' + json.dumps(b.numpy_side({n}, {seed}, {repeats})))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"numpy side failed:\n{res.stdout}\n{res.stderr}")
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("JSON")][-1]
    return json.loads(line[4:])


# -- the Dask side -------------------------------------------------------------------------

def _worker_rss():
    return {"peak": _peak_rss(), "now": _rss()}


def _chunk_lse64(block):
    import scipy.special as sp

    return np.atleast_1d(sp.logsumexp(block.astype(np.float64)))


def _keys(y):
    from dask.core import flatten

    return list(flatten(y.__dask_keys__()))


def _released(client, keys):
    """Wait until the workers let go of a dropped result: the graph's keys are
    deterministic, so a result still in memory would make the next run free."""
    deadline = time.time() + 60
    while time.time() < deadline and any(client.who_has(keys).values()):
        time.sleep(0.05)


def dask_side(n, chunk, seed, workers, threads, memory_limit, repeats, malloc_trim):
    import dask
    import dask.array as da
    from distributed import Client, LocalCluster, wait

    sys.path.insert(0, str(ROOT))
    import cusoft

    out = {"malloc_trim_threshold": malloc_trim}
    # Nanny-started workers get MALLOC_TRIM_THRESHOLD_=65536: glibc then hands every freed
    # temporary above 64 KiB back to the OS, and the CPU backend's per-block scratch arrays
    # page-fault on every block (about 2x slower per chunk, measured).  A large threshold
    # is the usual setting for numeric workloads; --malloc-trim 65536 keeps Dask's.
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_":
                     malloc_trim})
    with LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                      host="127.0.0.1", dashboard_address=None,
                      memory_limit=memory_limit) as lc, Client(lc) as client:
        x = da.random.default_rng(seed).standard_normal(n, chunks=chunk, dtype=np.float32)
        x = x.persist()
        wait(x)
        base = client.run(_worker_rss)
        # -- validate ----------------------------------------------------------------------
        lse32 = float(cusoft.logsumexp(x).compute())
        parts = x.map_blocks(_chunk_lse64, chunks=((1,) * x.numblocks[0],),
                             dtype=np.float64)
        lse64 = float(np.logaddexp.reduce(parts.compute()))
        err = abs(lse32 - lse64) / max(1.0, abs(lse64))
        out["logsumexp_err"] = err
        if not err <= TOL:
            raise SystemExit(f"dask logsumexp: validation failed, {err:.3g} > {TOL}")
        y = cusoft.softmax(x).persist()
        wait(y)
        idx = sorted({0, x.numblocks[0] // 2, x.numblocks[0] - 1})
        worst = worst_rel = 0.0
        for i in idx:
            xs = x.blocks[i].compute().astype(np.float64)
            err, rel = _errors(y.blocks[i].compute(), np.exp(xs - lse64))
            worst, worst_rel = max(worst, err), max(worst_rel, rel)
        out["softmax_subsample_err"], out["softmax_subsample_rel_err"] = worst, worst_rel
        if not (worst <= TOL and worst_rel <= REL_TOL):
            raise SystemExit(f"dask softmax: validation failed, errors {worst:.3g}, "
                             f"{worst_rel:.3g}")
        keys = _keys(y)
        del y
        _released(client, keys)
        # -- time --------------------------------------------------------------------------
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            y = cusoft.softmax(x).persist()
            wait(y)
            times.append(time.perf_counter() - t0)
            keys = _keys(y)
            del y
            _released(client, keys)
        out["softmax_s"] = min(times)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            cusoft.logsumexp(x).compute()
            times.append(time.perf_counter() - t0)
        out["logsumexp_s"] = min(times)
        after = client.run(_worker_rss)
        out["worker_rss_with_input"] = [base[w]["now"] for w in sorted(base)]
        out["worker_peak_rss"] = [after[w]["peak"] for w in sorted(after)]
        out["tasks"] = len(dict(cusoft.softmax(x).__dask_graph__()))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--elements", type=_int, default=2 ** 30)
    ap.add_argument("--chunk", type=_int, default=2 ** 24, help="elements per chunk")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="threads per worker")
    ap.add_argument("--memory-limit", default="10GiB", help="per worker")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malloc-trim", type=_int, default=2 ** 30,
                    help="MALLOC_TRIM_THRESHOLD_ of the workers (Dask's default: 65536)")
    ap.add_argument("--skip-scipy", action="store_true")
    ap.add_argument("--out", default=None, help="JSON path (default bench/results/...)")
    a = ap.parse_args(argv)
    n = a.elements
    gib = 2 ** 30
    res = {"elements": n, "dtype": "float32", "chunk_elements": a.chunk,
           "workers": a.workers, "threads_per_worker": a.threads,
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "node": platform.node()}}
    res["dask"] = dask_side(n, a.chunk, a.seed, a.workers, a.threads, a.memory_limit,
                            a.repeats, a.malloc_trim)
    if not a.skip_scipy:
        res["numpy"] = _child_numpy(n, a.seed, a.repeats)
    ideal = 2 * n * 4
    d = res["dask"]
    rows = [("dask LocalCluster", d["softmax_s"],
             max(p - b for p, b in zip(d["worker_peak_rss"], d["worker_rss_with_input"])),
             sum(d["worker_peak_rss"]))]
    if "numpy" in res:
        p = res["numpy"]
        rows.append(("scipy.special", p["scipy_s"], p["scipy_peak_rss"] - p["rss_with_input"],
                     p["scipy_peak_rss"]))
        rows.append(("cusoft (NumPy)", p["cusoft_numpy_s"], float("nan"), float("nan")))
    print(f"softmax(axis=None), {n} float32 elements ({n * 4 / gib:.2f} GiB), "
          f"chunks of {a.chunk}, {a.workers} workers x {a.threads} thread(s)")
    print(f"validation: dask logsumexp err {d['logsumexp_err']:.2g}, softmax subsample err "
          f"{d['softmax_subsample_err']:.2g} (relative {d['softmax_subsample_rel_err']:.2g})")
    print(f"{'':20s} {'time s':>8s} {'GB/s':>7s} {'peak above input GiB':>21s} "
          f"{'peak RSS GiB':>13s}")
    for name, t, extra, peak in rows:
        print(f"{name:20s} {t:8.2f} {ideal / t / 1e9:7.2f} {extra / gib:21.2f} "
              f"{peak / gib:13.2f}")
    print(f"dask logsumexp(axis=None): {d['logsumexp_s']:.2f} s; graph of {d['tasks']} tasks")
    path = Path(a.out) if a.out else HERE / "results" / f"bench_dask_{n}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
