"""``python -m cusoft check | info [--kernels]``."""

from __future__ import annotations

import argparse
import sys


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m cusoft")
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="validate every function on every backend usable here "
                                     "against SciPy (float64); non-zero exit on failure")
    c.add_argument("--backend", action="append", help="only these backends (repeatable)")
    c.add_argument("--seed", type=int, default=0)
    i = sub.add_parser("info", help="versions, GPUs, usable backends")
    i.add_argument("--kernels", action="store_true",
                   help="also registers/spills of every RawKernel (sm_80, sm_90; needs nvcc)")
    args = ap.parse_args(argv)
    if args.cmd == "check":
        from . import _check

        return 0 if _check.run(args.backend, seed=args.seed) else 1
    from . import _config

    _config.show_config()
    if args.kernels:
        _print_kernels()
    return 0


def _print_kernels():
    try:
        from ._cupy._inspect import kernel_resources
        from ._cupy._module import SOURCES
    except ImportError as exc:
        print(f"kernel resources unavailable: {exc}")
        return
    for arch in ("sm_80", "sm_90"):
        print(f"\n{arch}: {'kernel':60s} {'regs':>5s} {'spill st':>9s} {'spill ld':>9s} "
              f"{'smem':>6s}")
        for src in SOURCES + ("attention.cu",):
            try:
                if src == "attention.cu":
                    from . import _attention_launch as al
                    from ._cupy._inspect import ptxas_resources

                    rows = ptxas_resources(arch, al.kernel_source(), al.all_kernel_names())
                else:
                    rows = kernel_resources(arch, src)
            except Exception as exc:  # nvcc missing or failing: say so, do not crash
                print(f"      {src}: {type(exc).__name__}: {exc}")
                continue
            for r in rows:
                print(f"      {r['name'][:60]:60s} {r['registers']:5d} {r['spill_stores']:9d} "
                      f"{r['spill_loads']:9d} {r.get('shared', 0):6d}")
    _print_device_kernels()


def _print_device_kernels():
    """Registers and local memory of every kernel as loaded on the present GPU (CuPy's own
    NVRTC and driver), when there is one: the numbers the nvcc report above predicts."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() == 0:
            return
        from . import _attention_launch as al
        from ._cupy import _module

        name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    except Exception:  # no CuPy or no GPU: the nvcc report above is all there is
        return
    print(f"\non this GPU ({name}): {'kernel':50s} {'regs':>5s} {'local':>6s} {'max thr':>8s}")
    modules = [(src, lambda s=src: _module.get_module(s), _module.name_expressions(src))
               for src in _module.SOURCES]
    modules.append(("attention.cu", al.cupy_module, al.all_kernel_names()))
    for src, get, names in modules:
        try:
            mod = get()
            for n in names:
                a = mod.get_function(n).attributes
                print(f"      {n[:60]:60s} {a['num_regs']:5d} {a['local_size_bytes']:6d} "
                      f"{a['max_threads_per_block']:8d}")
        except Exception as exc:  # a compile or load failure: report it, go on
            print(f"      {src}: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    sys.exit(main())
