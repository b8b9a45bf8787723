"""What the GPU would see, checked without one.

The simt emulator checks the byte size of each scalar argument, but not the element type
behind a pointer, not CUDA's grid and block limits, and not the 48 KiB default limit of
dynamic shared memory.  These tests run the launch code the CuPy backend runs
(``KernelBackend`` and ``launch_attention``) with a recorder in place of the RawModule, and
check every recorded launch against the kernel's C parameter list parsed from
``kernels_cu``: a pointer gets an array whose dtype is the pointee type, a scalar gets a NumPy
scalar of exactly the C type (CuPy passes a NumPy scalar by its own width, so a mismatch is
a silently wrong value, not an error).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from cusoft import _attention_launch as AL
from cusoft import _launch
from cusoft._cupy import _module
from cusoft._cupy.backend import KernelBackend

GRID_X_MAX = 2 ** 31 - 1
GRID_YZ_MAX = 65535
DEFAULT_SMEM = 48 * 1024

_KERNEL = re.compile(r"__global__\s+void\s+(?:(?:CUSOFT_BOUNDS|__launch_bounds__)\s*\(([^()]*)\)\s*)?"
                     r"(\w+)\s*\(([^()]*)\)")
_DEFINE = re.compile(r"^#define[ \t]+(\w+)[ \t]*((?:[^\n]*\\\n)*[^\n]*)$", re.M)


def _expand(text):
    macros = {m.group(1): m.group(2).replace("\\\n", " ") for m in _DEFINE.finditer(text)
              if m.group(1).endswith("_PARAMS")}
    for name, body in macros.items():
        text = re.sub(rf"\b{name}\b(?!\s*\\)", body, text)
    return text


def _signatures(text):
    """{kernel: (launch bound or None, [C parameter declarations])}"""
    out = {}
    for m in _KERNEL.finditer(_expand(text)):
        bound = int(m.group(1).split(",")[0]) if m.group(1) else None
        params = [" ".join(p.split()) for p in m.group(3).split(",") if p.strip()]
        out[m.group(2)] = (bound, params)
    return out


@pytest.fixture(scope="module")
def sigs():
    s = {}
    for f in _module.SOURCES:
        s.update(_signatures(_module.source(f)))
    s.update(_signatures(AL.kernel_source()))
    return s


def _ctype_dtype(decl, T):
    """(is_pointer, numpy dtype) of one C parameter declaration for storage dtype T."""
    acc = np.dtype(np.float64 if T == np.float64 else np.float32)
    d = decl.replace("__restrict__", " ").replace("const", " ")
    ptr = "*" in d
    base = " ".join(d.replace("*", " ").split()[:-1])   # drop the parameter name
    table = {"T": T, "acc_t<T>": acc, "typename attn::AccOf<T>::type": acc,
             "typename Ops::T": T, "typename Ops::Acc": acc,
             "int": np.dtype(np.int32), "i64": np.dtype(np.int64),
             "long long": np.dtype(np.int64), "unsigned char": np.dtype(np.uint8)}
    assert base in table, f"unknown C type {base!r} in {decl!r}"
    return ptr, np.dtype(table[base])


def _template_dtype(name_expression):
    """The storage type T of a kernel templated on it (the tensor-core attention is templated
    on its operand ops, whose T is the storage type)."""
    first = name_expression.split("<", 1)[1].split(",")[0].split(">")[0].strip()
    by_name = {v: k for k, v in _module.CTYPE.items()}
    by_ops = {v: np.dtype(f"f{k}") for k, v in AL.MMA_OPS.items()}
    return by_ops[first] if first in by_ops else np.dtype(by_name[first])


def _check_launch(sigs, kernel, grid, block, args, shared, smem_limit=DEFAULT_SMEM):
    base = kernel.split("<", 1)[0]
    bound, params = sigs[base]
    T = _template_dtype(kernel)
    assert len(args) == len(params), f"{kernel}: {len(args)} args for {len(params)} params"
    for i, (a, decl) in enumerate(zip(args, params)):
        ptr, want = _ctype_dtype(decl, T)
        if ptr:
            assert isinstance(a, np.ndarray), f"{kernel} arg {i} ({decl}): got {type(a)}"
            assert a.dtype == want, f"{kernel} arg {i} ({decl}): array of {a.dtype}, want {want}"
            assert a.flags.c_contiguous, f"{kernel} arg {i}: not C-contiguous"
        else:
            assert isinstance(a, np.generic), \
                f"{kernel} arg {i} ({decl}): {type(a).__name__}, want a NumPy {want} scalar"
            assert a.dtype == want, f"{kernel} arg {i} ({decl}): {a.dtype}, want {want}"
    _check_dims(kernel, grid, block, bound)
    assert 0 <= shared <= smem_limit, f"{kernel}: {shared} bytes of dynamic shared memory"


def _check_dims(kernel, grid, block, bound=None):
    assert len(grid) == 3 and len(block) == 3, (kernel, grid, block)
    assert all(isinstance(g, (int, np.integer)) and g >= 1 for g in grid + block), (grid, block)
    assert grid[0] <= GRID_X_MAX and grid[1] <= GRID_YZ_MAX and grid[2] <= GRID_YZ_MAX, \
        f"{kernel}: grid {grid} beyond CUDA's limits"
    assert block[0] <= 1024 and block[1] <= 1024 and block[2] <= 64, (kernel, block)
    threads = block[0] * block[1] * block[2]
    assert threads <= (bound or 1024), f"{kernel}: {threads} threads, launch bound {bound}"


class _Recorder(KernelBackend):
    """KernelBackend (the launch code of CupyBackend) that records instead of launching."""

    name = "recorder"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def _function_in(self, file, name_expression):
        assert _module.file_of(name_expression) == file

        def launch(grid, block, args, shared_mem=0):
            self.calls.append((name_expression, grid, block, args, shared_mem))
        return launch

    def _empty(self, like, count, dtype):
        return np.empty(count, dtype=dtype)


DTYPES = [np.float16, np.float32, np.float64]


def _shape(variant):
    if variant == "col":
        return (2, 50, 3)
    if variant == "warp":
        return (3, 100, 1)
    return (2, 5000, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", _launch.SOFTMAX_VARIANTS)
@pytest.mark.parametrize("log", [False, True])
def test_softmax_launch_args_match_c(sigs, dtype, variant, log):
    be = _Recorder(variant=variant, chunk_len=1024)
    x = np.zeros(_shape(variant), dtype)
    be.softmax(x, np.empty_like(x), log)
    assert be.calls
    for call in be.calls:
        _check_launch(sigs, *call)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", _launch.REDUCE_VARIANTS)
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("sign", [False, True])
def test_logsumexp_and_partial_launch_args_match_c(sigs, dtype, variant, weights, sign):
    be = _Recorder(variant=variant, chunk_len=1024)
    x = np.zeros(_shape(variant), dtype)
    b = np.ones_like(x) if weights else None
    outer, _, inner = x.shape
    be.logsumexp(x, b, np.empty((outer, inner), dtype),
                 np.empty((outer, inner), dtype) if sign else None)
    sdt = _launch.acc_dtype(dtype)
    be.partial(x, b, *(np.empty((outer, inner), sdt) for _ in range(3)))
    assert len(be.calls) >= 2
    for call in be.calls:
        _check_launch(sigs, *call)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", _launch.BACKWARD_VARIANTS)
@pytest.mark.parametrize("log", [False, True])
def test_backward_launch_args_match_c(sigs, dtype, variant, log):
    be = _Recorder(variant=variant, chunk_len=1024)
    y = np.zeros(_shape(variant), dtype)
    be.softmax_backward(y, np.zeros_like(y), np.empty_like(y), log)
    for call in be.calls:
        _check_launch(sigs, *call)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", _launch.XENT_VARIANTS)
@pytest.mark.parametrize("target", ["labels", "probs"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("grad_scale", [None, 0.25, "rows"])
def test_xent_launch_args_match_c(sigs, dtype, variant, target, weighted, grad_scale):
    be = _Recorder(variant=variant, chunk_len=256)   # split: 3 chunks per row
    shape = (2, 50, 3) if variant == "col" else (3, 100, 1) if variant == "warp" else (2, 700, 1)
    x = np.zeros(shape, dtype)
    outer, n, inner = shape
    labels = np.zeros((outer, inner), np.int64) if target == "labels" else None
    probs = np.zeros_like(x) if target == "probs" else None
    weight = np.ones(n, dtype) if weighted else None
    grad = None if grad_scale is None else np.zeros_like(x)  # the recorder launches nothing: keep it finite
    gs = np.full((outer, inner), 0.5) if grad_scale == "rows" else (grad_scale or 1.0)
    be.cross_entropy(x, labels, probs, weight, -100, 0.1, np.empty((outer, inner), dtype),
                     grad, gs)
    assert be.calls
    assert len(be.calls) == (2 if variant == "split" else 1)
    for call in be.calls:
        _check_launch(sigs, *call)


# -- grid limits at sizes the emulator never runs ------------------------------------------------

_BIG = [(1, 2 ** 31 + 7, 1), (2 ** 31 + 3, 5, 1), (3, 5, 2 ** 31 + 1), (70000, 70000, 1),
        (1, 3, 70000), (65537, 100000, 1), (8, 2 ** 28, 1)]


@pytest.mark.parametrize("outer, n, inner", _BIG)
@pytest.mark.parametrize("dtype", DTYPES)
def test_default_plans_stay_in_cuda_limits(outer, n, inner, dtype):
    lim = _launch.DeviceLimits()
    plans = [_launch.launch_softmax(outer, n, inner, dtype, log, lim) for log in (False, True)]
    plans += [_launch.launch_logsumexp(outer, n, inner, dtype, lim),
              _launch.launch_partial(outer, n, inner, dtype, lim),
              _launch.launch_backward(outer, n, inner, dtype, False, lim),
              _launch.launch_xent(outer, n, inner, dtype, lim)]
    if inner == 1:
        plans.append(_launch.launch_softmax(outer, n, inner, dtype, False, lim, variant="3pass"))
    for p in plans:
        for la in p.launches:
            _check_dims(la.kernel, la.grid, la.block)
            assert la.shared <= lim.smem_per_block, (la.kernel, la.shared)


# -- attention -------------------------------------------------------------------------------

class _AttnFn:
    def __init__(self, calls):
        self.calls = calls
        self.max_dynamic_shared_size_bytes = DEFAULT_SMEM

    def __call__(self, grid, block, args, shared_mem=0):
        self.calls.append((grid, block, args, shared_mem, self.max_dynamic_shared_size_bytes))


class _AttnModule:
    def __init__(self):
        self.calls = []
        self.names = []

    def get_function(self, name):
        self.names.append(name)
        return _AttnFn(self.calls)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [16, 64, 100, 128, 256])
@pytest.mark.parametrize("operands", [False, True])
@pytest.mark.parametrize("lse", [False, True])
@pytest.mark.parametrize("method", [None, "fma", "mma"])
def test_attention_launch_args_match_c(sigs, dtype, D, operands, lse, method):
    """Every kernel flavour's launch (the default, CUDA cores, tensor cores) against its C
    signature; float64 has no tensor-core kernel above D = 128."""
    if method == "mma" and np.dtype(dtype) == np.float64 and D > 128:
        with pytest.raises(ValueError, match="above 128"):
            AL.launch_config(dtype, 1, 1, 8, D, D, method)
        return
    B, Hq, Hkv, Lq, Lk = 2, 4, 2, 70, 33
    q = np.zeros((B, Hq, Lq, D), dtype)
    k = np.zeros((B, Hkv, Lk, D), dtype)
    v = np.zeros((B, Hkv, Lk, D), dtype)
    out = np.empty_like(q)
    adt = np.float64 if dtype == np.float64 else np.float32
    ls = np.empty((B, Hq, Lq), adt) if lse else None
    mask = bias = None
    if operands:
        mask = AL.Operand(np.ones((Lq, Lk), np.uint8), (0, 0, Lk, 1))
        bias = AL.Operand(np.zeros((B, 1, Lq, Lk), dtype), (Lq * Lk, 0, Lk, 1))
    mod = _AttnModule()
    AL.launch_attention(lambda: mod, np, q, k, v, mask, bias, out, ls, 0.125, True, method)
    (grid, block, args, shared, opted), = mod.calls
    _check_launch(sigs, mod.names[0], grid, block, args, shared, smem_limit=max(opted, DEFAULT_SMEM))
    # every instantiation's shared bytes fit an sm_80 block after the opt-in (163 KiB)
    assert shared <= 163 * 1024
    assert block == (AL.THREADS, 1, 1)


def test_info_reports_every_kernel_as_loaded_on_a_gpu(monkeypatch, capsys):
    """``python -m cusoft info --kernels`` on a GPU machine lists registers and local memory
    of every kernel of every module as the driver loaded it; here CuPy's device queries and
    the module loaders are stand-ins."""
    cupy = pytest.importorskip("cupy")
    from cusoft import __main__ as main

    class _Fn:
        attributes = {"num_regs": 40, "local_size_bytes": 0, "max_threads_per_block": 1024}

    class _Mod:
        def __init__(self):
            self.asked = []

        def get_function(self, name):
            self.asked.append(name)
            return _Fn()

    mods = {}

    def get_module(src):
        return mods.setdefault(src, _Mod())

    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceCount", lambda: 1)
    monkeypatch.setattr(cupy.cuda.runtime, "getDeviceProperties",
                        lambda i: {"name": b"Stand-in GPU"})
    monkeypatch.setattr(_module, "get_module", get_module)
    monkeypatch.setattr(AL, "cupy_module", lambda: get_module("attention.cu"))
    main._print_device_kernels()
    out = capsys.readouterr().out
    assert "on this GPU (Stand-in GPU)" in out
    for src in _module.SOURCES:
        assert mods[src].asked == list(_module.name_expressions(src))
    assert mods["attention.cu"].asked == AL.all_kernel_names()
    assert out.count("   40      0     1024") == sum(len(m.asked) for m in mods.values())
