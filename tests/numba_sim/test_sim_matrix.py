"""Every kernel variant of the Numba backend against SciPy (float64), on the simulator."""

from __future__ import annotations

import numpy as np
import pytest
from numba import cuda

import numba_matrix as M
from cusoft._numba.backend import NumbaBackend, empty_like_device

VARIANTS = tuple(M.SHAPES)
ROW_VARIANTS = ("warp", "block", "col")  # backward and cross-entropy have no split variant
DTYPES = [pytest.param(d, id=d.__name__) for d in M.DTYPES]


@pytest.fixture(scope="module")
def run():
    be = NumbaBackend()
    ok, why = be.available()
    assert ok, why
    return M.Runner(be, to_dev=cuda.to_device, from_dev=lambda d: d.copy_to_host(),
                    empty=lambda shape, dt: cuda.device_array(shape, dt), launch=M.SIM_LAUNCH)


# The simulator runs each CUDA thread as a Python thread: a block or split case costs 5-13 s.
# Those variants get every dtype once and float32 in every flavour; warp and col (cheap)
# get the full cross product.  (Every dtype of every kernel also compiles to PTX:
# tests/test_numba_gpu.py::test_kernels_compile_to_ptx.)
_CHEAP = ("warp", "col")


def _cases(full, reduced):
    """(variant, *case) params: ``full`` for the cheap variants, ``reduced`` for the rest."""
    return [pytest.param(v, *c.values, id=f"{v}-{c.id}") for v in VARIANTS
            for c in (full if v in _CHEAP else reduced)]


SOFTMAX = [pytest.param(d, log, id=f"{d.__name__}-{'log_softmax' if log else 'softmax'}")
           for d in M.DTYPES for log in (False, True)]
SOFTMAX_REDUCED = [c for c in SOFTMAX if c.id in ("float32-softmax", "float32-log_softmax",
                                                  "float16-log_softmax", "float64-softmax")]


@pytest.mark.parametrize("variant,dtype,log", _cases(SOFTMAX, SOFTMAX_REDUCED))
def test_softmax(run, variant, dtype, log):
    M.check_softmax(run, variant, dtype, log)


LSE = [pytest.param(d, False, False, id=f"{d.__name__}-plain") for d in M.DTYPES]
LSE += [pytest.param(d, True, True, id=f"{d.__name__}-b-sign") for d in M.DTYPES]
LSE += [pytest.param(np.float64, True, False, id="float64-b-nosign")]
LSE_REDUCED = [c for c in LSE if c.id in ("float32-plain", "float32-b-sign", "float16-plain",
                                          "float64-b-nosign")]


@pytest.mark.parametrize("variant,dtype,weighted,return_sign", _cases(LSE, LSE_REDUCED))
def test_logsumexp(run, variant, dtype, weighted, return_sign):
    M.check_logsumexp(run, variant, dtype, weighted, return_sign)


@pytest.mark.parametrize("dtype,weighted", [(np.float16, False), (np.float32, True),
                                            (np.float64, False)],
                         ids=["float16", "float32-b", "float64"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_partial(run, variant, dtype, weighted):
    M.check_partial(run, variant, dtype, weighted)


@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", ROW_VARIANTS)
def test_backward(run, variant, dtype, log):
    M.check_backward(run, variant, dtype, log)


XENT = [pytest.param(np.float32, c, id=f"float32-{c}") for c in M.XENT_CASES]
XENT += [pytest.param(d, "labels_w_smooth", id=f"{d.__name__}-labels_w_smooth")
         for d in (np.float16, np.float64)]


@pytest.mark.parametrize("dtype,case", XENT)
@pytest.mark.parametrize("variant", ROW_VARIANTS)
def test_cross_entropy(run, variant, dtype, case):
    M.check_xent(run, variant, dtype, case)


def test_automatic_launch_and_aliasing(run):
    # no override: the launch function picks the variant; out aliases x (in place)
    rng = np.random.default_rng(7)
    x = M.make_input((4, 45, 1), rng).astype(np.float32)
    d = cuda.to_device(x)
    run.be.softmax(d, d, True)
    with np.errstate(all="ignore"):
        import scipy.special as sp

        want = sp.log_softmax(x.astype(np.float64), axis=1)
    M.assert_close(d.copy_to_host(), want, np.float32, "in-place log_softmax")


def test_empty_like_device_kind():
    d = cuda.to_device(np.zeros(3))
    e = empty_like_device(d, (2, 5), np.float16)
    assert type(e) is type(d) and e.shape == (2, 5) and e.dtype == np.float16
    h = empty_like_device(np.zeros(3), (4,), np.float32)
    assert isinstance(h, np.ndarray) and h.dtype == np.float32
