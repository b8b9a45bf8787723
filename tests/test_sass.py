"""What the kernels became: the SASS of every instantiation (nvcc -cubin, then cuobjdump), for
sm_80 and sm_90, without a GPU.

The register report (tests/test_kernels_compile.py) proves there are no spills; this file proves
the instructions the performance model of each kernel relies on were actually emitted, so a
source change that silently loses them (a vector load split into scalars because alignment can
no longer be proven, a tensor-core product lowered to FMAs) fails here, not on the next GPU:

* no kernel touches local memory (LDL/STL) on its own path; the one exception allowed is the
  subroutine nvcc emits for a warp shuffle reached by a diverged warp (entered through
  BRA.DIV, it saves a register around WARPSYNC: an 8-byte stack frame on sm_80 for the
  16-per-lane warp kernels), which a converged warp never runs;
* the row kernels that stream long rows (block, online, split) load, and where they write a row
  store, with 16-byte instructions (LDG.E.128 / STG.E.128);
* the tensor-core attention kernels issue HMMA (m16n8k16 half / m16n8k8 tf32) or DMMA
  (m8n8k4 double), ldmatrix (LDSM,
  plain and transposed, half) and cp.async (LDGSTS); the CUDA-core ones issue no HMMA,
  read shared memory with 16-byte loads (LDS.128), fill float/double tiles with cp.async
  (LDGSTS), and merge each row's softmax lanes with xor shuffles.

Skips name the missing tool (nvcc, cuobjdump/nvdisasm from the nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm wheels, NVRTC for the name mapping).
"""

from __future__ import annotations

import collections
import functools
import shutil

import pytest

from cusoft import _attention_launch as AL
from cusoft._cupy import _inspect, _module

pytestmark = pytest.mark.slow

ARCHS = ("sm_80", "sm_90")


def _need_tools():
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH")
    if _inspect.binutils_dir() is None:
        pytest.skip("cuobjdump/nvdisasm not found (pip install nvidia-cuda-cuobjdump "
                    "nvidia-cuda-nvdisasm)")


@functools.lru_cache(maxsize=None)
def _op_sass(arch, name):
    try:
        return _inspect.kernel_sass(arch, name)
    except ImportError as exc:  # no cuda.bindings: cannot map mangled names
        pytest.skip(f"NVRTC bindings unavailable: {exc}")


@functools.lru_cache(maxsize=None)
def _attention_sass(arch):
    names = AL.all_kernel_names()
    # attention.cu's instantiations are unique by template name: map mangled names back by
    # the kernel and its first template arguments
    sass = _inspect.sass_listing(arch, AL.kernel_source(), names)
    assert len(sass) == len(names), sorted(sass)
    return sass


def _has(ops, prefix):
    return sum(n for op, n in ops.items() if op == prefix or op.startswith(prefix + "."))


def _local_memory_outside_shuffle_fallback(insns):
    """LDL/STL instructions that are not inside a called subroutine containing WARPSYNC."""
    entries = sorted(int(rest.split()[0], 16) for _, op, rest in insns
                     if op.startswith("CALL.REL") and rest.split()[0].startswith("0x"))
    bad = []
    for addr, op, rest in insns:
        if not (op.startswith("LDL") or op.startswith("STL")):
            continue
        start = max((e for e in entries if e <= addr), default=None)
        body = [o for a, o, _ in insns if start is not None and start <= a]
        end = next((i for i, o in enumerate(body) if o.startswith("RET")), None)
        if start is None or end is None or not any(o == "WARPSYNC" for o in body[:end]):
            bad.append((hex(addr), op, rest))
    return bad


def _counts(insns):
    return collections.Counter(op for _, op, _ in insns)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", _module.SOURCES)
def test_op_files_no_local_memory_and_vector_rows(arch, name):
    _need_tools()
    sass = _op_sass(arch, name)
    assert set(sass) == set(_module.name_expressions(name)), "cuobjdump saw other kernels"
    streaming = ("_block<", "_online<", "_split_apply<", "_split_stats<")
    checked = 0
    for kern, insns in sass.items():
        bad = _local_memory_outside_shuffle_fallback(insns)
        assert not bad, f"{kern} uses local memory: {bad}"
        ops = _counts(insns)
        if any(s in kern for s in streaming):
            checked += 1
            assert ops["LDG.E.128"] > 0, f"{kern}: no 16-byte loads: {sorted(ops)}"
            writes_row = ("softmax_fwd_" in kern or "softmax_bwd_" in kern
                          or kern.startswith("xent_")) and "_stats<" not in kern
            if writes_row:
                assert ops["STG.E.128"] > 0, f"{kern}: no 16-byte stores"
    assert checked > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_attention_instruction_selection(arch):
    _need_tools()
    sass = _attention_sass(arch)
    seen = set()
    for mangled, insns in sass.items():
        ops = _counts(insns)
        assert not _has(ops, "LDL") and not _has(ops, "STL"), f"{mangled} uses local memory"
        if "HalfOps" in mangled:
            seen.add("mma")
            assert ops["HMMA.16816.F32"] > 0, sorted(ops)
            assert ops["LDSM.16.M88.4"] > 0 and ops["LDSM.16.MT88.4"] > 0, sorted(ops)
            assert _has(ops, "LDGSTS") > 0, sorted(ops)
        elif "DmmaOps" in mangled:
            seen.add("dmma")
            assert _has(ops, "DMMA") > 0, sorted(ops)  # "DMMA.884" (sm_80), "DMMA.8x8x4"
            assert _has(ops, "LDGSTS") > 0, sorted(ops)
        elif "Tf32x3Ops" in mangled:
            seen.add("tf32x3")
            assert ops["HMMA.1688.F32.TF32"] > 0, sorted(ops)
            assert _has(ops, "LDGSTS") > 0, sorted(ops)
        else:
            seen.add("fma")
            assert not _has(ops, "HMMA"), f"{mangled}: the CUDA-core kernel uses tensor cores"
            # both products read shared memory 16 bytes at a time
            assert ops["LDS.128"] > 0, f"{mangled}: no 16-byte shared loads: {sorted(ops)}"
            if "I6__half" not in mangled:  # float/double tiles: cp.async, 16 bytes at a time
                assert _has(ops, "LDGSTS") > 0, sorted(ops)
            # the softmax step runs on every thread: xor shuffles merge a row's lanes
            assert _has(ops, "SHFL.BFLY") > 0, f"{mangled}: no row shuffles: {sorted(ops)}"
    assert seen == {"mma", "tf32x3", "dmma", "fma"}


def test_local_memory_rule_recognises_the_shuffle_fallback():
    """The exception above, on a listing of the shape nvcc emits; and a spill elsewhere."""
    ok = [(0x10, "BRA.DIV", "~URZ, 0x40"), (0x20, "EXIT", ""),
          (0x30, "CALL.REL.NOINC", "0x50"), (0x40, "CALL.REL.NOINC", "0x50"),
          (0x50, "STL", "[R1], R0"), (0x60, "WARPSYNC", "R19"), (0x70, "SHFL.BFLY", "PT, R2"),
          (0x80, "LDL.LU", "R0, [R1]"), (0x90, "RET.REL.NODEC", "R18 0x0")]
    assert _local_memory_outside_shuffle_fallback(ok) == []
    spill = [(0x10, "STL", "[R1+0x4], R7"), (0x20, "FFMA", "R1, R2, R3, R4"),
             (0x30, "LDL", "R7, [R1+0x4]"), (0x40, "EXIT", "")]
    assert len(_local_memory_outside_shuffle_fallback(spill)) == 2
