"""kernels_cu compiles for real GPUs, checked without one.

* NVRTC (``cuda.bindings.nvrtc``) compiles every name expression of the runtime with the
  runtime's source text, options and name-expression list, for sm_80 and sm_90, and returns
  a lowered name for each.  Every op file of ``_module.SOURCES`` (softmax.cu, backward.cu,
  xent.cu) is covered, and a test checks that list against the .cu files on disk.
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
FILES = _module.SOURCES


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


def test_every_op_file_is_listed():
    """Each kernels_cu/*.cu is compiled by some loader: _module.SOURCES (checked by every test
    below) or attention.cu's own (tests/test_attention_compile.py)."""
    import os

    on_disk = {f for f in os.listdir(_module.kernels_dir()) if f.endswith(".cu")}
    assert on_disk - {"attention.cu"} == set(FILES)


@pytest.mark.parametrize("name", FILES)
def test_source_is_self_contained(name):
    """Local includes are inlined; no standard headers (NVRTC has none)."""
    src = _module.source(name)
    assert not re.search(r'^\s*#\s*include\s*"', src, re.M)
    system = set(re.findall(r"^\s*#\s*include\s*<([^>]+)>", src, re.M))
    assert system <= {"cuda_fp16.h"}, system
    assert src.count("CUSOFT_COMMON_CUH") >= 2  # the header really is inside


@pytest.mark.parametrize("name", FILES)
def test_name_expressions_unique_and_cover_the_launcher(name):
    from cusoft import _launch

    names = _module.name_expressions(name)
    assert len(names) == len(set(names))
    assert _launch.all_kernel_names(name) <= set(names)
    # one file per name: the backends find a kernel's module by its name
    total = sum(len(_module.name_expressions(f)) for f in FILES)
    assert total == len(_module.all_name_expressions())
    assert all(_module.file_of(e) == name for e in names)


@requires_nvrtc
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_every_name_expression(arch, name):
    from cusoft._cupy._inspect import nvrtc_compile

    lowered = nvrtc_compile(arch, name)
    names = _module.name_expressions(name)
    assert set(lowered) == set(names)
    for expr, low in lowered.items():
        assert low.startswith("_Z"), (expr, low)
    assert len(set(lowered.values())) == len(names)  # one kernel per expression


@requires_nvcc
@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("arch", ARCHS)
def test_ptxas_no_spills(arch, name):
    from cusoft._cupy._inspect import kernel_resources

    rows = kernel_resources(arch, name)
    assert len(rows) == len(_module.name_expressions(name)), "ptxas saw a different kernel set"
    spills = [(r["name"], r["spill_stores"], r["spill_loads"]) for r in rows
              if r["spill_stores"] or r["spill_loads"]]
    assert not spills, f"{arch} {name}: kernels spill registers: {spills}"
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
                 "partial_warp", "softmax_bwd_warp", "xent_warp")
    for la in plan.launches:
        threads = la.block[0] * la.block[1] * la.block[2]
        bound = 256 if la.kernel.startswith(warp_like) else 512  # CUSOFT_BOUNDS in kernels_cu
        assert threads <= bound, la
        assert la.shared <= lim.smem_per_block, la
        assert 1 <= la.grid[0] < 2**31 and la.grid[1:] == (1, 1), la
        assert la.kernel in _module.all_name_expressions(), la.kernel
        for a in la.args:
            assert isinstance(a, (str, np.int64)), (la.kernel, a)


@pytest.mark.parametrize("shape,dtype,want_bwd,want_xent", [
    ((1000, 100, 1), "float32", "warp", "warp"),
    ((100, 1000, 1), "float64", "warp", "block"),   # xent's register cache stops at 512
    ((100, 5000, 1), "float16", "block", "block"),
    ((1, 1 << 20, 1), "float32", "split", "split"),
    ((8, 500_000, 1), "float32", "split", "split"),    # few long rows: chunks fill the SMs
    ((300, 500_000, 1), "float64", "block", "block"),  # rows >= 2 * SMs: a block per row
    ((1, 3 * 2**30, 1), "float16", "split", "split"),  # > 2**31 elements: int64 offsets
    ((10, 100, 7), "float32", "col", "col"),
])
def test_launch_rules_backward_xent(shape, dtype, want_bwd, want_xent):
    from cusoft import _launch

    lim = _launch.DeviceLimits()
    for log in (False, True):
        plan = _launch.launch_backward(*shape, dtype, log, lim)
        assert plan.variant == want_bwd
        _check_plan(plan, lim)
    plan = _launch.launch_xent(*shape, dtype, lim)
    assert plan.variant == want_xent
    _check_plan(plan, lim)
    with pytest.raises(ValueError, match="row layout"):
        _launch.launch_xent(2, 10, 3, dtype, lim, variant="block")
    with pytest.raises(ValueError, match="n <= 512"):
        _launch.launch_xent(2, 513, 1, dtype, lim, variant="warp")
    assert _launch.launch_xent(2, 0, 1, dtype, lim).variant == "empty-rows"
    if want_xent == "split":
        chunks = plan.launches[0].args[-2]
        assert chunks > 1 and shape[0] * chunks >= lim.sm_count, (shape, chunks)
