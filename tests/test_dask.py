"""Dask arrays: SciPy parity with the reduced axes in one chunk or across chunks, the shape of
the graph (no task holds more than a chunk), a real two-process cluster that loses a worker,
and CuPy chunks on a GPU."""

import math
import os
import signal
import time

import numpy as np
import pytest
import scipy.special as sp

import cusoft
from conftest import assert_close, gpu_reason, ref_xent

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
from dask.callbacks import Callback  # noqa: E402  (after the importorskip)
from dask.core import flatten, get_dependencies  # noqa: E402

inf, nan = np.inf, np.nan


@pytest.fixture(autouse=True)
def synchronous(request):
    """Correctness cases run in-process; the cluster tests opt out."""
    if "cluster" in request.fixturenames:
        yield
        return
    with dask.config.set(scheduler="synchronous"):
        yield


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None,
                                  memory_limit="4GiB") as lc:
        with distributed.Client(lc) as client:
            yield lc, client


def _x(shape, dtype=np.float64, seed=0, scale=4.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    if x.size > 4:
        x.flat[::7] += 30.0      # outliers so the probabilities are not all alike
    return x.astype(dtype)


AXES = [None, 0, 1, -1, (0, 2), (1, 2), (0, 1, 2)]
CHUNKS = {"one": (6, 11, 9), "rows": (2, 11, 9), "split": (2, 4, 3)}


# -- softmax / log_softmax ----------------------------------------------------------------

@pytest.mark.parametrize("chunks", list(CHUNKS), ids=str)
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("fname", ["softmax", "log_softmax"])
def test_softmax(fname, axis, chunks):
    x = _x((6, 11, 9))
    d = da.from_array(x, chunks=CHUNKS[chunks])
    res = getattr(cusoft, fname)(d, axis=axis)
    assert isinstance(res, da.Array)
    assert res.chunks == d.chunks
    assert_close(res.compute(), getattr(sp, fname)(x, axis=axis), np.float64, what=fname)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("fname", ["softmax", "log_softmax"])
def test_softmax_dtypes_across_chunks(fname, dtype):
    x = _x((20, 300), dtype)
    d = da.from_array(x, chunks=(7, 64))
    for axis in (None, 1):
        res = getattr(cusoft, fname)(d, axis=axis)
        got = res.compute()
        assert res.dtype == dtype and got.dtype == dtype
        assert_close(got, getattr(sp, fname)(x.astype(np.float64), axis=axis), dtype,
                     what=f"{fname} {axis}")


SPECIAL_ROWS = [[0, 1, 2, 3, 4, 5], [inf, 0, 1, 2, 3, 4], [inf, inf, 0, 0, -inf, 1],
                [-inf] * 6, [nan, 0, 1, inf, 2, 3], [-inf, 0, -inf, 1, -inf, 2],
                [1e308, 1e308, 0, 0, 1, 1], [-1000, -1000, -1001, -2000, -1e5, -1000]]


@pytest.mark.parametrize("chunks", [(8, 6), (3, 1), (2, 4)], ids=str)
@pytest.mark.parametrize("fname", ["softmax", "log_softmax"])
def test_softmax_special_values(fname, chunks):
    x = np.array(SPECIAL_ROWS)
    with np.errstate(all="ignore"):
        ref = getattr(sp, fname)(x, axis=1)
    got = getattr(cusoft, fname)(da.from_array(x, chunks=chunks), axis=1).compute()
    assert_close(got, ref, np.float64, what=fname)


def test_softmax_scalar_empty_and_out():
    assert float(cusoft.softmax(da.from_array(np.array(3.0))).compute()) == 1.0
    e = cusoft.softmax(da.zeros((0, 4), chunks=2), axis=1).compute()
    assert e.shape == (0, 4)
    with pytest.raises(ValueError, match="zero-size"):
        cusoft.softmax(da.zeros((3, 0), chunks=2), axis=1)
    x = _x((5, 8))
    out = da.zeros((5, 8), chunks=(5, 3))
    res = cusoft.softmax(da.from_array(x, chunks=(5, 3)), axis=1, out=out)
    assert res is out
    assert_close(out.compute(), sp.softmax(x, axis=1), np.float64)
    with pytest.raises(TypeError, match="out must be a Dask array"):
        cusoft.softmax(da.from_array(x, chunks=(5, 3)), axis=1, out=np.empty((5, 8)))


def test_integer_input_and_complex_across_chunks():
    x = np.arange(24, dtype=np.int64).reshape(4, 6)
    d = da.from_array(x, chunks=(2, 2))
    assert_close(cusoft.softmax(d, axis=1).compute(), sp.softmax(x, axis=1), np.float64)
    assert_close(cusoft.logsumexp(d).compute(), sp.logsumexp(x), np.float64)
    z = da.from_array(x.astype(np.complex128), chunks=(2, 2))
    with pytest.raises(TypeError, match="several chunks"):
        cusoft.softmax(z, axis=1)
    # one chunk per row: the NumPy path (SciPy's own complex code) runs per chunk
    zr = da.from_array(x.astype(np.complex128), chunks=(2, 6))
    np.testing.assert_allclose(cusoft.softmax(zr, axis=1).compute(),
                               sp.softmax(x.astype(np.complex128), axis=1))


# -- logsumexp ----------------------------------------------------------------------------

@pytest.mark.parametrize("chunks", list(CHUNKS), ids=str)
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("keepdims", [False, True])
def test_logsumexp(axis, chunks, keepdims):
    x = _x((6, 11, 9))
    d = da.from_array(x, chunks=CHUNKS[chunks])
    res = cusoft.logsumexp(d, axis=axis, keepdims=keepdims)
    assert isinstance(res, da.Array)
    ref = sp.logsumexp(x, axis=axis, keepdims=keepdims)
    assert res.shape == np.shape(ref)
    assert_close(res.compute(), ref, np.float64)
    m, s = cusoft.logsumexp_partial(d, axis=axis, keepdims=keepdims)
    assert m.shape == np.shape(ref)
    assert_close(m.compute() + np.log(s.compute()), ref, np.float64, what="partial")


B_CASES = {
    "same": lambda rng: rng.standard_normal((6, 11, 9)),
    "bcast_b": lambda rng: rng.standard_normal((11, 1)),
    "bcast_a": lambda rng: rng.standard_normal((3, 6, 11, 9)),
    "scalar": lambda rng: -2.5,
    "zeros": lambda rng: (rng.random((6, 11, 9)) > 0.5) * 1.0,
}


@pytest.mark.parametrize("chunks", ["one", "split"])
@pytest.mark.parametrize("bkind", list(B_CASES))
@pytest.mark.parametrize("b_is_dask", [False, True])
@pytest.mark.parametrize("axis", [None, 1, (0, 2)], ids=str)
def test_logsumexp_weights(axis, b_is_dask, bkind, chunks):
    rng = np.random.default_rng(1)
    x = _x((6, 11, 9))
    b = B_CASES[bkind](rng)
    if bkind == "bcast_a" and axis is not None:
        axis = (axis + 1) if isinstance(axis, int) else tuple(a + 1 for a in axis)
    d = da.from_array(x, chunks=CHUNKS[chunks])
    bb = da.from_array(np.asarray(b), chunks=2) if b_is_dask else b
    for return_sign in (False, True):
        with np.errstate(all="ignore"):
            ref = sp.logsumexp(x, axis=axis, b=b, return_sign=return_sign)
        got = cusoft.logsumexp(d, axis=axis, b=bb, return_sign=return_sign)
        if return_sign:
            got = dask.compute(*got)
            assert_close(got[0], ref[0], np.float64, what="res")
            np.testing.assert_array_equal(got[1], ref[1])
        else:
            assert_close(got.compute(), ref, np.float64)


def test_logsumexp_numpy_a_dask_b():
    x = _x((6, 8))
    b = np.random.default_rng(2).random((6, 8))
    got = cusoft.logsumexp(x, axis=1, b=da.from_array(b, chunks=(3, 3)))
    assert isinstance(got, da.Array)
    assert_close(got.compute(), sp.logsumexp(x, axis=1, b=b), np.float64)


LSE_SPECIAL = [
    ([0, 0, 5, 1], [1, -1, 0, 0]),            # exact cancellation: -inf, sign 0
    ([inf, inf, 0, 1], [0, 1, 1, 1]),         # 0 * inf in SciPy's direct sum: NaN
    ([inf, 1, 2, inf], [1, 1, 1, -1]),        # inf - inf
    ([-inf] * 4, [1, 1, 1, 1]),               # all -inf
    ([1, 2, 3, 4], [1, 1, -1, -1e-300]),      # negative sum
    ([nan, 1, 2, 3], [1, 1, 1, 1]),
    ([1000, 1000, 0, 0], [1, -1, 0, 2]),
    ([700, 710, 0, 1], [1, 1, 1, 1]),
    ([inf, 0, 1, 2], [1, 1, 1, 1]),
    ([inf, 0, 1, nan], [1, 1, 1, 0]),         # b == 0 drops the NaN
]


@pytest.mark.parametrize("chunks", [(10, 4), (3, 1), (2, 2)], ids=str)
@pytest.mark.parametrize("return_sign", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_logsumexp_special_values(chunks, return_sign, weighted):
    x = np.array([r[0] for r in LSE_SPECIAL], float)
    b = np.array([r[1] for r in LSE_SPECIAL], float) if weighted else None
    with np.errstate(all="ignore"):
        ref = sp.logsumexp(x, axis=1, b=b, return_sign=return_sign)
    got = cusoft.logsumexp(da.from_array(x, chunks=chunks), axis=1, b=b,
                           return_sign=return_sign)
    if return_sign:
        got = dask.compute(*got)
        assert_close(got[0], ref[0], np.float64, what="res")
        assert_close(got[1], ref[1], np.float64, what="sign")
    else:
        assert_close(got.compute(), ref, np.float64)


@pytest.mark.parametrize("return_sign", [False, True])
def test_logsumexp_special_values_to_a_scalar(return_sign):
    """axis=None: the merged state is 0-d and SciPy's fallback for non-finite results
    writes into it (it raised TypeError on NumPy scalars)."""
    for xr, br in LSE_SPECIAL:
        x, b = np.array(xr, float), np.array(br, float)
        with np.errstate(all="ignore"):
            ref = sp.logsumexp(x, b=b, return_sign=return_sign)
        got = cusoft.logsumexp(da.from_array(x, chunks=1), b=da.from_array(b, chunks=2),
                               return_sign=return_sign)
        got = dask.compute(*got) if return_sign else (got.compute(),)
        for g, r in zip(got, ref if return_sign else (ref,)):
            assert np.shape(g) == (), (xr, br, g)
            assert_close(g, r, np.float64, what=f"{xr} {br}")


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_logsumexp_low_precision(dtype):
    x = _x((30, 200), dtype)
    d = da.from_array(x, chunks=(7, 32))
    for axis in (None, 1):
        res = cusoft.logsumexp(d, axis=axis)
        got = res.compute()
        assert res.dtype == dtype and np.asarray(got).dtype == dtype
        assert_close(got, sp.logsumexp(x.astype(np.float64), axis=axis), dtype)
        m, s = cusoft.logsumexp_partial(d, axis=axis)
        assert m.dtype == (np.float32 if dtype == np.float16 else dtype)


def test_logsumexp_small_terms_keep_log1p():
    x = np.zeros(64)
    x[1:] = -40.0
    x[0] = 0.0
    got = cusoft.logsumexp(da.from_array(x, chunks=5)).compute()
    assert got == pytest.approx(sp.logsumexp(x), rel=1e-12, abs=0)
    assert got > 0


def test_split_every_depths():
    x = _x((3, 4096))
    d = da.from_array(x, chunks=(3, 16))      # 256 chunks: a tree of depth 4 at split 4
    for split in (2, 4, 32):
        with dask.config.set(split_every=split):
            assert_close(cusoft.logsumexp(d, axis=1).compute(), sp.logsumexp(x, axis=1),
                         np.float64)
            assert_close(cusoft.softmax(d, axis=None).compute(), sp.softmax(x), np.float64)


# -- backward ------------------------------------------------------------------------------

@pytest.mark.parametrize("chunks", ["one", "split"])
@pytest.mark.parametrize("axis", [None, 1, (0, 2)], ids=str)
@pytest.mark.parametrize("log", [False, True])
def test_backward(log, axis, chunks):
    x = _x((6, 11, 9), scale=1.0)
    dy = np.random.default_rng(3).standard_normal(x.shape)
    if log:
        y = sp.log_softmax(x, axis=axis)
        ref = dy - np.exp(y) * dy.sum(axis=axis, keepdims=True)
        fn = cusoft.log_softmax_backward
    else:
        y = sp.softmax(x, axis=axis)
        ref = y * (dy - np.sum(dy * y, axis=axis, keepdims=True))
        fn = cusoft.softmax_backward
    yd = da.from_array(y, chunks=CHUNKS[chunks])
    for d in (dy, da.from_array(dy, chunks=(3, 5, 5))):
        res = fn(yd, d, axis=axis)
        assert isinstance(res, da.Array)
        assert_close(res.compute(), ref, np.float64)
    with pytest.raises(ValueError, match="must be equal"):
        fn(yd, dy[:2], axis=axis)


# -- cross-entropy -------------------------------------------------------------------------

XENT_CASES = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(ignore_index=2),
    dict(label_smoothing=0.1),
    dict(weight="w"),
    dict(weight="w", label_smoothing=0.2, ignore_index=1),
]


@pytest.mark.parametrize("chunks", [(3, 7, 4), (2, 3, 4)], ids=["classes-one", "classes-split"])
@pytest.mark.parametrize("kind, case",
                         [("labels", c) for c in XENT_CASES]
                         # ignore_index only has a meaning for integer labels
                         + [("probs", c) for c in XENT_CASES if "ignore_index" not in c],
                         ids=str)
def test_cross_entropy(kind, case, chunks):
    rng = np.random.default_rng(4)
    x = _x((6, 7, 9), scale=2.0)
    C = 7
    if kind == "labels":
        target = rng.integers(0, C, size=(6, 9))
        target[0, :3] = 2
    else:
        target = rng.random(x.shape)
        target /= target.sum(axis=1, keepdims=True)
    kw = dict(case)
    if kw.get("weight") == "w":
        kw["weight"] = rng.random(C) + 0.2
    red = kw.get("reduction", "mean")
    ref_loss, ref_grad = ref_xent(x, target, 1, red, kw.get("ignore_index"),
                                  kw.get("label_smoothing", 0.0), kw.get("weight"),
                                  with_grad=True)
    d = da.from_array(x, chunks=chunks)
    tchunks = 3 if kind == "labels" else (3, 2, 5)
    for t in (target, da.from_array(target, chunks=tchunks)):
        loss, grad = cusoft.softmax_cross_entropy(d, t, axis=1, return_grad=True, **kw)
        assert isinstance(grad, da.Array) and grad.chunks == d.chunks
        loss, grad = dask.compute(loss, grad)
        assert_close(loss, ref_loss, np.float64, what="loss")
        assert_close(grad, ref_grad, np.float64, what="grad")
        alone = cusoft.softmax_cross_entropy(d, t, axis=1, **kw).compute()
        assert_close(alone, ref_loss, np.float64, what="loss alone")


def test_cross_entropy_dask_weight_float32_and_bad_label():
    rng = np.random.default_rng(5)
    x = _x((40, 10), np.float32)
    lab = rng.integers(0, 10, size=40)
    w = rng.random(10) + 0.5
    d = da.from_array(x, chunks=(16, 4))
    loss, grad = cusoft.softmax_cross_entropy(d, lab, weight=da.from_array(w, chunks=5),
                                              return_grad=True)
    assert loss.dtype == np.float32 and grad.dtype == np.float32
    rl, rg = ref_xent(x, lab, -1, weight=w, with_grad=True)
    assert_close(loss.compute(), rl, np.float32)
    assert_close(grad.compute(), rg, np.float32)
    bad = lab.copy()
    bad[3] = 10
    lazy = cusoft.softmax_cross_entropy(d, bad)         # labels are checked when it runs
    with pytest.raises(ValueError, match="out of bounds"):
        lazy.compute()


# -- the shape of the graph ---------------------------------------------------------------

class _Sizes(Callback):
    """Records the bytes each task returned (dict states: the sum of their arrays)."""

    def __init__(self):
        super().__init__()
        self.nbytes = {}

    def _posttask(self, key, result, dsk, state, id):
        if isinstance(result, dict):
            n = sum(getattr(a, "nbytes", 0) for a in result.values())
        else:
            n = getattr(result, "nbytes", 0)
        self.nbytes[key] = n


def _graph_checks(res, x):
    """No task returns more than a chunk; a task reads at most one input chunk, and the
    tasks that depend on many others are the (tiny) state merges."""
    chunk_bytes = math.prod(max(c) for c in x.chunks) * x.dtype.itemsize
    inputs = set(flatten(x.__dask_keys__()))
    dsk = dict(res.__dask_graph__())
    split = dask.config.get("split_every", 4) or 4
    for key in dsk:
        if key in inputs:
            continue
        deps = get_dependencies(dsk, key)
        assert len(deps & inputs) <= 1, f"{key} reads {len(deps & inputs)} input chunks"
        assert len(deps) <= max(split, 3), f"{key} has {len(deps)} dependencies"
    with _Sizes() as sizes:
        res.persist(optimize_graph=False)   # persist: no final concatenation task
    big = {k: n for k, n in sizes.nbytes.items() if n > chunk_bytes}
    assert not big, f"tasks larger than a chunk ({chunk_bytes} B): {list(big)[:3]}"
    merges = [k for k in dsk if len(get_dependencies(dsk, k)) > 1
              and not (get_dependencies(dsk, k) & inputs)]
    assert merges, "expected merge tasks"
    # merge tasks hold states: a few floats per row, never a chunk of data
    final = set(flatten(res.__dask_keys__()))
    for k in merges:
        if k not in final:
            assert sizes.nbytes[k] <= chunk_bytes // 16, (k, sizes.nbytes[k])


@pytest.mark.parametrize("fname", ["softmax", "log_softmax", "logsumexp"])
def test_graph_axis_none_holds_one_chunk(fname):
    x = da.random.default_rng(0).standard_normal((256, 4096), chunks=(32, 1024))
    res = getattr(cusoft, fname)(x)
    assert res.npartitions == (1 if fname == "logsumexp" else x.npartitions)
    _graph_checks(res, x)
    xv = x.compute()
    assert_close(res.compute(), getattr(sp, fname)(xv), np.float64)


def test_graph_never_rechunks_the_axis():
    x = da.random.default_rng(1).standard_normal((64, 4096), chunks=(64, 512))
    for res in (cusoft.softmax(x, axis=1), cusoft.logsumexp(x, axis=1),
                cusoft.softmax_cross_entropy(x, da.zeros(64, dtype=int, chunks=64))):
        names = " ".join(str(k) for k in dict(res.__dask_graph__()))
        assert "rechunk" not in names
    _graph_checks(cusoft.softmax(x, axis=1), x)


# -- a real cluster ------------------------------------------------------------------------

def test_cluster_matches_scipy(cluster):
    _, client = cluster
    x = _x((64, 2000))
    d = da.from_array(x, chunks=(16, 250))
    got = client.compute([cusoft.softmax(d), cusoft.logsumexp(d, axis=1),
                          cusoft.log_softmax(d, axis=(0, 1))], sync=True)
    assert_close(got[0], sp.softmax(x), np.float64)
    assert_close(got[1], sp.logsumexp(x, axis=1), np.float64)
    assert_close(got[2], sp.log_softmax(x), np.float64)


def _slow(block):
    time.sleep(0.15)
    return block


@pytest.mark.slow
def test_cluster_survives_a_killed_worker(cluster):
    lc, client = cluster
    client.wait_for_workers(2, timeout=60)
    x = da.random.default_rng(7).standard_normal((64, 2 ** 14), chunks=(16, 2 ** 11))
    ref = sp.softmax(x.compute())
    y = cusoft.softmax(x.map_blocks(_slow, dtype=x.dtype))
    fut = client.compute(y)
    # let both workers get going, then kill one of the worker processes outright
    deadline = time.time() + 30
    while time.time() < deadline:
        done = sum(len(v) for v in client.has_what().values())
        if done >= 4:
            break
        time.sleep(0.05)
    victim = sorted(client.scheduler_info()["workers"])[0]
    pid = client.run(os.getpid, workers=[victim])[victim]
    assert not fut.done(), "the computation finished before the kill; make it slower"
    os.kill(pid, signal.SIGKILL)
    got = fut.result(timeout=120)
    assert_close(got, ref, np.float64)
    client.wait_for_workers(2, timeout=60)   # the nanny brings it back for later tests
    assert victim not in client.scheduler_info()["workers"], "the worker was not replaced"


# -- CuPy chunks ----------------------------------------------------------------------------

@pytest.mark.gpu
def test_cupy_chunks_on_one_gpu():
    cupy = pytest.importorskip("cupy")
    assert gpu_reason() is None
    x = _x((64, 4096), np.float32)
    d = da.from_array(x, chunks=(16, 1024)).map_blocks(cupy.asarray)
    for res, ref in ((cusoft.softmax(d), sp.softmax(x.astype(np.float64))),
                     (cusoft.log_softmax(d, axis=1), sp.log_softmax(x.astype(np.float64), 1)),
                     (cusoft.logsumexp(d, axis=1), sp.logsumexp(x.astype(np.float64), 1))):
        got = res.compute()
        assert isinstance(got, cupy.ndarray)        # the chunks never left the GPU
        assert_close(cupy.asnumpy(got), ref, np.float32)


def test_use_backend_dask_on_numpy_input():
    x = _x((4, 6))
    with cusoft.use_backend("dask"):
        res = cusoft.softmax(x, axis=1)
        assert isinstance(res, da.Array)
        got = res.compute()          # the chunk runs on "cpu", not back into Dask
        lse = cusoft.logsumexp(x, axis=1, b=np.ones(6)).compute()
    assert_close(got, sp.softmax(x, axis=1), np.float64)
    assert_close(lse, sp.logsumexp(x, axis=1), np.float64)


# -- any shape, chunking and axis, against SciPy ---------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402


@st.composite
def _chunked_case(draw):
    nd = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=nd, max_size=nd)))
    chunks = tuple(draw(st.integers(1, s)) for s in shape)
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]))
    special = st.sampled_from([-np.inf, np.inf, np.nan, 60.0])
    x = draw(hnp.arrays(np.float64, shape, elements=st.floats(-30, 30) | special))
    axes = [None] + list(range(-nd, nd)) + ([tuple(range(nd))[::2]] if nd > 1 else [])
    b = None
    if draw(st.booleans()):
        b = draw(hnp.arrays(np.float64, shape[-draw(st.integers(1, nd)):],
                            elements=st.floats(-1, 2) | st.just(0.0)))
    return dict(x=x.astype(dtype), chunks=chunks, dtype=dtype, axis=draw(st.sampled_from(axes)),
                b=b, keepdims=draw(st.booleans()), return_sign=draw(st.booleans()))


@settings(max_examples=60, deadline=None)
@given(case=_chunked_case())
def test_any_chunking_matches_scipy(case):
    """softmax, log_softmax and logsumexp (b, keepdims, return_sign) on random chunkings,
    special values included: reductions of 0-d states and of single-element chunks too."""
    x, dt, axis = case["x"], case["dtype"], case["axis"]
    d = da.from_array(x, chunks=case["chunks"])
    x64 = x.astype(np.float64)
    with np.errstate(all="ignore"):
        for fn, ref in ((cusoft.softmax, sp.softmax), (cusoft.log_softmax, sp.log_softmax)):
            assert_close(fn(d, axis=axis).compute(), ref(x64, axis=axis), dt, what=fn.__name__)
        b = None if case["b"] is None else case["b"].astype(dt)
        kw = dict(axis=axis, keepdims=case["keepdims"], return_sign=case["return_sign"])
        ref = sp.logsumexp(x64, b=None if b is None else b.astype(np.float64), **kw)
        got = cusoft.logsumexp(d, b=b, **kw)
    got = dask.compute(*got) if kw["return_sign"] else (got.compute(),)
    ref = ref if kw["return_sign"] else (ref,)
    for g, r in zip(got, ref):
        assert np.shape(g) == np.shape(r)
        assert_close(g, r, dt, what=f"logsumexp {kw} b={b is not None}")
