"""cusoft.attention on Dask arrays: split-KV (key/value chunks computed apart, their
``(out, lse)`` merged exactly in a tree), against the float64 oracle of tests/test_attention.py
with its bound (at most twice the error of a computation in the input's precision, plus a
floor).  Also the private ``_causal_offset`` that places a chunk on the global causal diagonal,
on every host backend, and the shape of the graph: no task sees more than one key/value chunk.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import cusoft
from cusoft import _attention_cpu
from cusoft import _dask as cdask
from cusoft._attention import attention as eager
from conftest import cxx_reason, gpu_reason

from test_attention import FLOOR, err, make, reference

da = pytest.importorskip("dask.array")
dask = pytest.importorskip("dask")
pytest.importorskip("distributed")
from dask.callbacks import Callback  # noqa: E402  (after the importorskip)
from dask.core import flatten, get_dependencies  # noqa: E402

# the two-process LocalCluster, and the autouse in-process scheduler for every other test
from test_dask import cluster, synchronous  # noqa: E402,F401


def compare(got_out, got_lse, q, k, v, **kw):
    """got (out, lse) against the float64 oracle with test_attention's bound."""
    dt = np.dtype(q.dtype)
    ro, rl = reference(q, k, v, **kw)
    lo, ll = reference(q, k, v, dtype=dt, **kw)
    assert got_out.dtype == dt and got_out.shape == ro.shape
    assert got_lse.dtype == _attention_cpu.acc_dtype(dt) and got_lse.shape == rl.shape
    eo, el = err(got_out, ro), err(got_lse, rl)
    assert eo <= FLOOR[dt] + 2 * err(lo, ro), f"out: error {eo:.3g}"
    assert el <= FLOOR[dt] + 2 * err(ll, rl), f"lse: error {el:.3g}"


def run(q, k, v, qc, kc, **kw):
    """Dask attention with q chunked ``qc`` and k/v chunked ``kc``; computed, with lse."""
    res = cusoft.attention(da.from_array(q, chunks=qc), da.from_array(k, chunks=kc),
                           da.from_array(v, chunks=kc[:-1] + (v.shape[-1],)),
                           return_lse=True, **kw)
    assert all(isinstance(r, da.Array) for r in res)
    return dask.compute(*res)


#: key/value chunkings of Lk = 13: one chunk, two uneven, five uneven
KV_SPLITS = {"1": (13,), "2": (8, 5), "5": (3, 1, 4, 2, 3)}
#: Lq: fewer queries than keys, as many, more (causal rows that see no key at all)
LQS = (4, 13, 19)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("Lq", LQS)
@pytest.mark.parametrize("split", list(KV_SPLITS))
def test_key_value_chunks(split, Lq, causal, dtype):
    rng = np.random.default_rng(Lq)
    q, k, v = make((2, 3, Lq, 8), (2, 3, 13, 8), (2, 3, 13, 5), dtype, rng, logit_scale=2.0)
    qc = (1, 2, max(1, Lq // 3), 8)          # batch, heads and queries chunked too
    out, lse = run(q, k, v, qc, (2, 3, KV_SPLITS[split], 8), causal=causal)
    compare(out, lse, q, k, v, causal=causal)


@pytest.mark.parametrize("causal", [False, True])
def test_gqa_unaligned_head_chunks(causal):
    # 6 query heads over 2 kv heads (G = 3); query head chunks (1, 2, 3) cut inside a group,
    # so they are realigned to whole groups; kv heads and keys chunked on their own
    rng = np.random.default_rng(1)
    q, k, v = make((2, 6, 7, 16), (2, 2, 11, 16), (2, 2, 11, 4), np.float64, rng)
    res = cusoft.attention(da.from_array(q, chunks=(1, (1, 2, 3), 3, 16)),
                           da.from_array(k, chunks=(2, 1, 4, 16)),
                           da.from_array(v, chunks=(1, 2, (5, 6), 4)),
                           causal=causal, return_lse=True)
    assert res[0].chunks[1] == (3, 3) and res[0].chunks[2] == (3, 3, 1)
    compare(*dask.compute(*res), q, k, v, causal=causal)


def test_mqa_and_batch_broadcast():
    # one kv head for 4 query heads; q has a batch axis of 3 that k/v broadcast (size 1)
    rng = np.random.default_rng(2)
    q, k, v = make((3, 4, 5, 8), (1, 1, 17, 8), (1, 1, 17, 8), np.float32, rng)
    out, lse = run(q, k, v, (2, 2, 5, 8), (1, 1, 6, 8), causal=True)
    compare(out, lse, q, k, v, causal=True)


# (mask shape, bias shape, which of them are Dask) broadcast to (B=2, Hq=4, Lq=6, Lk=13)
OPERANDS = [
    ((6, 13), None, "mask"),
    ((2, 1, 6, 13), None, "mask"),
    ((4, 1, 13), (1, 13), "both"),
    (None, (2, 4, 6, 13), "bias"),
    (None, (13,), "none"),
    ((1, 1, 1, 13), (4, 6, 1), "both"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", OPERANDS, ids=str)
def test_mask_and_bias_broadcast(case, causal, dtype, monkeypatch):
    mshape, bshape, which = case
    rng = np.random.default_rng(3)
    q, k, v = make((2, 4, 6, 8), (2, 2, 13, 8), (2, 2, 13, 8), dtype, rng)
    mask = None if mshape is None else rng.random(mshape) > 0.3
    bias = None if bshape is None else rng.standard_normal(bshape).astype(dtype)

    def lazy(a, dask_it):
        if a is None or not dask_it:
            return a
        # chunks unlike q's and k's: the Dask path realigns them (never along a size-1 axis)
        return da.from_array(a, chunks=tuple(n if n == 1 else max(1, n // 2) for n in a.shape))

    seen = []
    real = cdask._attn_part

    def spy(qb, kb, vb, mb=None, bb=None, **kw):
        seen.append((None if mb is None else mb.shape, None if bb is None else bb.shape,
                     kb.shape[-2]))
        return real(qb, kb, vb, mb, bb, **kw)

    monkeypatch.setattr(cdask, "_attn_part", spy)
    out, lse = cusoft.attention(da.from_array(q, chunks=(1, 4, 3, 8)),
                                da.from_array(k, chunks=(1, 2, (5, 3, 5), 8)), v, causal=causal,
                                mask=lazy(mask, which in ("mask", "both")),
                                bias=lazy(bias, which in ("bias", "both")), return_lse=True)
    compare(*dask.compute(out, lse), q, k, v, causal=causal, mask=mask, bias=bias)
    assert seen
    for ms, bs, nk in seen:
        # each block sees its own keys only; broadcast axes arrive with size 1
        for shp, full in ((ms, mshape), (bs, bshape)):
            if shp is None:
                continue
            full = (1,) * (len(shp) - len(full)) + tuple(full)
            assert all(f != 1 or s == 1 for s, f in zip(shp, full)), (shp, full)
            assert shp[-1] == (1 if full[-1] == 1 else nk)


@pytest.mark.parametrize("split", ["1", "5"])
def test_fully_masked_rows(split):
    rng = np.random.default_rng(4)
    q, k, v = make((1, 2, 5, 8), (1, 2, 13, 8), (1, 2, 13, 8), np.float64, rng)
    mask = rng.random((2, 5, 13)) > 0.5
    mask[0, 1] = False                    # no key at all
    mask[1, 2] = False
    mask[1, 2, 12] = True                 # one key, in the last chunk: other chunks -inf
    bias = np.zeros((5, 13))
    bias[3] = -np.inf                     # masked by the bias instead
    out, lse = run(q, k, v, (1, 1, 2, 8), (1, 2, KV_SPLITS[split], 8), mask=mask, bias=bias)
    assert not np.isnan(out).any() and not np.isnan(lse).any()
    assert np.all(out[0, 0, 1] == 0) and lse[0, 0, 1] == -np.inf
    assert np.all(out[0, :, 3] == 0) and np.all(lse[0, :, 3] == -np.inf)
    np.testing.assert_allclose(out[0, 1, 2], v[0, 1, 12], rtol=1e-14)
    compare(out, lse, q, k, v, mask=mask, bias=bias)


def test_float16_and_no_lse():
    rng = np.random.default_rng(5)
    q, k, v = make((2, 2, 9, 16), (2, 2, 21, 16), (2, 2, 21, 16), np.float16, rng)
    out, lse = run(q, k, v, (2, 2, 4, 16), (2, 2, 5, 16), causal=True)
    compare(out, lse, q, k, v, causal=True)
    alone = cusoft.attention(da.from_array(q, chunks=(2, 2, 4, 16)),
                             da.from_array(k, chunks=(2, 2, 5, 16)), v, causal=True)
    assert isinstance(alone, da.Array) and alone.dtype == np.float16
    np.testing.assert_array_equal(alone.compute(), out)


def test_scale_method_out_and_errors():
    rng = np.random.default_rng(6)
    q, k, v = make((1, 2, 6, 8), (1, 2, 10, 8), (1, 2, 10, 8), np.float64, rng)
    kd = da.from_array(k, chunks=(1, 2, 4, 8))
    for method in ("naive", "tiled"):
        got = cusoft.attention(q, kd, v, scale=0.3, method=method, return_lse=True)
        compare(*dask.compute(*got), q, k, v, scale=0.3)
    dst = da.zeros((1, 2, 6, 8), chunks=(1, 2, 6, 8))
    res = cusoft.attention(q, kd, v, out=dst)
    assert res is dst
    compare(dst.compute(), eager(q, k, v, return_lse=True)[1], q, k, v)
    with pytest.raises(TypeError, match="one dtype"):
        cusoft.attention(q.astype(np.float32), kd, v)
    with pytest.raises(ValueError, match="does not broadcast"):
        cusoft.attention(q, kd, v, mask=da.ones((3, 10), dtype=bool))
    with pytest.raises(TypeError, match="mask must be boolean"):
        cusoft.attention(q, kd, v, mask=da.ones((6, 10)))
    with pytest.raises(ValueError, match="unknown method"):
        cusoft.attention(q, kd, v, method="flash")


def test_split_every_tree():
    rng = np.random.default_rng(7)
    q, k, v = make((1, 1, 3, 4), (1, 1, 64, 4), (1, 1, 64, 4), np.float64, rng)
    for split in (2, 3, 16):
        with dask.config.set(split_every=split):
            res = cusoft.attention(q, da.from_array(k, chunks=(1, 1, 4, 4)), v,
                                   return_lse=True)
            dsk = dict(res[0].__dask_graph__())
            fan = max(len(get_dependencies(dsk, key)) for key in dsk
                      if "cusoft-attention-part" in key[0])
            assert fan <= max(split, 3)
            compare(*dask.compute(*res), q, k, v)


# -- the private causal offset, on every host backend ----------------------------------------

@pytest.mark.parametrize("backend", ["cpu", "naive", "simt"])
def test_causal_offset(backend, monkeypatch):
    if backend == "simt" and cxx_reason():
        pytest.skip(cxx_reason())
    monkeypatch.setattr(_attention_cpu, "_KEY_TILE", 3)
    monkeypatch.setattr(_attention_cpu, "_ROW_TILE", 2)
    be, method = ("cpu", "naive") if backend == "naive" else (backend, None)
    rng = np.random.default_rng(8)
    for Lq, Lk in ((5, 7), (7, 5), (1, 4), (4, 1)):
        q, k, v = make((2, 4, Lq, 8), (2, 2, Lk, 8), (2, 2, Lk, 3), np.float32, rng)
        mask = rng.random((4, Lq, Lk)) > 0.2
        bias = rng.standard_normal((1, Lk)).astype(np.float32)
        for d in range(-Lq - 1, Lk + 2):
            keep = np.arange(Lk)[None] <= np.arange(Lq)[:, None] + d
            got = eager(q, k, v, causal=True, _causal_offset=d, mask=mask, bias=bias,
                        return_lse=True, backend=be, method=method)
            compare(*got, q, k, v, mask=mask & keep, bias=bias)


def test_simt_chunks():
    """The CUDA C kernel (on the emulator) as the chunk backend, causal across chunks."""
    if cxx_reason():
        pytest.skip(cxx_reason())
    rng = np.random.default_rng(9)
    q, k, v = make((1, 2, 9, 16), (1, 1, 70, 16), (1, 1, 70, 16), np.float32, rng)
    out, lse = run(q, k, v, (1, 2, 5, 16), (1, 1, 33, 16), causal=True, backend="simt")
    compare(out, lse, q, k, v, causal=True)


# -- the shape of the graph ------------------------------------------------------------------

class _Sizes(Callback):
    """Bytes each task returned ((out, lse) pairs: both)."""

    def __init__(self):
        super().__init__()
        self.nbytes = {}

    def _posttask(self, key, result, dsk, state, id):
        parts = result if isinstance(result, tuple) else (result,)
        self.nbytes[key] = sum(getattr(a, "nbytes", 0) for a in parts)


def test_graph_never_holds_the_whole_sequence():
    Lq, Lk, D = 64, 4096, 16
    q = da.random.default_rng(0).standard_normal((1, 2, Lq, D), chunks=(1, 2, 32, D))
    k = da.random.default_rng(1).standard_normal((1, 2, Lk, D), chunks=(1, 2, 512, D))
    v = da.random.default_rng(2).standard_normal((1, 2, Lk, D), chunks=(1, 2, 512, D))
    out, lse = cusoft.attention(q, k, v, return_lse=True)
    dsk = dict(out.__dask_graph__())
    kv_keys = set(flatten(k.__dask_keys__())) | set(flatten(v.__dask_keys__()))
    names = " ".join(str(key) for key in dsk)
    assert "rechunk" not in names and "concatenate" not in names
    for key in dsk:
        kv = get_dependencies(dsk, key) & kv_keys
        assert len(kv) <= 2, f"{key} reads {len(kv)} key/value chunks"
    kv_bytes = 2 * Lk * D * 8                       # the whole K (or V) sequence of the heads
    with _Sizes() as sizes:
        dask.persist(out, lse, optimize_graph=False)
    worst = max(sizes.nbytes.values())
    assert worst <= 512 * 2 * D * 8, f"a task returned {worst} B"
    assert worst < kv_bytes // 4
    parts = [key for key in dsk if "cusoft-attention-part" in key[0] and key[1] == 0]
    assert len(parts) == 2 * 8                       # q blocks x kv chunks
    ref = eager(*dask.compute(q, k, v), return_lse=True)
    compare(*dask.compute(out, lse), *dask.compute(q, k, v))
    np.testing.assert_allclose(out.compute(), ref[0], rtol=1e-12, atol=1e-13)


def test_causal_skips_chunks_above_the_diagonal():
    # Lq = Lk = 64 in 4 blocks of 16 each: query block r needs key chunks 0..r only
    rng = np.random.default_rng(10)
    q, k, v = make((1, 1, 64, 8), (1, 1, 64, 8), (1, 1, 64, 8), np.float64, rng)
    out = cusoft.attention(da.from_array(q, chunks=(1, 1, 16, 8)),
                           da.from_array(k, chunks=(1, 1, 16, 8)), v, causal=True)
    dsk = dict(out.__dask_graph__())
    parts = [key for key in dsk if "cusoft-attention-part" in key[0] and key[1] == 0]
    assert len(parts) == 1 + 2 + 3 + 4
    compare(out.compute(), eager(q, k, v, causal=True, return_lse=True)[1], q, k, v,
            causal=True)


# -- a real cluster and a GPU -----------------------------------------------------------------

def test_cluster(cluster):
    _, client = cluster
    rng = np.random.default_rng(11)
    q, k, v = make((2, 4, 24, 16), (2, 2, 300, 16), (2, 2, 300, 16), np.float64, rng)
    mask = rng.random((24, 300)) > 0.1
    res = cusoft.attention(da.from_array(q, chunks=(1, 4, 12, 16)),
                           da.from_array(k, chunks=(2, 2, 64, 16)),
                           da.from_array(v, chunks=(2, 2, 64, 16)), causal=True,
                           mask=da.from_array(mask, chunks=(24, 100)), return_lse=True)
    out, lse = client.compute(list(res), sync=True)
    compare(out, lse, q, k, v, causal=True, mask=mask)


@pytest.mark.gpu
def test_cupy_chunks():
    cupy = pytest.importorskip("cupy")
    assert gpu_reason() is None
    rng = np.random.default_rng(12)
    q, k, v = make((2, 4, 33, 64), (2, 2, 257, 64), (2, 2, 257, 64), np.float32, rng)
    to_gpu = lambda a, c: da.from_array(a, chunks=c).map_blocks(cupy.asarray)  # noqa: E731
    out, lse = cusoft.attention(to_gpu(q, (1, 4, 16, 64)), to_gpu(k, (2, 2, 64, 64)),
                                to_gpu(v, (2, 2, 64, 64)), causal=True, return_lse=True)
    out, lse = dask.compute(out, lse)
    assert isinstance(out, cupy.ndarray)            # the chunks never left the GPU
    compare(cupy.asnumpy(out), cupy.asnumpy(lse), q, k, v, causal=True)
