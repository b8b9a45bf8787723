"""softmax_cross_entropy: loss against a float64 SciPy reference, gradient against the
reference and finite differences."""

import numpy as np
import pytest
import scipy.special as sp
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import cusoft
from conftest import assert_close, ref_xent, simt_reason


def num_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[idx] = h
        g[idx] = (f(x + e) - f(x - e)) / (2 * h)
    return g


CASES = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(ignore_index=2),
    dict(eps=0.1),
    dict(weight=[0.5, 2.0, 1.0, 0.25, 3.0]),
    dict(weight=[0.5, 2.0, 1.0, 0.25, 3.0], eps=0.2, ignore_index=1, reduction="mean"),
]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_labels(case, dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((7, 5)) * 3).astype(dtype)
    y = rng.integers(0, 5, size=7)
    y[:2] = 2
    kw = dict(reduction=case.get("reduction", "mean"), ignore_index=case.get("ignore_index"),
              label_smoothing=case.get("eps", 0.0), weight=case.get("weight"))
    loss, grad = cusoft.softmax_cross_entropy(x, y, return_grad=True, **kw)
    ref = ref_xent(x, y, reduction=kw["reduction"], ignore_index=kw["ignore_index"],
                   eps=kw["label_smoothing"], weight=kw["weight"])
    assert_close(loss, ref, dtype)
    if kw["reduction"] != "none":
        x64 = x.astype(np.float64)
        g = num_grad(lambda z: ref_xent(z, y, reduction=kw["reduction"],
                                        ignore_index=kw["ignore_index"],
                                        eps=kw["label_smoothing"], weight=kw["weight"]), x64)
        np.testing.assert_allclose(grad, g, atol=1e-5 if dtype == np.float32 else 1e-8)
    if kw["ignore_index"] is not None:
        assert np.all(grad[y == kw["ignore_index"]] == 0)


@pytest.mark.parametrize("axis", [1, -1, 0])
def test_probabilities_any_axis(axis):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 6, 3))
    t = sp.softmax(rng.standard_normal(x.shape), axis=axis)
    for red in ("mean", "sum", "none"):
        loss, grad = cusoft.softmax_cross_entropy(x, t, axis=axis, reduction=red,
                                                  label_smoothing=0.05, return_grad=True)
        assert_close(loss, ref_xent(x, t, axis=axis, reduction=red, eps=0.05), np.float64)
        if red == "sum":
            g = num_grad(lambda z: ref_xent(z, t, axis=axis, reduction="sum", eps=0.05), x)
            np.testing.assert_allclose(grad, g, atol=1e-8)


def test_gradient_is_softmax_minus_target():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((8, 10))
    y = rng.integers(0, 10, 8)
    _, g = cusoft.softmax_cross_entropy(x, y, reduction="sum", return_grad=True)
    np.testing.assert_allclose(g, sp.softmax(x, axis=1) - np.eye(10)[y], atol=1e-15)


def test_extreme_logits_stay_finite():
    x = np.array([[1000.0, -1000.0, 0.0], [-np.inf, 0.0, 1.0]])
    y = np.array([1, 2])
    loss = cusoft.softmax_cross_entropy(x, y, reduction="none")
    np.testing.assert_allclose(loss, ref_xent(x, y, reduction="none"))
    assert np.isfinite(loss).all()


def test_all_ignored_mean_is_nan():
    loss = cusoft.softmax_cross_entropy(np.zeros((2, 3)), np.array([1, 1]), ignore_index=1)
    assert np.isnan(loss)


def _xent_on(backend, x, lab, **kw):
    if backend == "dask":
        import dask.array as da

        # the class axis over two chunks, and in one chunk
        out = []
        for chunks in ((2, 3), (2, -1)):
            loss, g = cusoft.softmax_cross_entropy(da.from_array(x, chunks=chunks), lab,
                                                   return_grad=True, **kw)
            out.append((np.asarray(loss.compute()), g.compute()))
        assert_close(out[0][1], out[1][1], np.float64)
        return out[0]
    return cusoft.softmax_cross_entropy(x, lab, return_grad=True, backend=backend, **kw)


@pytest.mark.parametrize("backend", ["cpu", "simt", "dask"])
def test_ignored_rows_have_exactly_zero_gradient(backend):
    """An ignored row's gradient is 0 on every backend, whatever its logits (NaN, +inf) and
    even when "mean" has nothing to divide by (loss 0/0 = NaN, factor 1/0 = inf)."""
    x = np.random.default_rng(7).standard_normal((5, 6))
    x[1, 2], x[3, 0] = np.nan, np.inf
    lab = np.array([0, 4, 5, 1, 2])
    loss, g = _xent_on(backend, x, np.full(5, 3), ignore_index=3)
    assert np.isnan(loss) and np.all(g == 0)
    loss, g = _xent_on(backend, x, np.where([0, 1, 0, 1, 0], 3, lab), ignore_index=3,
                       label_smoothing=0.1)
    assert np.all(g[[1, 3]] == 0)
    keep = [0, 2, 4]
    ref_l, ref_g = cusoft.softmax_cross_entropy(x[keep], lab[keep], label_smoothing=0.1,
                                                return_grad=True, backend="cpu")
    assert_close(loss, ref_l, np.float64)
    assert_close(g[keep], ref_g, np.float64)


def test_device_mean_denominator_matches_the_host_one():
    """CuPy's "mean" factor is computed with array operations on the device (no host round
    trip); the same code on NumPy arrays gives the host formula, 1 / sum of kept weights."""
    from cusoft import _xent

    rng = np.random.default_rng(5)
    lab = rng.integers(0, 7, (4, 3))
    lab[0, 1] = -100
    w = rng.uniform(0.5, 2.0, 7)
    for weight in (None, w):
        kept = lab != -100
        den = kept.sum() if weight is None else w[lab[kept]].sum()
        got = _xent._mean_scale(np, lab, weight, -100, 7)
        assert got.ndim == 0 and got == pytest.approx(1 / den, rel=1e-15)
    assert _xent._mean_scale(np, np.full((2, 2), -100), w, -100, 7) == np.inf
    # labels out of range (possible only under capture) count as weight 0, never index w
    bad = lab.copy()
    bad[1, 1], bad[2, 2] = 7, -3
    kept = (bad != -100) & (bad >= 0) & (bad < 7)
    got = _xent._mean_scale(np, bad, w, -100, 7)
    assert got == pytest.approx(1 / w[bad[kept]].sum(), rel=1e-15)
    assert not _xent._capturing("host") and not _xent._capturing("cuda")


def test_errors():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match="out of bounds"):
        cusoft.softmax_cross_entropy(x, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="shape"):
        cusoft.softmax_cross_entropy(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="shape"):
        cusoft.softmax_cross_entropy(x, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="reduction"):
        cusoft.softmax_cross_entropy(x, np.zeros(4, int), reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        cusoft.softmax_cross_entropy(x, np.zeros(4, int), label_smoothing=1.5)
    with pytest.raises(ValueError, match="weight"):
        cusoft.softmax_cross_entropy(x, np.zeros(4, int), weight=np.ones(2))
    with pytest.raises(TypeError, match="target"):
        cusoft.softmax_cross_entropy(x, np.array(["a"] * 4))


# -- any case, every host-side backend, against the float64 definition ----------------------

@st.composite
def xent_case(draw):
    nd = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=nd, max_size=nd)))
    axis = draw(st.integers(-nd, nd - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    special = st.sampled_from([-np.inf, np.inf, np.nan, 1000.0, -1000.0])
    x = draw(hnp.arrays(np.float64, shape, elements=st.floats(-30, 30) | special))
    C = shape[axis]
    rows = shape[:axis % nd] + shape[axis % nd + 1:]
    ignore = target = None
    if draw(st.booleans()):
        target = draw(hnp.arrays(np.int64, rows, elements=st.integers(0, C - 1)))
        ignore = draw(st.none() | st.integers(0, C - 1))
    # Targets and weights are 0 or at least 1e-3: products of subnormals underflow in the
    # compute dtype (a term the float64 reference keeps), and "mean" applies 1/den there,
    # which overflows for den below 1/FLT_MAX.  Probabilities need not be normalised.
    positive = st.just(0.0) | st.floats(1e-3, 1)
    if target is None:
        target = draw(hnp.arrays(np.float64, shape, elements=positive)).astype(dtype)
    weight = draw(st.none() | hnp.arrays(np.float64, (C,), elements=positive | st.floats(1, 2)))
    return dict(x=x.astype(dtype), target=target, axis=axis, dtype=dtype,
                reduction=draw(st.sampled_from(["mean", "sum", "none"])), ignore_index=ignore,
                label_smoothing=draw(st.sampled_from([0.0, 0.1, 1.0])),
                weight=None if weight is None else weight.astype(dtype))


def _check_case(case, backend):
    kw = {k: case[k] for k in ("axis", "reduction", "ignore_index", "label_smoothing",
                               "weight")}
    x, t, dtype = case["x"], case["target"], case["dtype"]
    if backend == "dask":
        import dask.array as da

        # class axis over several chunks, the merge path
        x = da.from_array(x, chunks=tuple(max(1, s // 2) for s in x.shape))
    loss, grad = cusoft.softmax_cross_entropy(x, t, return_grad=True, backend=backend, **kw)
    if backend == "dask":
        loss, grad = np.asarray(loss.compute()), grad.compute()
    ref_l, ref_g = ref_xent(case["x"], t, case["axis"], case["reduction"],
                            case["ignore_index"], case["label_smoothing"], case["weight"],
                            with_grad=True)
    kept = _kept_rows(case)
    if kept is not None and kept.any() and _kept_weight(case, kept) == 0:
        # "mean" over zero total weight: the factor is 1/0 = inf, and the sum it divides
        # (and each p W - w t of the gradient) can be a tiny number or, after the compute
        # dtype's rounding, exactly 0 (-> NaN): the loss and every kept row's gradient are
        # not finite, ignored rows stay exactly 0
        g = np.moveaxis(np.asarray(grad, np.float64), case["axis"], -1)
        assert not np.isfinite(loss), "mean over zero weight"
        assert not np.isfinite(g[kept]).any(), "kept rows of a mean over zero weight"
        assert np.all(g[~kept] == 0), "ignored rows"
        return
    assert_close(loss, ref_l, dtype, what="loss")
    assert_close(grad, ref_g, dtype, what="grad")


def _kept_rows(case):
    """Which label rows count in "mean" (None: not a label "mean")."""
    t = np.asarray(case["target"])
    if case["reduction"] != "mean" or t.dtype.kind not in "iu":
        return None
    return np.ones(t.shape, bool) if case["ignore_index"] is None else t != case["ignore_index"]


def _kept_weight(case, kept):
    w = case["weight"]
    return kept.sum() if w is None else np.asarray(w, np.float64)[np.asarray(case["target"])[kept]].sum()


@settings(max_examples=150, deadline=None)
@given(case=xent_case())
@example(case=dict(x=np.array([18.0, 0.0], np.float32), target=np.array(1), axis=0,
                   dtype=np.float32, reduction="mean", ignore_index=None, label_smoothing=0.1,
                   weight=np.array([1.0, 0.0], np.float32)))   # found by CI: zero mean weight
def test_any_case_matches_the_definition_cpu(case):
    _check_case(case, None)


@settings(max_examples=40, deadline=None)
@given(case=xent_case())
def test_any_case_matches_the_definition_dask(case):
    _check_case(case, "dask")


@pytest.mark.skipif(simt_reason() is not None, reason=f"simt harness: {simt_reason()}")
@settings(max_examples=40, deadline=None)
@given(case=xent_case())
def test_any_case_matches_the_definition_simt(case):
    _check_case(case, "simt")


@pytest.mark.skipif(simt_reason() is not None, reason=f"simt harness: {simt_reason()}")
def test_capture_mode_leaves_out_of_range_labels_to_the_kernels(monkeypatch):
    """The CuPy path under graph capture, on the emulated CUDA C: with the host check off
    (as it is while a stream captures), out-of-range labels reach the kernels, which give
    their rows NaN loss and gradient and leave every other row as it was."""
    from cusoft import _xent

    rng = np.random.default_rng(11)
    x = rng.standard_normal((6, 40)).astype(np.float32)
    lab = np.array([3, 40, 7, -1, 12, 2 ** 40])
    bad = np.array([False, True, False, True, False, True])
    with pytest.raises(ValueError, match="out of bounds"):
        cusoft.softmax_cross_entropy(x, lab, backend="simt")
    monkeypatch.setattr(_xent, "_capturing", lambda kind: True)
    for kw in (dict(), dict(weight=rng.uniform(0.5, 2, 40).astype(np.float32),
                            label_smoothing=0.1)):
        loss, grad = cusoft.softmax_cross_entropy(x, lab, backend="simt", reduction="none",
                                                  return_grad=True, **kw)
        ok_l, ok_g = cusoft.softmax_cross_entropy(x[~bad], lab[~bad], backend="simt",
                                                  reduction="none", return_grad=True, **kw)
        assert np.isnan(loss[bad]).all() and np.isnan(grad[bad]).all()
        np.testing.assert_array_equal(loss[~bad], ok_l)
        np.testing.assert_array_equal(grad[~bad], ok_g)
        assert np.isnan(cusoft.softmax_cross_entropy(x, lab, backend="simt",
                                                     reduction="sum", **kw))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_cpu_fused_rows_match_the_definition(dtype, monkeypatch):
    """The CPU path's fused Numba kernel (row layout, finite rows): rows longer than its
    1024-element chunk, many row blocks in threads, every target kind, per-row factors; a
    block holding a +inf row takes the NumPy rules, the others stay fused."""
    from cusoft import _cpu, _cpu_kernels

    calls = []
    real = _cpu_kernels.xent_rows
    monkeypatch.setattr(_cpu_kernels, "xent_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(_cpu, "_BLOCK_BYTES", 64 * 1024)      # several blocks
    monkeypatch.setattr(_cpu, "_MIN_PARALLEL_BYTES", 0)        # and threads
    rng = np.random.default_rng(12)
    x = (rng.standard_normal((96, 2500)) * 4).astype(dtype)
    x[5, 7] = -np.inf
    x[70, 3] = np.inf                     # one block falls back to the NumPy rules
    lab = rng.integers(0, 2500, 96)
    lab[[2, 9]] = 17
    w = rng.uniform(0.5, 2, 2500).astype(dtype)
    probs = rng.random((96, 2500)).astype(dtype)
    for t, kw in ((lab, dict()), (lab, dict(ignore_index=17, weight=w, label_smoothing=0.1)),
                  (probs, dict(label_smoothing=0.2)), (probs, dict(weight=w))):
        for red in ("mean", "none"):
            calls.clear()
            loss, grad = cusoft.softmax_cross_entropy(x, t, reduction=red, return_grad=True,
                                                      **kw)
            assert len(calls) > 1
            ref_l, ref_g = ref_xent(x, t, -1, red, kw.get("ignore_index"),
                                    kw.get("label_smoothing", 0.0), kw.get("weight"),
                                    with_grad=True)
            assert_close(loss, ref_l, dtype, what=f"loss {red} {sorted(kw)}")
            assert_close(grad, ref_g, dtype, what=f"grad {red} {sorted(kw)}")


def test_cpu_backend_per_row_grad_scale():
    """Backend contract: grad_scale may be one factor per row (the fused kernel's step 1)."""
    from cusoft import _numerics
    from cusoft._cpu import CpuBackend

    rng = np.random.default_rng(13)
    x = rng.standard_normal((5, 300, 1))
    lab = rng.integers(0, 300, (5, 1))
    scale = rng.uniform(-2, 2, (5, 1))
    loss, grad = np.empty((5, 1)), np.empty_like(x)
    CpuBackend().cross_entropy(x, lab, None, None, -100, 0.1, loss, grad, scale)
    rl, rg = _numerics.cross_entropy_block(x, lab, None, None, -100, 0.1, scale, True)
    assert_close(loss, rl, np.float64)
    assert_close(grad, rg, np.float64)


def test_cpu_fused_column_layout(monkeypatch):
    """Class axis in the middle: each block is transposed in cache and runs the fused row
    kernel; loss and gradient land back in the caller's layout."""
    from cusoft import _cpu, _cpu_kernels

    calls = []
    real = _cpu_kernels.xent_rows
    monkeypatch.setattr(_cpu_kernels, "xent_rows", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(_cpu, "_BLOCK_BYTES", 32 * 1024)
    rng = np.random.default_rng(14)
    x = rng.standard_normal((6, 1300, 7)).astype(np.float32)
    lab = rng.integers(0, 1300, (6, 7))
    lab[2, 3] = -100
    w = rng.uniform(0.5, 2, 1300).astype(np.float32)
    for t, kw in ((lab, dict(ignore_index=-100, weight=w, label_smoothing=0.1)),
                  (rng.random(x.shape).astype(np.float32), dict())):
        loss, grad = cusoft.softmax_cross_entropy(x, t, axis=1, reduction="sum",
                                                  return_grad=True, **kw)
        ref_l, ref_g = ref_xent(x, t, 1, "sum", kw.get("ignore_index"),
                                kw.get("label_smoothing", 0.0), kw.get("weight"), with_grad=True)
        assert calls
        assert_close(loss, ref_l, np.float32, what="loss")
        assert_close(grad, ref_g, np.float32, what="grad")
