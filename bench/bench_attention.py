"""Benchmark of cusoft.attention: TFLOP/s and peak memory, tiled vs the materialised path.

On a GPU (CuPy): B=4, H=16, L = 1k..16k, D = 64/128, float16/float32, causal and not, against
``torch.nn.functional.scaled_dot_product_attention`` when PyTorch with CUDA is importable (and
flash-attn's ``flash_attn_func`` for float16 where that package is installed), the other kernel
flavour of each dtype (float16 on CUDA cores, float32 as 3xTF32 on tensor cores), and peak
device memory against ``method="naive"`` (which materialises B*H*L*L logits and hits the
memory wall first).  On a machine without a GPU it runs a small size on NumPy, tiled vs naive,
with peak host memory from tracemalloc.

Work counted: 4*B*H*Lq*Lk*D FLOP (QKᵀ and PV), halved when causal.  Memory moved by the tiled
kernel: Q, O once, K and V once per query tile; the naive path also writes and reads the
B*H*Lq*Lk logits (several times: scores, softmax, PV).

Every configuration is validated (against PyTorch or a float64 reference on a slice) before it
is timed.  Results are printed as a table and written as JSON to bench/results/.

    python bench/bench_attention.py [--quick] [--out bench/results]
    python bench/bench_attention.py --sweep      # GPU: tensor-core tile shapes, one size
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from cusoft._attention import attention  # noqa: E402


def flops(B, H, Lq, Lk, D, causal):
    f = 4.0 * B * H * Lq * Lk * D
    return f / 2 if causal else f


def reference64(q, k, v, causal):
    """Float64 materialised attention of host arrays (one (batch, head) slice is enough)."""
    import scipy.special

    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    s = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    if causal:
        Lq, Lk = s.shape[-2:]
        s = np.where(np.arange(Lk)[None] <= np.arange(Lq)[:, None] + Lk - Lq, s, -np.inf)
    return scipy.special.softmax(s, axis=-1) @ v


def _max_rel(got, ref):
    got = np.asarray(got, np.float64)
    return float((np.abs(got - ref) / np.maximum(1, np.abs(ref))).max())


# -- GPU ------------------------------------------------------------------------------------

def _gpu_available():
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _torch_cuda():
    try:
        import torch

        return torch if torch.cuda.is_available() else None
    except Exception:
        return None


def _flash_attn():
    """flash_attn.flash_attn_func where the flash-attn package is installed, else None."""
    try:
        from flash_attn import flash_attn_func

        return flash_attn_func
    except Exception:
        return None


def _time_gpu(fn, reps):
    import cupy

    fn()
    cupy.cuda.Device().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return cupy.cuda.get_elapsed_time(start, end) / 1e3 / reps


def _peak_gpu(fn):
    import cupy

    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    base = pool.total_bytes()
    try:
        fn()
        cupy.cuda.Device().synchronize()
    except cupy.cuda.memory.OutOfMemoryError:
        pool.free_all_blocks()
        return None
    peak = pool.total_bytes() - base
    pool.free_all_blocks()
    return peak


def bench_gpu(quick, save=lambda rows: None):
    import cupy

    torch = _torch_cuda()
    rows = []
    lengths = (1024, 4096) if quick else (1024, 2048, 4096, 8192, 16384)
    B, H = 4, 16
    # float64 (DMMA by default, CUDA cores as the other flavour) in the full run, up to 4k
    for dt in ((np.float16, np.float32) if quick else (np.float16, np.float32, np.float64)):
        for D in (64, 128):
            for causal in (False, True):
                for L in lengths:
                    if dt == np.float64 and L > 4096:
                        continue
                    rng = cupy.random.default_rng(0)
                    q, k, v = (rng.standard_normal((B, H, L, D), dtype=np.float32).astype(dt)
                               for _ in range(3))
                    run = lambda: attention(q, k, v, causal=causal)  # noqa: E731
                    out = run()
                    # validate on the first (batch, head) and up to 512 queries
                    n = min(L, 512)
                    ref = reference64(q[0, 0, -n:].get(), k[0, 0].get(), v[0, 0].get(), causal)
                    err = _max_rel(out[0, 0, -n:].get(), ref)
                    tol = {np.float16: 5e-3, np.float32: 1e-4, np.float64: 1e-10}[dt]
                    assert err <= tol, f"validation failed: {dt.__name__} D={D} L={L}: {err}"
                    reps = 3 if L >= 8192 else 10
                    t = _time_gpu(run, reps)
                    row = dict(dtype=np.dtype(dt).name, B=B, H=H, L=L, D=D, causal=causal,
                               ms=t * 1e3, tflops=flops(B, H, L, L, D, causal) / t / 1e12,
                               max_rel_err=err, peak_bytes=_peak_gpu(run))
                    # the other kernel flavour of the same call: float16 and float64 default
                    # to tensor cores (row "fma_*" = CUDA cores); float32 to CUDA cores (row
                    # "mma_*" = 3xTF32, validated against its own documented bound)
                    other = "mma" if dt == np.float32 else "fma"
                    alt = lambda m=other: attention(q, k, v, causal=causal, method=m)  # noqa: E731
                    o_alt = alt()
                    row[f"{other}_max_rel_err"] = _max_rel(o_alt[0, 0, -n:].get(), ref)
                    assert row[f"{other}_max_rel_err"] <= (1e-5 if other == "mma" else tol)
                    t_f = _time_gpu(alt, reps)
                    row[f"{other}_ms"] = t_f * 1e3
                    row[f"{other}_tflops"] = flops(B, H, L, L, D, causal) / t_f / 1e12
                    naive_bytes = B * H * L * L * (4 if dt == np.float16 else np.dtype(dt).itemsize)
                    if naive_bytes * 3 < cupy.cuda.Device().mem_info[0]:
                        row["naive_peak_bytes"] = _peak_gpu(
                            lambda: attention(q, k, v, causal=causal, method="naive"))
                        row["naive_ms"] = _time_gpu(
                            lambda: attention(q, k, v, causal=causal, method="naive"), 2) * 1e3
                    else:
                        row["naive_peak_bytes"] = None  # would not fit: the memory wall
                    if torch is not None:
                        try:
                            tq, tk, tv = (torch.as_tensor(x, device="cuda") for x in (q, k, v))
                            sdpa = torch.nn.functional.scaled_dot_product_attention
                            ot = sdpa(tq, tk, tv, is_causal=causal)
                            if L == k.shape[-2]:
                                row["max_rel_err_vs_torch"] = _max_rel(
                                    out[0, 0].get(), ot[0, 0].double().cpu().numpy())
                            t_t = _time_gpu(lambda: sdpa(tq, tk, tv, is_causal=causal), reps)
                            row["torch_ms"] = t_t * 1e3
                            row["torch_tflops"] = flops(B, H, L, L, D, causal) / t_t / 1e12
                            row["vs_torch"] = t_t / t  # > 1: cusoft faster than SDPA
                            fa = _flash_attn()
                            if fa is not None and dt == np.float16:
                                # flash-attn's layout is (B, L, H, D)
                                fq, fk, fv = (x.transpose(1, 2).contiguous() for x in (tq, tk, tv))
                                t_fa = _time_gpu(lambda: fa(fq, fk, fv, causal=causal), reps)
                                row["flash_attn_ms"] = t_fa * 1e3
                                row["flash_attn_tflops"] = flops(B, H, L, L, D, causal) / t_fa / 1e12
                        except Exception as exc:  # e.g. float64 SDPA (math backend) out of memory
                            row["torch_error"] = f"{type(exc).__name__}: {exc}"[:200]
                            torch.cuda.empty_cache()
                    rows.append(row)
                    print(_fmt(row), flush=True)
                    save(rows)   # a run cut short by a time limit keeps what it measured
    return rows, cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()


#: tile shapes (BM, BN) tried by --sweep for the tensor-core kernels, per (dtype, D); the
#: runtime table is cusoft._attention_launch.TILES_MMA.  All compile without spills for
#: sm_90 (ptxas: 148-254 registers); (192, 64) and (256, 32) at D = 64 and (128, 64) at
#: D = 128 for float16 spill, so they are left out.
SWEEP = {
    ("float16", 64): [(64, 64), (128, 64), (128, 32), (64, 128)],
    ("float16", 128): [(64, 64), (64, 32), (128, 32), (64, 128)],
    ("float32", 64): [(64, 64), (64, 32), (128, 32), (128, 64)],
    ("float32", 128): [(64, 32), (64, 64), (128, 32)],
    ("float64", 64): [(64, 32), (64, 64), (64, 16)],
    ("float64", 128): [(64, 32), (64, 16)],
}


def bench_sweep(save=lambda rows: None, L=4096, B=4, H=16):
    """Every SWEEP tile shape of the tensor-core kernels, timed at one size (causal and not)
    and validated; one extra RawModule holds the candidates, so the runtime's is untouched."""
    import cupy

    from cusoft import _attention_launch as AL

    names = {}
    for (dname, D), cands in SWEEP.items():
        for tile in cands:
            names[(dname, D, tile)] = AL.kernel_name(np.dtype(dname), D, "mma", tile)
    mod = cupy.RawModule(code=AL.kernel_source(),
                         options=AL.NVRTC_OPTIONS + AL.fp16_include_options(),
                         name_expressions=sorted(set(names.values())))
    rows = []
    for (dname, D, tile), name in names.items():
        dt = np.dtype(dname)
        rng = cupy.random.default_rng(0)
        q, k, v = (rng.standard_normal((B, H, L, D), dtype=np.float32).astype(dt)
                   for _ in range(3))
        out = cupy.empty_like(q)
        for causal in (False, True):
            def run():
                AL.launch_attention(lambda: mod, cupy, q, k, v, None, None, out, None,
                                    1 / math.sqrt(D), causal, "mma", tile)
            try:
                run()
                cupy.cuda.Device().synchronize()
            except Exception as exc:  # e.g. too much shared memory on this card
                row = dict(dtype=dname, D=D, L=L, tile=list(tile), causal=causal,
                           error=f"{type(exc).__name__}: {exc}")
                rows.append(row)
                print(row, flush=True)
                continue
            n = min(L, 256)
            ref = reference64(q[0, 0, -n:].get(), k[0, 0].get(), v[0, 0].get(), causal)
            err = _max_rel(out[0, 0, -n:].get(), ref)
            assert err <= {"float16": 5e-3, "float32": 1e-5, "float64": 1e-10}[dname], (name, err)
            t = _time_gpu(run, 5)
            row = dict(dtype=dname, D=D, L=L, B=B, H=H, tile=list(tile), causal=causal,
                       name=name, ms=t * 1e3, tflops=flops(B, H, L, L, D, causal) / t / 1e12,
                       max_rel_err=err)
            rows.append(row)
            print(f"{dname:8s} D={D:4d} tile={tile} causal={int(causal)} {t * 1e3:8.3f} ms "
                  f"{row['tflops']:7.2f} TFLOP/s  err {err:.1e}", flush=True)
            save(rows)
    return rows, cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()


# -- CPU ------------------------------------------------------------------------------------

def bench_cpu(quick, save=lambda rows: None):
    import tracemalloc

    rows = []
    B, H = 1, 4
    for dt in (np.float32, np.float64):
        for L in ((512,) if quick else (512, 1024, 2048)):
            D = 64
            for causal in (False, True):
                rng = np.random.default_rng(0)
                q, k, v = (rng.standard_normal((B, H, L, D)).astype(dt) for _ in range(3))
                out = attention(q, k, v, causal=causal)
                err = _max_rel(out[0, 0], reference64(q[0, 0], k[0, 0], v[0, 0], causal))
                assert err <= (1e-4 if dt == np.float32 else 1e-12), err
                row = dict(dtype=np.dtype(dt).name, B=B, H=H, L=L, D=D, causal=causal,
                           max_rel_err=err)
                for method, key in ((None, ""), ("naive", "naive_")):
                    fn = lambda: attention(q, k, v, causal=causal, method=method)  # noqa: E731
                    fn()
                    t = float("inf")
                    for _ in range(3):
                        t0 = time.perf_counter()
                        fn()
                        t = min(t, time.perf_counter() - t0)
                    tracemalloc.start()
                    fn()
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    row[key + "ms"] = t * 1e3
                    row[key + "gflops"] = flops(B, H, L, L, D, causal) / t / 1e9
                    row[key + "peak_bytes"] = peak
                rows.append(row)
                print(_fmt(row), flush=True)
                save(rows)
    return rows, platform.processor() or platform.machine()


def _fmt(r):
    mb = lambda b: "   -   " if b is None else f"{b / 2**20:7.1f}"  # noqa: E731
    s = (f"{r['dtype']:8s} L={r['L']:6d} D={r['D']:4d} causal={int(r['causal'])} "
         f"{r['ms']:9.3f} ms  ")
    if "tflops" in r:
        s += f"{r['tflops']:7.2f} TFLOP/s  peak {mb(r['peak_bytes'])} MiB  naive peak " \
             f"{mb(r.get('naive_peak_bytes'))} MiB"
        for other in ("fma", "mma"):
            if f"{other}_tflops" in r:
                s += f"  {other} {r[f'{other}_tflops']:7.2f} TFLOP/s"
        if "torch_tflops" in r:
            s += f"  torch {r['torch_tflops']:7.2f} TFLOP/s ({r['vs_torch']:.2f}x)"
        if "flash_attn_tflops" in r:
            s += f"  flash-attn {r['flash_attn_tflops']:7.2f} TFLOP/s"
    else:
        s += (f"{r['gflops']:7.2f} GFLOP/s  peak {mb(r['peak_bytes'])} MiB | naive "
              f"{r['naive_ms']:9.3f} ms peak {mb(r['naive_peak_bytes'])} MiB")
    return s + f"  err {r['max_rel_err']:.1e}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes")
    ap.add_argument("--sweep", action="store_true",
                    help="GPU only: time the tensor-core tile shapes of SWEEP instead "
                         "(writes attention_sweep.json)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"),
                    help="folder for attention_<gpu|cpu>.json (default bench/results)")
    args = ap.parse_args(argv)
    gpu = _gpu_available()
    tag = "gpu" if gpu else "cpu"
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "attention_sweep.json" if args.sweep else f"attention_{tag}.json")

    def save(rows, device=None):
        res = dict(benchmark="attention", device=device, platform=platform.platform(),
                   numpy=np.__version__, time=time.strftime("%Y-%m-%dT%H:%M:%S"), rows=rows)
        with open(path, "w") as f:
            json.dump(res, f, indent=1)

    if args.sweep and not gpu:
        ap.error("--sweep needs a CUDA GPU")
    if args.sweep:
        rows, device = bench_sweep(save)
    elif gpu:
        rows, device = bench_gpu(args.quick, save)
    else:
        print("no CUDA GPU: timing the NumPy path (tiled vs naive) at small sizes")
        rows, device = bench_cpu(args.quick, save)
    save(rows, device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
