"""kernels_cu/backward.cu and kernels_cu/xent.cu on the CPU emulator (``simt`` backend).

Every variant is forced at small shapes through the real launch planner (cusoft/_launch.py:
launch_backward, launch_xent), so each test runs the grid, block and shared memory a GPU would
get.  References: the NumPy rules of cusoft/_numerics.py in float64 on the same (rounded)
inputs.  Tolerance: conftest.TOL, or twice the error of the same NumPy formula run in the input
dtype when that is larger (sums of terms of both signs cancel; the kernels accumulate in
float32/float64, so they are never worse than the plain formula).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import scipy.special as sp

from conftest import TOL, assert_close, simt_reason

from cusoft import _numerics


_reason = simt_reason()
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"simt harness: {_reason}")

DTYPES = (np.float16, np.float32, np.float64)
_ERR = dict(over="ignore", invalid="ignore", divide="ignore", under="ignore")

#: (variant, (outer, n, inner), launch options)
BWD_CASES = [
    ("warp", (5, 37, 1), {}),            # K = 2, 4 rows per block + a partial block
    ("warp", (3, 1, 1), {}),             # n = 1
    ("warp", (2, 1000, 1), {}),          # K = 32
    ("block", (3, 999, 1), {"threads": 128}),   # odd n: rows at every 16-byte phase
    ("block", (2, 2999, 1), {"threads": 32}),   # several rounds of loads in flight, last partial
    ("split", (2, 3001, 1), {"chunk_len": 512, "threads": 128}),
    ("col", (3, 17, 5), {}),
    ("col", (2, 5, 33), {}),             # inner > 32: two tiles, a partial one
]
XENT_CASES = [
    ("warp", (5, 37, 1), {}),
    ("warp", (3, 1, 1), {}),
    ("warp", (2, 500, 1), {}),           # K = 16, the widest
    ("block", (5, 999, 1), {"threads": 128}),
    ("block", (2, 2999, 1), {"threads": 32}),
    ("split", (2, 3001, 1), {"chunk_len": 512, "threads": 128}),   # 6 chunks, a short last one
    ("split", (3, 1000, 1), {"chunk_len": 96, "threads": 64}),     # label-row specials in 3 rows
    ("col", (3, 17, 5), {}),
    ("col", (2, 5, 33), {}),
]


def _ids(cases):
    return [f"{v}-{'x'.join(map(str, s))}" for v, s, _ in cases]


def _seed(*key):
    return zlib.crc32(repr(key).encode())


def _backend(variant, opts):
    from cusoft.simt.backend import SimtBackend

    return SimtBackend(variant=variant, **opts)


def _err(got, ref):
    """max |got - ref| / max(1, |ref|) over finite references; NaN/inf must match exactly."""
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert np.array_equal(np.isnan(got), np.isnan(ref)), "NaN positions differ"
    inf = np.isinf(ref)
    assert np.array_equal(got[inf], ref[inf]), "infinities differ"
    fin = np.isfinite(ref)
    if not fin.any():
        return 0.0
    return float((np.abs(got[fin] - ref[fin]) / np.maximum(1.0, np.abs(ref[fin]))).max())


def _assert_tol_or_lowp(got, ref, lowp, dtype, what):
    """err(got) <= max(TOL, 2 * err(lowp)): lowp is the reference formula run in dtype."""
    e = _err(got, ref)
    try:
        el = _err(lowp, ref)
    except AssertionError:  # the plain formula itself got a special value wrong: no credit
        el = 0.0
    bound = max(TOL[np.dtype(dtype)], 2 * el)
    assert e <= bound, (f"{what}: error {e:.3g} > {bound:.3g} "
                        f"(plain {np.dtype(dtype).name}: {el:.3g})")


# ------------------------------------------------------------------------------------------
# softmax / log_softmax backward
# ------------------------------------------------------------------------------------------
def _bwd_inputs(shape, dtype, log, seed):
    """y: a real (log_)softmax output (so sums have their natural size), dy: random, with a
    -inf in y for log_softmax (exp gives 0: out = dy there)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3
    y = (sp.log_softmax if log else sp.softmax)(x, axis=1)
    if log and shape[1] > 2:
        y[0, 1, 0] = -np.inf
    dy = rng.standard_normal(shape)
    return y.astype(dtype), dy.astype(dtype)


def _bwd_ref(y, dy, log):
    y64, d64 = y.astype(np.float64), dy.astype(np.float64)
    ref = _numerics.softmax_backward_block(y64, d64, np.empty_like(y64), log)
    cdt = np.float32 if y.dtype == np.float16 else y.dtype
    with np.errstate(**_ERR):
        yl, dl = y.astype(cdt), dy.astype(cdt)
        low = _numerics.softmax_backward_block(yl, dl, np.empty_like(yl), log).astype(y.dtype)
    return ref, low


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("variant,shape,opts", BWD_CASES, ids=_ids(BWD_CASES))
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_backward_variants(variant, shape, opts, dtype, log):
    be = _backend(variant, opts)
    y, dy = _bwd_inputs(shape, dtype, log, _seed(variant, shape, log))
    out = np.full_like(y, 7)
    be.softmax_backward(y, dy, out, log)
    assert be.last_plan.variant == variant
    ref, low = _bwd_ref(y, dy, log)
    _assert_tol_or_lowp(out, ref, low, dtype, f"{variant} {shape} log={log}")


_INPLACE = [c for c in BWD_CASES if c[1][1] > 1]


@pytest.mark.parametrize("variant,shape,opts", _INPLACE, ids=_ids(_INPLACE))
@pytest.mark.parametrize("alias", ["y", "dy"])
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_backward_in_place(variant, shape, opts, alias, log):
    """out may be y or dy (contract): no variant writes an element another thread still needs."""
    be = _backend(variant, opts)
    y, dy = _bwd_inputs(shape, np.float32, log, 3)
    ref, low = _bwd_ref(y, dy, log)
    out = y if alias == "y" else dy
    be.softmax_backward(y, dy, out, log)
    _assert_tol_or_lowp(out, ref, low, np.float32, f"in-place ({alias}) {variant} log={log}")


def test_backward_misaligned_views():
    """Rows whose y, dy and out sit at different 16-byte phases take the scalar paths."""
    be = _backend("block", {"threads": 64})
    y, dy = _bwd_inputs((2, 301, 1), np.float32, False, 9)
    yb = np.empty(y.size + 1, np.float32)
    yb[1:] = y.ravel()
    yv = yb[1:].reshape(y.shape)   # 4-byte offset: y and dy phases differ
    out = np.empty_like(y)
    be.softmax_backward(yv, dy, out, False)
    ref, low = _bwd_ref(y, dy, False)
    _assert_tol_or_lowp(out, ref, low, np.float32, "misaligned")


# ------------------------------------------------------------------------------------------
# fused cross-entropy
# ------------------------------------------------------------------------------------------
def _xent_logits(shape, dtype, seed, special):
    """Random logits; special: a row of +-1000 (and 999), a row with -inf entries (never at
    the row's label, which is 0), a row with a single finite value."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 3
    if special:
        outer, n, inner = shape
        rows = [(o, i) for o in range(outer) for i in range(inner)]
        for k, (o, i) in enumerate(rows[:3]):
            col = x[o, :, i]
            if k == 0:
                col[:] = rng.choice([-1000.0, 1000.0, 999.0], size=n)
            elif k == 1 and n > 1:
                col[1::2] = -np.inf
            elif k == 2 and n > 1:
                col[1:] = -np.inf
    return x.astype(dtype)


def _labels(shape, seed, ignore):
    outer, n, inner = shape
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, n, (outer, inner)).astype(np.int64)
    lab[0, 0] = 0
    if outer * inner > 1:
        lab[1, 0] = 0
    if ignore is not None and outer * inner > 2:
        lab.flat[2::3] = ignore
    return lab


#: (name, use probs, label smoothing, weights, ignore_index, want grad, grad_scale)
XENT_SCENARIOS = [
    ("labels", False, 0.0, False, -100, True, 0.25),
    ("labels-smooth-weight", False, 0.1, True, -100, True, 1.0),
    ("labels-loss-only", False, 0.0, True, 3, False, 1.0),     # the one-pass path
    ("labels-smooth-loss-only", False, 0.3, False, None, False, 1.0),
    ("probs-smooth-weight", True, 0.2, True, None, True, 0.5),
    ("probs", True, 0.0, False, None, True, 1.0),
]
_NO_IGNORE = -(2 ** 63)


def _xent_run(be, x, scen, seed):
    name, use_probs, eps, use_w, ignore, want_grad, scale = scen
    outer, n, inner = x.shape
    rng = np.random.default_rng(seed)
    labels = probs = weight = None
    ign = _NO_IGNORE if ignore is None else ignore
    if use_probs:
        p = rng.random(x.shape)
        p[p < 0.3] = 0.0              # zero targets (some on -inf logits)
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        probs = p.astype(x.dtype)
    else:
        labels = _labels(x.shape, seed, ignore)
    if use_w:
        w = rng.uniform(0.5, 2.0, n)
        w[::4] = 0.0                  # zero weights: their terms are dropped, even at -inf
        weight = w.astype(x.dtype)
    loss = np.full((outer, inner), 7, x.dtype)
    grad = np.full_like(x, 7) if want_grad else None
    be.cross_entropy(x, labels, probs, weight, ign, eps, loss, grad, scale)

    def ref_in(dt):
        with np.errstate(**_ERR):
            return _numerics.cross_entropy_block(
                x.astype(dt), labels, None if probs is None else probs.astype(dt),
                None if weight is None else weight.astype(dt), ign, eps, scale, want_grad)

    ref = ref_in(np.float64)
    low = ref_in(np.float32 if x.dtype == np.float16 else x.dtype)
    if labels is not None:  # the contract: ignored rows give exactly 0 (NumPy: p*0 - 0)
        assert np.all(loss[labels == ign] == 0), f"{name}: ignored rows"
        if want_grad:
            assert np.all(grad.transpose(0, 2, 1)[labels == ign] == 0), f"{name}: ignored grad"
    return loss, grad, ref, low


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("variant,shape,opts", XENT_CASES, ids=_ids(XENT_CASES))
def test_xent_variants(variant, shape, opts, dtype):
    be = _backend(variant, opts)
    for special in (False, True):
        x = _xent_logits(shape, dtype, _seed(variant, shape, special), special)
        for scen in XENT_SCENARIOS:
            loss, grad, ref, low = _xent_run(be, x, scen, _seed(scen[0], shape))
            assert be.last_plan.variant == variant
            what = f"{variant} {shape} {scen[0]} special={special}"
            _assert_tol_or_lowp(loss, ref[0], low[0].astype(dtype), dtype, what + " loss")
            if grad is not None:
                _assert_tol_or_lowp(grad, ref[1], low[1].astype(dtype), dtype, what + " grad")


def test_xent_grad_aliases_logits():
    """grad may be x itself: each element is read before it is overwritten."""
    for variant, shape, opts in XENT_CASES[::2] + [XENT_CASES[-1]]:
        be = _backend(variant, opts)
        x = _xent_logits(shape, np.float32, 4, True)
        labels = _labels(shape, 4, -100)
        with np.errstate(**_ERR):
            ref_l, ref_g = _numerics.cross_entropy_block(x.astype(np.float64), labels, None, None,
                                                         -100, 0.1, 1.0, True)
        loss = np.empty(labels.shape, np.float32)
        be.cross_entropy(x, labels, None, None, -100, 0.1, loss, x, 1.0)
        assert_close(loss, ref_l, np.float32, what=f"{variant} loss")
        assert_close(x, ref_g, np.float32, what=f"{variant} grad in x")


@pytest.mark.parametrize("variant,opts", [("warp", {}), ("block", {"threads": 64}),
                                          ("split", {"chunk_len": 4, "threads": 32})])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_xent_nonfinite_rows(variant, opts, eps):
    """NaN, +inf and all -inf rows follow log_softmax's rule (NumPy reference); split also
    meets them in single chunks (+inf or NaN in one chunk, all -inf chunks)."""
    be = _backend(variant, opts)
    x = np.random.default_rng(2).standard_normal((6, 9, 1)).astype(np.float32)
    x[0, 3, 0] = np.nan
    x[1, 2, 0] = np.inf
    x[2, :, 0] = -np.inf
    x[4, 7, 0] = np.inf           # +inf away from the label: loss +inf without smoothing
    x[5, 4:, 0] = -np.inf         # finite max, all -inf chunks, label at -inf
    labels = np.array([[1], [2], [0], [5], [5], [6]], np.int64)
    loss = np.empty((6, 1), np.float32)
    grad = np.empty_like(x)
    be.cross_entropy(x, labels, None, None, _NO_IGNORE, eps, loss, grad, 1.0)
    assert be.last_plan.variant == variant
    with np.errstate(**_ERR):
        rl, rg = _numerics.cross_entropy_block(x.astype(np.float64), labels, None, None,
                                               _NO_IGNORE, eps, 1.0, True)
    assert_close(loss, rl, np.float32, what="loss")
    assert_close(grad, rg, np.float32, what="grad")


#: one case per variant, split with 3 chunks per row
_XENT_ONE_EACH = [("warp", (4, 37, 1), {}), ("block", (4, 300, 1), {"threads": 64}),
                  ("split", (4, 300, 1), {"chunk_len": 128, "threads": 32}),
                  ("col", (2, 17, 3), {})]


@pytest.mark.parametrize("variant,shape,opts", _XENT_ONE_EACH, ids=_ids(_XENT_ONE_EACH))
def test_xent_per_row_grad_scale(variant, shape, opts):
    """grad_scale reaches the kernels as an array: one value, or one per row (step 1)."""
    be = _backend(variant, opts)
    x = _xent_logits(shape, np.float64, 6, False)
    outer, n, inner = shape
    labels = _labels(shape, 6, None)
    rows = np.array([0.5, 2.0, -1.0, 3.0, 0.25, 1.5])[: outer * inner].reshape(outer, inner)
    w = np.random.default_rng(6).uniform(0.5, 2.0, n)
    for scale in (rows, 0.125, np.float64(-2.0)):
        for eps, weight in ((0.0, None), (0.1, w)):
            loss = np.empty((outer, inner))
            grad = np.empty_like(x)
            be.cross_entropy(x, labels, None, weight, _NO_IGNORE, eps, loss, grad, scale)
            assert be.last_plan.variant == variant
            rl, rg = _numerics.cross_entropy_block(x, labels, None, weight, _NO_IGNORE, eps,
                                                   scale, True)
            assert_close(loss, rl, np.float64, what="loss")
            assert_close(grad, rg, np.float64, what=f"grad, scale {np.ndim(scale)}-d, eps {eps}")


@pytest.mark.parametrize("variant,shape,opts", _XENT_ONE_EACH, ids=_ids(_XENT_ONE_EACH))
def test_xent_out_of_range_labels_give_nan_rows(variant, shape, opts):
    """The kernels' own guard (the public check is skipped only under graph capture): a label
    outside [0, C) gives loss NaN and grad NaN, reads neither x[label] nor weight[label]
    (ASan would fail the build's run), and leaves the other rows exactly as without it."""
    be = _backend(variant, opts)
    x = _xent_logits(shape, np.float32, 9, False)
    outer, n, inner = shape
    good = _labels(shape, 9, -100)
    labels = good.copy()
    bad = np.zeros(good.shape, bool)
    bad.flat[0], bad.flat[-1] = True, True
    labels.flat[0], labels.flat[-1] = n, -1          # -1 != ignore_index: out of range
    if outer * inner > 4:
        labels.flat[4], bad.flat[4] = 2 ** 40, True
    w = np.random.default_rng(9).uniform(0.5, 2.0, n).astype(np.float32)
    for eps, weight, want_grad in ((0.0, None, False), (0.0, w, False), (0.1, w, True),
                                   (0.0, None, True)):
        loss = np.full((outer, inner), 7, np.float32)
        grad = np.full_like(x, 7) if want_grad else None
        be.cross_entropy(x, labels, None, weight, -100, eps, loss, grad, 1.0)
        ref_loss = np.full_like(loss, 7)
        ref_grad = np.full_like(x, 7) if want_grad else None
        be.cross_entropy(x, np.where(bad, -100, labels), None, weight, -100, eps, ref_loss,
                         ref_grad, 1.0)
        what = f"{variant} eps={eps} weight={weight is not None} grad={want_grad}"
        assert np.all(np.isnan(loss[bad])), what
        np.testing.assert_array_equal(loss[~bad], ref_loss[~bad], err_msg=what)
        if want_grad:
            g, rg = grad.transpose(0, 2, 1), ref_grad.transpose(0, 2, 1)
            assert np.all(np.isnan(g[bad])), what
            np.testing.assert_array_equal(g[~bad], rg[~bad], err_msg=what)


def test_every_launch_name_is_compiled():
    from cusoft import _launch
    from cusoft._cupy import _module

    for f in ("backward.cu", "xent.cu"):
        missing = _launch.all_kernel_names(f) - set(_module.name_expressions(f))
        assert not missing, f"{f}: launched but not instantiated: {sorted(missing)}"


# ------------------------------------------------------------------------------------------
# the public functions on backend="simt" equal backend="cpu"
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_public_api_matches_cpu(dtype):
    import cusoft

    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 40, 3)).astype(dtype)
    y = cusoft.softmax(x, axis=1, backend="cpu")
    dy = rng.standard_normal(x.shape).astype(dtype)
    for fn in (cusoft.softmax_backward, cusoft.log_softmax_backward):
        for axis in (1, -1):
            got = fn(y, dy, axis=axis, backend="simt")
            want = fn(y, dy, axis=axis, backend="cpu")
            assert_close(got, want, dtype, what=f"{fn.__name__} axis={axis}")

    logits = rng.standard_normal((7, 11)).astype(dtype) * 3
    labels = rng.integers(0, 11, 7)
    labels[2] = -100
    for kw in ({}, {"label_smoothing": 0.1, "weight": rng.uniform(0.5, 2, 11).astype(dtype)},
               {"reduction": "none"}, {"reduction": "sum"}):
        got = cusoft.softmax_cross_entropy(logits, labels, ignore_index=-100, return_grad=True,
                                           backend="simt", **kw)
        want = cusoft.softmax_cross_entropy(logits, labels, ignore_index=-100, return_grad=True,
                                            backend="cpu", **kw)
        assert_close(got[0], want[0], dtype, what=f"loss {kw}")
        assert_close(got[1], want[1], dtype, what=f"grad {kw}")
    probs = sp.softmax(rng.standard_normal((4, 5, 11)), axis=1).astype(dtype)
    lg = rng.standard_normal((4, 5, 11)).astype(dtype)
    got = cusoft.softmax_cross_entropy(lg, probs, axis=1, return_grad=True, backend="simt")
    want = cusoft.softmax_cross_entropy(lg, probs, axis=1, return_grad=True, backend="cpu")
    assert_close(got[0], want[0], dtype, what="probs loss")
    assert_close(got[1], want[1], dtype, what="probs grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_default_plans_medium(dtype):
    """The planner's own choices (no variant forced) on shapes that pick each one."""
    from cusoft.simt.backend import SimtBackend

    be = SimtBackend()
    for shape, want in [((4, 300, 1), "warp"), ((2, 5000, 1), "block"),
                        ((1, 20000, 1), "split"), ((2, 40, 7), "col")]:
        y, dy = _bwd_inputs(shape, dtype, False, 1)
        out = np.empty_like(y)
        be.softmax_backward(y, dy, out, False)
        assert be.last_plan.variant == want
        ref, low = _bwd_ref(y, dy, False)
        _assert_tol_or_lowp(out, ref, low, dtype, f"backward default plan {shape}")
    for shape, want in [((4, 300, 1), "warp"), ((2, 3000, 1), "block"),
                        ((1, 20000, 1), "split"), ((2, 40, 7), "col")]:
        x = _xent_logits(shape, dtype, 2, True)
        loss, grad, ref, low = _xent_run(be, x, XENT_SCENARIOS[1], 2)
        assert be.last_plan.variant == want
        _assert_tol_or_lowp(loss, ref[0], low[0].astype(dtype), dtype, f"xent {shape} loss")
        _assert_tol_or_lowp(grad, ref[1], low[1].astype(dtype), dtype, f"xent {shape} grad")
