"""kernels_cu compiles for real GPUs, checked without one.

* NVRTC (``cuda.bindings.nvrtc``) compiles every name expression of the runtime with the
  runtime's source text, options and name-expression list, for sm_80 and sm_90, and returns
  a lowered name for each.
* nvcc/ptxas compiles the same text with every template instantiated (a generated table of
  kernel addresses) and reports registers and spills: every kernel must spill 0 bytes.

Skips (with the reason) when cuda.bindings' NVRTC or nvcc is missing; never passes silently.
"""

from __future__ import annotations

import re
import shutil

import pytest

from cusoft._cupy import _module

ARCHS = ("sm_80", "sm_90")


def _nvrtc_reason():
    try:
        from cuda.bindings import nvrtc

        err, major, minor = nvrtc.nvrtcVersion()
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return f"NVRTC unusable: {err}"
    except Exception as exc:  # ImportError, missing libnvrtc.so
        return f"NVRTC (cuda.bindings.nvrtc) unavailable: {type(exc).__name__}: {exc}"
    from cusoft._cupy._inspect import cuda_include_dirs

    if not cuda_include_dirs():
        return "no CUDA include directory with cuda_fp16.h (set CUDA_PATH)"
    return None


requires_nvrtc = pytest.mark.skipif(_nvrtc_reason() is not None, reason=str(_nvrtc_reason()))
requires_nvcc = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")


def test_source_is_self_contained():
    """Local includes are inlined; no standard headers (NVRTC has none)."""
    src = _module.source()
    assert not re.search(r'^\s*#\s*include\s*"', src, re.M)
    system = set(re.findall(r"^\s*#\s*include\s*<([^>]+)>", src, re.M))
    assert system <= {"cuda_fp16.h"}, system
    assert src.count("CUSOFT_COMMON_CUH") >= 2  # the header really is inside


def test_name_expressions_unique_and_cover_the_launcher():
    from cusoft import _launch

    names = _module.name_expressions()
    assert len(names) == len(set(names))
    assert _launch.all_kernel_names() <= set(names)


@requires_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_every_name_expression(arch):
    from cusoft._cupy._inspect import nvrtc_compile

    lowered = nvrtc_compile(arch)
    names = _module.name_expressions()
    assert set(lowered) == set(names)
    for expr, low in lowered.items():
        assert low.startswith("_Z"), (expr, low)
    assert len(set(lowered.values())) == len(names)  # one kernel per expression


@requires_nvcc
@pytest.mark.parametrize("arch", ARCHS)
def test_ptxas_no_spills(arch):
    from cusoft._cupy._inspect import kernel_resources

    rows = kernel_resources(arch)
    assert len(rows) == len(_module.name_expressions()), "ptxas saw a different kernel set"
    spills = [(r["name"], r["spill_stores"], r["spill_loads"]) for r in rows
              if r["spill_stores"] or r["spill_loads"]]
    assert not spills, f"{arch}: kernels spill registers: {spills}"
    # launch bounds hold: 512-thread kernels fit 128 registers, 256-thread ones 255
    for r in rows:
        assert 0 < r["registers"] <= 255, r


# -- the launch planner (pure Python: runs everywhere) --------------------------------------
@pytest.mark.parametrize("shape,dtype,want", [
    ((1000, 100, 1), "float32", "warp"),
    ((100, 5000, 1), "float32", "block"),
    ((300, 20000, 1), "float64", "online"),   # 160 KB rows: no shared-memory cache
    ((1, 1 << 20, 1), "float32", "split"),
    ((1, 3 * 2**30, 1), "float16", "split"),  # > 2**31 elements: int64 offsets
    ((10, 100, 7), "float32", "col"),
])
def test_launch_rules(shape, dtype, want):
    import numpy as np

    from cusoft import _launch

    lim = _launch.DeviceLimits()
    for log in (False, True):
        plan = _launch.launch_softmax(*shape, dtype, log, lim)
        assert plan.variant == want
        _check_plan(plan, lim)
    if want != "online":
        for fn in (_launch.launch_logsumexp, _launch.launch_partial):
            plan = fn(*shape, dtype, lim)
            _check_plan(plan, lim)
    if want == "split":
        chunks = next(a for a in plan.launches[0].args[::-1] if isinstance(a, np.int64))
        assert chunks > 1


def _check_plan(plan, lim):
    import numpy as np

    warp_like = ("softmax_rowmax", "softmax_expsum", "softmax_fwd_warp", "logsumexp_warp",
                 "partial_warp")
    for la in plan.launches:
        threads = la.block[0] * la.block[1] * la.block[2]
        bound = 256 if la.kernel.startswith(warp_like) else 512  # CUSOFT_BOUNDS in softmax.cu
        assert threads <= bound, la
        assert la.shared <= lim.smem_per_block, la
        assert 1 <= la.grid[0] < 2**31 and la.grid[1:] == (1, 1), la
        assert la.kernel in set(_module.name_expressions()), la.kernel
        for a in la.args:
            assert isinstance(a, (str, np.int64)), (la.kernel, a)
