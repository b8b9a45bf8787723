"""The tensor-core primitives of kernels_cu/attention.cu (PTX mma.sync m16n8k16 and ldmatrix
x4 / x4.trans) against the fragment layouts of the PTX ISA, written here once in NumPy.

On the CPU the kernels below run on the SIMT harness, whose warp-shuffle emulation stands in
for the two PTX instructions; on a GPU (marked ``gpu``) the very same source runs on the
hardware through CuPy.  Both must match the NumPy statement of the layouts, so a GPU session
also proves that the emulator's layouts are the silicon's.  A planted layout mistake (two A
registers swapped) must give a wrong product, and a misaligned ldmatrix row must be refused.
"""

from __future__ import annotations

import numpy as np
import pytest

from cusoft import _attention_launch as AL

# Test kernels appended to attention.cu, so they call its own wrappers (attn::mma16816,
# attn::ldsm_x4, attn::ldsm_x4_trans).  One warp each.
TEST_KERNELS = r"""
// d = a b + c for one m16n8k16 tile; a (16x16) and b (16x8, k-major) row-major halves in
// global memory, gathered into fragments by the PTX layout; SWAP plants a layout mistake.
template <bool SWAP>
__global__ void mma_tile(const __half* a, const __half* b, const float* c, float* d)
{
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    unsigned ra[4];
    for (int r = 0; r < 4; ++r) {
        const int row = g + 8 * (r & 1), col = 2 * t + 8 * (r >> 1);
        ra[r] = static_cast<unsigned>(__half_as_ushort(a[row * 16 + col]))
              | (static_cast<unsigned>(__half_as_ushort(a[row * 16 + col + 1])) << 16);
    }
    if (SWAP) { const unsigned x = ra[1]; ra[1] = ra[2]; ra[2] = x; }
    unsigned rb[2];
    for (int r = 0; r < 2; ++r) {
        const int k = 2 * t + 8 * r;
        rb[r] = static_cast<unsigned>(__half_as_ushort(b[k * 8 + g]))
              | (static_cast<unsigned>(__half_as_ushort(b[(k + 1) * 8 + g])) << 16);
    }
    float acc[4];
    for (int e = 0; e < 4; ++e) acc[e] = c[(g + 8 * (e >> 1)) * 8 + 2 * t + (e & 1)];
    attn::mma16816(acc, ra, rb[0], rb[1]);
    for (int e = 0; e < 4; ++e) d[(g + 8 * (e >> 1)) * 8 + 2 * t + (e & 1)] = acc[e];
}

// Copies a rows x cols half matrix into shared memory (row stride ld elements), then every lane
// supplies the row address of the attention kernel's pattern: lane 8j + r gives row
// r0[j] + r, column c0[j]; out[lane][j] and out_t[lane][j] get the x4 and x4.trans words.
__global__ void ldsm(const __half* m, int rows, int cols, int ld, const int* r0, const int* c0,
                     int misalign, unsigned* out, unsigned* out_t)
{
    CUSOFT_DYN_SMEM(__half, s);
    const int lane = threadIdx.x;
    for (int i = lane; i < rows * cols; i += 32) s[(i / cols) * ld + i % cols] = m[i];
    __syncthreads();
    const int j = lane >> 3;
    const __half* row = s + (r0[j] + (lane & 7)) * ld + c0[j] + misalign;
    unsigned r[4], rt[4];
    attn::ldsm_x4(r, row);
    attn::ldsm_x4_trans(rt, row);
    for (int i = 0; i < 4; ++i) {
        out[lane * 4 + i] = r[i];
        out_t[lane * 4 + i] = rt[i];
    }
}

// Two cp.async groups of 16 bytes per thread (the second zero-filled where !valid[tid]),
// then cp.async.wait_group WAIT_N, a barrier, and every thread copies shared memory out.
template <int WAIT_N>
__global__ void async_groups(const __half* a, const __half* b, const int* valid, __half* out)
{
    CUSOFT_DYN_SMEM(__half, s);
    const int tid = threadIdx.x, n = blockDim.x * 8;
    attn::cp_async16(s + tid * 8, a + tid * 8, true);
    attn::cp_async_commit();
    attn::cp_async16(s + n + tid * 8, b + tid * 8, valid[tid] != 0);
    attn::cp_async_commit();
    attn::cp_async_wait<WAIT_N>();
    __syncthreads();
    for (int i = 0; i < 16; ++i) out[tid * 16 + i] = s[(i < 8 ? 0 : n - 8) + tid * 8 + i];
    attn::cp_async_wait<0>();
}

// d = a b + c for one m16n8k8 tf32 tile (a 16x8, b 8x8 row-major floats), operands rounded by
// cvt.rna.tf32 (ROUND) or passed as raw float bits (the tensor core then ignores the low bits)
template <bool ROUND>
__global__ void mma_tile_tf32(const float* a, const float* b, const float* c, float* d,
                              unsigned* rounded)
{
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    unsigned ra[4], rb[2];
    for (int r = 0; r < 4; ++r) {
        const float x = a[(g + 8 * (r & 1)) * 8 + t + 4 * (r >> 1)];
        ra[r] = ROUND ? attn::to_tf32(x) : __float_as_uint(x);
    }
    for (int r = 0; r < 2; ++r) {
        const float x = b[(t + 4 * r) * 8 + g];
        rb[r] = ROUND ? attn::to_tf32(x) : __float_as_uint(x);
    }
    float acc[4];
    for (int e = 0; e < 4; ++e) acc[e] = c[(g + 8 * (e >> 1)) * 8 + 2 * t + (e & 1)];
    attn::mma1688(acc, ra, rb[0], rb[1]);
    for (int e = 0; e < 4; ++e) d[(g + 8 * (e >> 1)) * 8 + 2 * t + (e & 1)] = acc[e];
    rounded[lane] = attn::to_tf32(a[lane]);
}

// d = a b + c for one m8n8k4 double tile (a 8x4, b 4x8, c and d 8x8 row-major)
__global__ void mma_tile_f64(const double* a, const double* b, const double* c, double* d)
{
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    double d0 = c[g * 8 + 2 * t], d1 = c[g * 8 + 2 * t + 1];
    attn::mma884(d0, d1, a[g * 4 + t], b[t * 8 + g]);
    d[g * 8 + 2 * t] = d0;
    d[g * 8 + 2 * t + 1] = d1;
}
"""
NAMES = ["mma_tile_f64", "mma_tile_tf32<true>", "mma_tile_tf32<false>", "mma_tile<false>", "mma_tile<true>", "ldsm", "async_groups<0>", "async_groups<1>",
         "async_groups<2>"]


def _halves(words):
    """(low, high) float16 pair of each uint32."""
    w = np.asarray(words, np.uint32)
    return ((w & 0xFFFF).astype(np.uint16).view(np.float16),
            (w >> 16).astype(np.uint16).view(np.float16))


def _ldsm_expected(m, r0, c0):
    """The PTX layout: lane (g, t) gets M_j[g][2t..2t+1] (x4) and M_j[2t..2t+1][g] (.trans),
    M_j the 8x8 block at (r0[j], c0[j])."""
    lane = np.arange(32)
    g, t = lane // 4, lane % 4
    want = np.empty((32, 4, 2), np.float16)
    want_t = np.empty((32, 4, 2), np.float16)
    for j in range(4):
        blk = m[r0[j]:r0[j] + 8, c0[j]:c0[j] + 8]
        want[:, j, 0], want[:, j, 1] = blk[g, 2 * t], blk[g, 2 * t + 1]
        want_t[:, j, 0], want_t[:, j, 1] = blk[2 * t, g], blk[2 * t + 1, g]
    return want, want_t


class _Simt:
    """The simt module, launched like a CuPy RawModule on NumPy arrays."""

    xp = np

    def __init__(self):
        from cusoft import simt

        ok, why = simt.available()
        if not ok:
            pytest.skip(f"simt harness unavailable: {why}")
        self.mod = simt.SimtModule(code=AL.kernel_source() + TEST_KERNELS,
                                   options=AL.NVRTC_OPTIONS, name_expressions=NAMES)

    def run(self, name, grid, block, args, shared_mem=0, seed=0):
        self.mod.get_function(name)(grid, block, args, shared_mem=shared_mem, seed=seed)

    @staticmethod
    def get(a):
        return a


class _Cupy:
    def __init__(self):
        cp = pytest.importorskip("cupy", reason="CuPy is not installed")
        try:
            n = cp.cuda.runtime.getDeviceCount()
        except Exception as exc:  # no driver
            pytest.skip(f"no CUDA device: {exc}")
        if n == 0:
            pytest.skip("no CUDA device visible")
        self.xp = cp
        self.mod = cp.RawModule(code=AL.kernel_source() + TEST_KERNELS,
                                options=AL.NVRTC_OPTIONS + AL.fp16_include_options(),
                                name_expressions=NAMES)

    def run(self, name, grid, block, args, shared_mem=0, seed=0):
        self.mod.get_function(name)(grid, block, args, shared_mem=shared_mem)
        self.xp.cuda.runtime.deviceSynchronize()

    def get(self, a):
        return self.xp.asnumpy(a)


@pytest.fixture(scope="module", params=["simt", pytest.param("cupy", marks=pytest.mark.gpu)])
def dev(request):
    return _Simt() if request.param == "simt" else _Cupy()


def _mma(dev, swap, seed):
    rng = np.random.default_rng(seed)
    # small integers: every product and sum is exact in float, so the check can be exact
    a = rng.integers(-8, 9, (16, 16)).astype(np.float16)
    b = rng.integers(-8, 9, (16, 8)).astype(np.float16)
    c = rng.integers(-64, 65, (16, 8)).astype(np.float32)
    d = dev.xp.zeros((16, 8), np.float32)
    dev.run(f"mma_tile<{'true' if swap else 'false'}>", (1, 1, 1), (32, 1, 1),
            tuple(dev.xp.asarray(x) for x in (a, b, c)) + (d,), seed=seed)
    want = a.astype(np.float64) @ b.astype(np.float64) + c
    return dev.get(d), want


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mma_m16n8k16_matches_the_ptx_layout(dev, seed):
    got, want = _mma(dev, False, seed)
    np.testing.assert_array_equal(got, want)


def test_mma_non_integer_values(dev):
    rng = np.random.default_rng(5)
    a = rng.standard_normal((16, 16)).astype(np.float16)
    b = rng.standard_normal((16, 8)).astype(np.float16)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    d = dev.xp.zeros((16, 8), np.float32)
    dev.run("mma_tile<false>", (1, 1, 1), (32, 1, 1),
            tuple(dev.xp.asarray(x) for x in (a, b, c)) + (d,))
    want = a.astype(np.float64) @ b.astype(np.float64) + c
    np.testing.assert_allclose(dev.get(d), want, rtol=0, atol=1e-5 * np.abs(want).max())


def _tf32_rna(x):
    """cvt.rna.tf32.f32 in NumPy: 10 mantissa bits, to nearest, ties away from zero."""
    u = np.asarray(x, np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_mma_m16n8k8_tf32_matches_the_ptx_layout(dev, seed):
    rng = np.random.default_rng(seed)
    # small integers: exact in tf32, every product and sum exact in float
    a = rng.integers(-64, 65, (16, 8)).astype(np.float32)
    b = rng.integers(-64, 65, (8, 8)).astype(np.float32)
    c = rng.integers(-512, 513, (16, 8)).astype(np.float32)
    for name in ("mma_tile_tf32<true>", "mma_tile_tf32<false>"):
        d = dev.xp.zeros((16, 8), np.float32)
        rounded = dev.xp.zeros(32, np.uint32)
        dev.run(name, (1, 1, 1), (32, 1, 1),
                tuple(dev.xp.asarray(x) for x in (a, b, c)) + (d, rounded))
        np.testing.assert_array_equal(dev.get(d), a.astype(np.float64) @ b + c)


def test_mma_m8n8k4_f64_matches_the_ptx_layout(dev):
    rng = np.random.default_rng(4)
    a, b, c = rng.standard_normal((8, 4)), rng.standard_normal((4, 8)), rng.standard_normal((8, 8))
    d = dev.xp.zeros((8, 8), np.float64)
    dev.run("mma_tile_f64", (1, 1, 1), (32, 1, 1), tuple(dev.xp.asarray(x) for x in (a, b, c)) + (d,))
    np.testing.assert_allclose(dev.get(d), a @ b + c, rtol=0, atol=1e-14)


def test_tf32_rounding_and_products(dev):
    """cvt.rna.tf32 rounds as stated; products of the rounded operands are exact."""
    rng = np.random.default_rng(3)
    a = (rng.standard_normal((16, 8)) * 3).astype(np.float32)
    b = rng.standard_normal((8, 8)).astype(np.float32)
    c = np.zeros((16, 8), np.float32)
    d = dev.xp.zeros((16, 8), np.float32)
    rounded = dev.xp.zeros(32, np.uint32)
    dev.run("mma_tile_tf32<true>", (1, 1, 1), (32, 1, 1),
            tuple(dev.xp.asarray(x) for x in (a, b, c)) + (d, rounded))
    np.testing.assert_array_equal(dev.get(rounded).view(np.float32), _tf32_rna(a.ravel()[:32]))
    want = _tf32_rna(a).astype(np.float64) @ _tf32_rna(b).astype(np.float64)
    np.testing.assert_allclose(dev.get(d), want, rtol=0, atol=1e-6 * np.abs(want).max())
    # the raw floats differ from their tf32 roundings: the product is not a's and b's
    assert np.abs(_tf32_rna(a) - a).max() > 0


def test_planted_fragment_mistake_gives_a_wrong_product(dev):
    got, want = _mma(dev, True, 0)
    assert not np.array_equal(got, want)


@pytest.mark.parametrize("pattern", ["attention-q", "attention-k", "attention-v"])
def test_ldmatrix_x4_and_trans_match_the_ptx_layout(dev, pattern):
    # the three address patterns the float16 tensor-core attention uses, on a padded 32 x 40 tile (ld 48)
    r0, c0 = {"attention-q": ([0, 8, 0, 8], [16, 16, 24, 24]),
              "attention-k": ([16, 16, 24, 24], [0, 8, 0, 8]),
              "attention-v": ([8, 16, 8, 16], [24, 24, 32, 32])}[pattern]
    rows, cols, ld = 32, 40, 48
    m = (np.arange(rows * cols) % 2039).astype(np.float16).reshape(rows, cols)
    out = dev.xp.zeros((32, 4), np.uint32)
    out_t = dev.xp.zeros((32, 4), np.uint32)
    dev.run("ldsm", (1, 1, 1), (32, 1, 1),
            (dev.xp.asarray(m), np.int32(rows), np.int32(cols), np.int32(ld),
             dev.xp.asarray(np.array(r0, np.int32)), dev.xp.asarray(np.array(c0, np.int32)),
             np.int32(0), out, out_t), shared_mem=rows * ld * 2)
    want, want_t = _ldsm_expected(m, r0, c0)
    lo, hi = _halves(dev.get(out))
    np.testing.assert_array_equal(np.stack([lo, hi], -1), want)
    lo, hi = _halves(dev.get(out_t))
    np.testing.assert_array_equal(np.stack([lo, hi], -1), want_t)


def test_misaligned_ldmatrix_row_is_refused():
    """A row address off its 16-byte boundary faults on a GPU; the harness says so."""
    from cusoft import simt

    h = _Simt()
    m = np.zeros((16, 16), np.float16)
    with pytest.raises(simt.SimtError, match="16-byte aligned"):
        h.run("ldsm", (1, 1, 1), (32, 1, 1),
              (m, np.int32(16), np.int32(16), np.int32(24), np.array([0, 8, 0, 8], np.int32),
               np.array([0, 0, 8, 8], np.int32), np.int32(1), np.zeros((32, 4), np.uint32),
               np.zeros((32, 4), np.uint32)), shared_mem=16 * 24 * 2)


def _async(dev, wait_n):
    rng = np.random.default_rng(9)
    a = rng.standard_normal((64, 8)).astype(np.float16)
    b = rng.standard_normal((64, 8)).astype(np.float16)
    valid = (rng.random(64) > 0.3).astype(np.int32)
    out = dev.xp.zeros((64, 16), np.float16)
    dev.run(f"async_groups<{wait_n}>", (1, 1, 1), (64, 1, 1),
            (dev.xp.asarray(a), dev.xp.asarray(b), dev.xp.asarray(valid), out),
            shared_mem=2 * 64 * 8 * 2)
    return dev.get(out), a, np.where(valid[:, None] != 0, b, 0)


def test_cp_async_wait_all_lands_every_group_and_zero_fills(dev):
    got, a, b = _async(dev, 0)
    np.testing.assert_array_equal(got[:, :8], a)
    np.testing.assert_array_equal(got[:, 8:], b)


def test_cp_async_wait_group_1_lands_only_the_older_group():
    """On the harness the newest group has not landed (the poisoned shared memory reads as
    NaN): a kernel that waits too little reads stale data here.  (A GPU may or may not have
    finished it, so this is a harness-only test.)"""
    got, a, _ = _async(_Simt(), 1)
    np.testing.assert_array_equal(got[:, :8], a)
    assert np.isnan(got[:, 8:].astype(np.float32)).all()


def test_cp_async_without_wait_reads_stale_shared_memory():
    """The planted bug: no wait before the barrier and the reads."""
    got, a, _ = _async(_Simt(), 2)
    assert np.isnan(got.astype(np.float32)).all()
