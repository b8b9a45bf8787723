"""kernels_cu/softmax.cu on the CPU emulator (``simt`` backend) against SciPy in float64.

Every variant is forced at small shapes through the real launch planner, so each test runs
the grid, block and shared-memory size a GPU would get.  Odd lengths put row starts at every
16-byte phase (vector head / body / tail); NaN, +-inf, all -inf rows and +-1000 logits
exercise the special-value rules of cusoft/_backend.py.  Tolerances: conftest.TOL (the one
table, ``cusoft._check.TOLERANCE``).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import scipy.special as sp

from conftest import assert_close, simt_reason

from cusoft import _launch, _numerics


_reason = simt_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"simt harness: {_reason}")

DTYPES = (np.float16, np.float32, np.float64)
_ERR = dict(over="ignore", invalid="ignore", divide="ignore", under="ignore")

#: (variant, (outer, n, inner), launch options): small shapes that still cover the
#: variant's structure (several rows per block, tails, several chunks / tiles).
SOFTMAX_CASES = [
    ("warp", (5, 37, 1), {}),            # K = 2, 4 rows per block + a partial block
    ("warp", (3, 1, 1), {}),             # n = 1
    ("warp", (2, 1000, 1), {}),          # K = 32
    ("warp", (3, 200, 1), {}),           # K = 8: 16-byte packs per lane, some lanes idle
    ("block", (3, 999, 1), {}),          # odd n: rows at every phase
    ("online", (3, 1001, 1), {"threads": 128}),
    # 32 threads: several rounds of 16-byte loads in flight per thread, the last one partial
    ("block", (3, 2999, 1), {"threads": 32}),
    ("online", (2, 2999, 1), {"threads": 32}),
    ("split", (2, 3001, 1), {"chunk_len": 512, "threads": 128}),
    ("col", (3, 17, 5), {}),
    ("col", (2, 5, 33), {}),             # inner > 32: two tiles, a partial one
    ("3pass", (3, 50, 4), {}),
    ("3pass", (2, 77, 1), {}),
]
REDUCE_CASES = [
    ("warp", (5, 37, 1), {}),
    ("block", (3, 999, 1), {"threads": 128}),
    ("block", (2, 2999, 1), {"threads": 32}),
    ("split", (2, 3001, 1), {"chunk_len": 512, "threads": 128}),
    ("col", (3, 17, 5), {}),
    ("col", (2, 6, 33), {}),
]


def _backend(variant, opts):
    from cusoft.simt.backend import SimtBackend

    return SimtBackend(variant=variant, **opts)


def _logits(shape, dtype, seed, special):
    """Random logits; with special=True, rows of +-1000, all -inf, NaN, +inf, one +inf."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 4
    if special:
        outer, n, inner = shape
        rows = [(o, i) for o in range(outer) for i in range(inner)]
        kinds = ["pm1000", "neginf", "nan", "posinf", "pm1000", "mixinf"]
        for k, (o, i) in enumerate(rows[: len(kinds)]):
            col = x[o, :, i]
            kind = kinds[k]
            if kind == "pm1000":
                col[:] = rng.choice([-1000.0, 1000.0, 999.0, -3.0], size=n)
            elif kind == "neginf":
                col[:] = -np.inf
            elif kind == "nan":
                col[n // 2] = np.nan
            elif kind == "posinf":
                col[n // 3] = np.inf
            elif kind == "mixinf":
                col[::2] = -np.inf
                col[n - 1] = np.inf
    return x.astype(dtype)


def _seed(*key):
    return zlib.crc32(repr(key).encode())


def _canon_ids(cases):
    return [f"{v}-{'x'.join(map(str, s))}" for v, s, _ in cases]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("variant,shape,opts", SOFTMAX_CASES, ids=_canon_ids(SOFTMAX_CASES))
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_softmax_variants(variant, shape, opts, dtype, log):
    be = _backend(variant, opts)
    f = sp.log_softmax if log else sp.softmax
    for special in (False, True):
        x = _logits(shape, dtype, seed=_seed(variant, shape, special), special=special)
        out = np.full_like(x, 7)
        be.softmax(x, out, log)
        assert be.last_plan.variant == variant
        with np.errstate(**_ERR):
            ref = f(x.astype(np.float64), axis=1)
        assert_close(out, ref, dtype, what=f"{variant} {shape} special={special}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("variant,opts", [("warp", {}), ("block", {}), ("online", {"threads": 64}),
                                          ("split", {"chunk_len": 96, "threads": 32}),
                                          ("3pass", {})], ids=lambda v: str(v))
def test_rows_mixing_nan_and_inf(variant, opts, dtype, log):
    """Rows holding NaN together with +inf, with -inf, with finite values only, all NaN: the
    kernels take their maximum NaN-blind (one instruction) and find the NaN through the sum,
    or (log_softmax at a +inf maximum, where the sum says nothing) by a separate check."""
    n = 300
    x = _logits((6, n, 1), dtype, seed=_seed("naninf", variant), special=False)
    x[0, 7, 0] = np.nan
    x[0, 11, 0] = np.inf          # NaN and +inf
    x[1, 5, 0] = np.nan
    x[1, ::2, 0] = -np.inf        # NaN among -inf
    x[2, n - 1, 0] = np.nan       # NaN, finite rest (last element)
    x[3, :, 0] = np.nan           # all NaN
    x[4, 0, 0] = np.inf
    x[4, 3, 0] = np.inf           # two +inf, no NaN
    x[5, :, 0] = -np.inf
    x[5, 9, 0] = np.nan           # NaN, the rest -inf
    be = _backend(variant, opts)
    out = np.full_like(x, 7)
    be.softmax(x, out, log)
    assert be.last_plan.variant == variant
    f = sp.log_softmax if log else sp.softmax
    with np.errstate(**_ERR):
        ref = f(x.astype(np.float64), axis=1)
    assert_close(out, ref, dtype, what=f"{variant} NaN/inf rows")


@pytest.mark.parametrize("variant", ["warp", "block", "online", "split", "3pass"])
def test_softmax_in_place(variant):
    """out may alias x (contract): every variant reads a row before writing it."""
    shape = (3, 1001, 1) if variant != "warp" else (3, 97, 1)
    x = _logits(shape, np.float32, seed=3, special=True)
    with np.errstate(**_ERR):
        ref = sp.softmax(x.astype(np.float64), axis=1)
    be = _backend(variant, {"chunk_len": 256, "threads": 128} if variant == "split" else {})
    be.softmax(x, x, False)
    assert_close(x, ref, np.float32, what=f"in-place {variant}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
@pytest.mark.parametrize("variant", ["block", "warp"])
def test_softmax_out_of_phase(dtype, log, variant):
    """The block kernel caches the row with x's 16-byte phase and stores 16 bytes at a time
    only where y shares that phase (odd n: every row at another phase); the warp kernel
    loads whole packs only from an aligned x and stores them only to an aligned y.  x and
    out one element apart, both ways, take the element paths."""
    f = sp.log_softmax if log else sp.softmax
    shape = (3, 999, 1) if variant == "block" else (3, 200, 1)
    x = _logits(shape, dtype, seed=_seed("phase", log), special=True)
    with np.errstate(**_ERR):
        ref = f(x.astype(np.float64), axis=1)
    size = int(np.prod(shape))
    for shift_x, shift_y in ((0, 1), (1, 0)):
        xb = np.empty(size + 1, dtype)
        xv = xb[shift_x:shift_x + size].reshape(shape)
        xv[...] = x
        yb = np.full(size + 1, 7, dtype)
        out = yb[shift_y:shift_y + size].reshape(shape)
        be = _backend(variant, {})
        be.softmax(xv, out, log)
        assert be.last_plan.variant == variant
        assert_close(out, ref, dtype, what=f"{variant} x+{shift_x} y+{shift_y}")
        assert (yb[:shift_y] == 7).all() and (yb[shift_y + size:] == 7).all()


def _weights(shape, dtype, seed):
    """Positive weights with exact zeros, and negative weights on elements far below the
    row max (no cancellation, so float32 stays comparable to float64)."""
    rng = np.random.default_rng(seed)
    b = rng.uniform(0.5, 2.0, shape)
    b[rng.random(shape) < 0.2] = 0.0
    return b.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("variant,shape,opts", REDUCE_CASES, ids=_canon_ids(REDUCE_CASES))
@pytest.mark.parametrize("weights", [False, True], ids=["no-b", "b"])
def test_logsumexp_variants(variant, shape, opts, dtype, weights):
    be = _backend(variant, opts)
    outer, n, inner = shape
    for special in (False, True):
        x = _logits(shape, dtype, seed=_seed(variant, shape, special, 1), special=special)
        b = _weights(shape, dtype, 5) if weights else None
        if weights:
            # a row with a negative total (sign -1) and a row whose max carries weight 0
            b[0, :, 0] = -np.abs(b[0, :, 0])
            if outer * inner > 1:
                o, i = divmod(1, inner)
                b[o, int(np.argmax(x[o, :, i])), i] = 0
        x64 = x.astype(np.float64)
        b64 = None if b is None else b.astype(np.float64)
        for return_sign in (False, True):
            out = np.full((outer, inner), 7, dtype)
            sign = np.full((outer, inner), 7, dtype) if return_sign else None
            be.logsumexp(x, b, out, sign)
            assert be.last_plan.variant == variant
            with np.errstate(**_ERR):
                ref = sp.logsumexp(x64, axis=1, b=b64, return_sign=return_sign)
            what = f"{variant} {shape} special={special} sign={return_sign}"
            if return_sign:
                assert_close(out, ref[0], dtype, what=what)
                assert_close(sign, ref[1], dtype, what=what + " (sign)")
            else:
                assert_close(out, ref, dtype, what=what)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("variant,shape,opts", REDUCE_CASES, ids=_canon_ids(REDUCE_CASES))
@pytest.mark.parametrize("weights", [False, True], ids=["no-b", "b"])
def test_partial_variants(variant, shape, opts, dtype, weights):
    be = _backend(variant, opts)
    outer, n, inner = shape
    x = _logits(shape, dtype, seed=11, special=True)
    b = _weights(shape, dtype, 6) if weights else None
    acc = _launch.acc_dtype(dtype)
    m, c, r = (np.full((outer, inner), 7, acc) for _ in range(3))
    be.partial(x, b, m, c, r)
    assert be.last_plan.variant == variant
    rm, rc, rr = _numerics.partial_block(x.astype(np.float64), None if b is None else b.astype(np.float64))
    for got, ref, what in ((m, rm, "m"), (c, rc, "c"), (r, rr, "r")):
        assert_close(got, ref, dtype, what=f"{variant} {shape} {what}")


@pytest.mark.parametrize("variant", ["warp", "block", "col"])
def test_logsumexp_empty_rows(variant):
    """n == 0: SciPy gives -inf with sign -1 (handled before any launch)."""
    be = _backend(variant, {})
    x = np.empty((2, 0, 3 if variant == "col" else 1), np.float32)
    out = np.zeros((2, x.shape[2]), np.float32)
    sign = np.zeros_like(out)
    be.logsumexp(x, None, out, sign)
    assert np.all(out == -np.inf) and np.all(sign == -1)


def test_every_launch_name_is_compiled():
    """The planner can only launch what the module instantiates (one list, _module)."""
    from cusoft._cupy._module import name_expressions

    missing = _launch.all_kernel_names() - set(name_expressions())
    assert not missing, f"launched but not instantiated: {sorted(missing)}"


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_default_plans_medium(dtype):
    """The planner's own choices (no variant forced) on shapes that pick each one."""
    from cusoft.simt.backend import SimtBackend

    be = SimtBackend()
    for shape, want in [((4, 300, 1), "warp"), ((2, 5000, 1), "block"),
                        ((1, 20000, 1), "split"), ((2, 40, 7), "col")]:
        if want == "block" and 5000 * np.dtype(dtype).itemsize + 1024 + 16 > 48 * 1024:
            want = "online"
        x = _logits(shape, dtype, seed=1, special=True)
        out = np.empty_like(x)
        be.softmax(x, out, False)
        assert be.last_plan.variant == want
        with np.errstate(**_ERR):
            ref = sp.softmax(x.astype(np.float64), axis=1)
        assert_close(out, ref, dtype, what=f"default plan {shape}")
