"""The Numba backend on a real GPU: the simulator's matrix on Numba device arrays.

Also, without a GPU: every kernel of every dtype compiles to PTX (needs only libNVVM), which
catches typing errors the simulator cannot see (it runs the kernels as Python).
"""

from __future__ import annotations

import functools
import os
import sys
import types

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "numba_sim"))
import numba_matrix as M  # noqa: E402

cuda = pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")


@functools.lru_cache(None)
def _no_gpu_reason():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "no CUDA GPU: this process runs the CUDA simulator"
    try:
        return None if cuda.is_available() else "no CUDA GPU (numba: cuda.is_available() is False)"
    except Exception as exc:
        return f"no CUDA GPU ({type(exc).__name__}: {exc})"


requires_gpu = pytest.mark.skipif(_no_gpu_reason() is not None,
                                  reason=_no_gpu_reason() or "")
gpu = [pytest.mark.gpu, requires_gpu]

VARIANTS = tuple(M.SHAPES)
ROW_VARIANTS = ("warp", "block", "col")
DTYPES = [pytest.param(d, id=d.__name__) for d in M.DTYPES]


@pytest.fixture(scope="module")
def run():
    from cusoft._numba.backend import NumbaBackend

    be = NumbaBackend()
    ok, why = be.available()
    assert ok, why
    return M.Runner(be, to_dev=cuda.to_device, from_dev=lambda d: d.copy_to_host(),
                    empty=lambda shape, dt: cuda.device_array(shape, dt),
                    launch=dict(split_chunk=40))


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_softmax(run, variant, dtype, log):
    M.check_softmax(run, variant, dtype, log)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("weighted,return_sign", [(False, False), (True, True), (True, False)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_logsumexp(run, variant, dtype, weighted, return_sign):
    M.check_logsumexp(run, variant, dtype, weighted, return_sign)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_partial(run, variant, dtype, weighted):
    M.check_partial(run, variant, dtype, weighted)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ROW_VARIANTS)
def test_backward(run, variant, dtype, log):
    M.check_backward(run, variant, dtype, log)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("case", list(M.XENT_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ROW_VARIANTS)
def test_cross_entropy(run, variant, dtype, case):
    M.check_xent(run, variant, dtype, case)


@pytest.mark.gpu
@requires_gpu
@pytest.mark.parametrize("shape", [(2, 70000, 1), (300, 2000, 1), (4, 3000, 1), (3, 50, 33)])
def test_automatic_launch_large(run, shape):
    # the launch function's own choices (split for few long rows, block, col) at real sizes
    rng = np.random.default_rng(5)
    x = M.make_input(shape, rng).astype(np.float32)
    run.launch = {}
    try:
        M.assert_close(run.softmax(x, True, None),
                       __import__("scipy.special").special.log_softmax(
                           x.astype(np.float64), axis=1), np.float32, f"auto {shape}")
    finally:
        run.launch = dict(split_chunk=40)


@pytest.mark.gpu
@requires_gpu
def test_torch_tensors_in_and_out():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU for torch")
    from cusoft._numba.backend import NumbaBackend, empty_like_device

    x = torch.randn(5, 40, 1, device="cuda", dtype=torch.float32)
    out = empty_like_device(x, x.shape, np.float32)
    assert isinstance(out, torch.Tensor)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        NumbaBackend().softmax(x, out, False)
    s.synchronize()
    torch.testing.assert_close(out, torch.softmax(x, dim=1))


@pytest.mark.slow
def test_kernels_compile_to_ptx(monkeypatch):
    """All kernels, all dtypes, through numba-cuda's real compiler (no GPU needed)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("the simulator replaces the compiler in this process")
    from numba import from_dtype
    from numba import types as T
    import numba.cuda.dispatcher as dispatcher

    from cusoft._numba import kernels as K

    try:
        cuda.compile_ptx(lambda a: None, (T.float32[::1],), cc=(8, 0))
    except Exception as exc:
        pytest.skip(f"numba-cuda cannot compile here (no libNVVM?): {exc}")
    # device functions ask the current device for its compute capability; there is none
    monkeypatch.setattr(dispatcher, "get_current_device",
                        lambda: types.SimpleNamespace(compute_capability=(8, 0)))
    i, b = T.int64, T.boolean
    for dt in M.DTYPES:
        a = from_dtype(np.dtype(dt))[::1]
        A = from_dtype(K.acc_dtype(dt))[::1]
        lab = T.int64[::1]
        xent = (a, lab, a, a, a, a, a, T.float64, i, T.float64, i)
        sigs = {
            "softmax_fwd_warp": (a, a, i, i, i), "softmax_fwd_block": (a, a, i, i),
            "softmax_fwd_split": (a, A, A, i, i),
            "softmax_fwd_split_norm": (a, a, A, A, i, i, i),
            "softmax_fwd_col": (a, a, i, i, i, i),
            "logsumexp_warp": (a, a, b, A, A, A, i, i), "logsumexp_block": (a, a, b, A, A, A, i),
            "logsumexp_split": (a, a, b, A, A, A, i, i),
            "logsumexp_col": (a, a, b, A, A, A, i, i, i),
            "logsumexp_merge": (A, A, A, i, A, A, A, i),
            "logsumexp_finish": (a, a, b, A, A, A, i, a, a, b, i, i, i),
            "softmax_bwd_warp": (a, a, a, i, i, i), "softmax_bwd_block": (a, a, a, i, i),
            "softmax_bwd_col": (a, a, a, i, i, i, i),
            "xent_warp": xent + (i, i), "xent_block": xent + (i,),
            "xent_col": xent + (i, i, i),
        }
        assert set(sigs) == set(K.KERNEL_NAMES)
        for name, sig in sigs.items():
            ptx, _ = cuda.compile_ptx(K.py_func(name, dt), sig, cc=(8, 0))
            if name.endswith(("_warp", "_block", "_split")) and name != "softmax_fwd_split_norm":
                assert "shfl.sync" in ptx, f"{name} {dt.__name__}: no warp shuffle in the PTX"
