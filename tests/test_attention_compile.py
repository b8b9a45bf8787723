"""kernels_cu/attention.cu compiles for the GPUs it targets, without a GPU.

* NVRTC (what CuPy's RawModule runs), every name expression the launcher can ask for, for
  sm_80 and sm_90, with the options CuPy adds (-ftz=true, --device-as-default-execution-space).
* nvcc -cubin -Xptxas -v: every instantiation uses no local memory (zero spill stores and
  loads, no stack frame) and fits 255 registers, and its dynamic shared bytes fit the
  architecture's opt-in limit.

Each test skips with the missing tool as its reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from cusoft import _attention_launch as L

ARCHS = ("sm_80", "sm_90")
#: opt-in dynamic shared memory per block
SMEM_LIMIT = {"sm_80": 163 * 1024, "sm_90": 227 * 1024}


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        pytest.skip(f"cuda.bindings.nvrtc is not importable: {exc}")
    try:
        nvrtc.nvrtcVersion()
    except Exception as exc:  # the bindings without libnvrtc
        pytest.skip(f"NVRTC library not loadable: {exc}")
    return nvrtc


def _check(nvrtc, res, what):
    err = res[0] if isinstance(res, tuple) else res
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, f"{what}: {err}"
    return res[1:] if isinstance(res, tuple) else ()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_nvrtc_compiles_every_instantiation(arch):
    nvrtc = _nvrtc()
    inc = L.fp16_include_options()
    if not inc:
        pytest.skip("no cuda_fp16.h found (CuPy's CUDA root, $CUDA_PATH, /usr/local/cuda)")
    names = L.all_kernel_names()
    (prog,) = _check(nvrtc, nvrtc.nvrtcCreateProgram(L.kernel_source().encode(),
                                                     b"attention.cu", 0, [], []), "create")
    try:
        for n in names:
            _check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, n.encode()), n)
        opts = [o.encode() for o in L.NVRTC_OPTIONS + inc +
                ("-ftz=true", f"--gpu-architecture={arch}",
                 "--device-as-default-execution-space")]
        res = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        (size,) = _check(nvrtc, nvrtc.nvrtcGetProgramLogSize(prog), "log size")
        log = b" " * size
        _check(nvrtc, nvrtc.nvrtcGetProgramLog(prog, log), "log")
        err = res[0] if isinstance(res, tuple) else res
        assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace")
        assert "warning" not in log.decode(errors="replace").lower(), log.decode()
        lowered = set()
        for n in names:
            (low,) = _check(nvrtc, nvrtc.nvrtcGetLoweredName(prog, n.encode()), n)
            lowered.add(low)
        assert len(lowered) == len(names) == 23  # 12 FMA + 11 tensor-core
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def _nvcc():
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc"
                                    if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        pytest.skip("nvcc is not on PATH")
    return nvcc


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_ptxas_no_spills(arch, tmp_path):
    nvcc = _nvcc()
    names = L.all_kernel_names()
    src = tmp_path / "attention_all.cu"
    src.write_text(L.kernel_source() + "\n// every instantiation the launcher can ask for\n"
                   "void* attention_instances[] = {\n"
                   + ",\n".join(f"    (void*)&{n}" for n in names) + "};\n")
    res = subprocess.run([nvcc, "-cubin", f"-arch={arch}", "-std=c++17", "-Xptxas", "-v",
                          str(src), "-o", str(tmp_path / "a.cubin")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    report = res.stderr
    entries = re.split(r"Compiling entry function", report)[1:]
    assert len(entries) == len(names), report
    for e in entries:
        fn = e.split("'")[1]
        regs = int(re.search(r"Used (\d+) registers", e).group(1))
        stores, loads = (int(x) for x in re.search(
            r"(\d+) bytes spill stores, (\d+) bytes spill loads", e).groups())
        stack = int(re.search(r"(\d+) bytes stack frame", e).group(1))
        assert stores == loads == 0 and stack == 0, f"{fn} spills: {e}"
        assert regs <= 255, f"{fn}: {regs} registers"


def test_shared_bytes_fit_each_arch():
    import numpy as np

    for arch, limit in SMEM_LIMIT.items():
        for dt in (np.float16, np.float32, np.float64):
            for D in L.BUCKETS:
                for method in (None, "fma", "mma"):
                    if method == "mma" and not L.has_mma(dt, D):
                        continue
                    cfg = L.launch_config(dt, 1, 1, 1, D, D, method)
                    assert cfg.shared_mem <= limit, (arch, dt, D, method, cfg)
