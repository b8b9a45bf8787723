"""Loading ``kernels_cu/*.cu``: the source text, the compile options and the name expressions.

This module is the single source of truth for *what* is compiled.  The CuPy runtime
(:func:`get_module`), the CPU emulator (``cusoft/simt/backend.py``) and the compile tests
(``tests/test_kernels_compile.py``) all take the text from :func:`source`, the options from
:data:`OPTIONS` and the template instantiations from :func:`name_expressions`.

Include method: ``#include "common.cuh"`` lines are *inlined* here (replaced by the header's
text), so NVRTC, nvcc and the emulator compile byte-identical text and need no ``-I`` for
our own headers.  (CuPy adds its own ``-I`` for the CUDA toolkit headers, which provide
``cuda_fp16.h``.)

Nothing here imports CuPy at import time.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil

#: Options passed to ``cupy.RawModule`` (CuPy appends its own -I, -arch, -ftz=true and
#: --device-as-default-execution-space; see :func:`nvrtc_options`).
OPTIONS = ("-std=c++17",)

#: C type of each compute dtype (numpy dtype name -> C++ type in kernels_cu).
CTYPE = {"float16": "__half", "float32": "float", "float64": "double"}

#: Register-cache widths of ``softmax_fwd_warp`` (elements per lane); n <= 32 * max.
WARP_K = (1, 2, 4, 8, 16, 32)

#: Register-cache widths of ``softmax_bwd_warp`` and ``xent_warp`` (elements per lane).
BWD_WARP_K = (1, 2, 4, 8, 16, 32)
XENT_WARP_K = (1, 2, 4, 8, 16)  # 32 doubles per lane spilled

#: The op files of this module.
SOURCES = ("softmax.cu", "backward.cu", "xent.cu")

_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)


def kernels_dir():
    """Directory holding the .cu/.cuh files: the installed ``cusoft.kernels_cu`` package
    (``package_dir`` maps the repository's ``kernels_cu/`` there) or, in a source tree,
    ``<repo>/kernels_cu``."""
    try:
        from importlib import resources

        d = resources.files("cusoft.kernels_cu")
        if d.joinpath("common.cuh").is_file():
            return os.fspath(d)
    except (ImportError, ModuleNotFoundError, TypeError, FileNotFoundError):
        pass
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    repo = os.path.join(os.path.dirname(here), "kernels_cu")
    if os.path.isfile(os.path.join(repo, "common.cuh")):
        return repo
    raise FileNotFoundError(
        "cusoft: cannot find the CUDA sources (kernels_cu/common.cuh); reinstall cusoft or "
        "run from a source checkout")


def _read(name, seen):
    path = os.path.join(kernels_dir(), name)
    with open(path, encoding="utf-8") as f:
        text = f.read()

    def repl(mo):
        inc = mo.group(1)
        if inc in seen:
            return f"// (already inlined: {inc})"
        seen.add(inc)
        return f"// ---- begin {inc} ----\n{_read(inc, seen)}\n// ---- end {inc} ----"

    return _INCLUDE.sub(repl, text)


@functools.lru_cache(maxsize=None)
def source(name="softmax.cu"):
    """The full text of one op file with its local includes inlined."""
    return _read(name, {name})


@functools.lru_cache(maxsize=None)
def source_hash(name="softmax.cu"):
    return hashlib.sha256(source(name).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# Name expressions.  The helpers below are the only place a kernel name is spelled; the
# launcher (cusoft/_launch.py) uses them too, and a test checks every launch name is listed.
# ------------------------------------------------------------------------------------------
def ctype(dtype):
    import numpy

    return CTYPE[numpy.dtype(dtype).name]


def kname(base, dtype, *params):
    """``kname("softmax_fwd_warp", float32, True, 4) -> "softmax_fwd_warp<float, true, 4>"``."""
    args = [ctype(dtype)]
    for p in params:
        args.append(("true" if p else "false") if isinstance(p, bool) else str(int(p)))
    return f"{base}<{', '.join(args)}>"


_PER_DTYPE = ("softmax_rowmax", "softmax_expsum", "softmax_fwd_split_stats",
              "logsumexp_warp", "logsumexp_block", "logsumexp_col", "logsumexp_split_stats",
              "logsumexp_split_finish", "partial_warp", "partial_block", "partial_col",
              "partial_split_finish")
_PER_DTYPE_LOG = ("softmax_divide", "softmax_fwd_block", "softmax_fwd_online",
                  "softmax_fwd_split_apply", "softmax_fwd_col")


_BWD_PER_DTYPE_LOG = ("softmax_bwd_block", "softmax_bwd_split_stats", "softmax_bwd_split_apply",
                      "softmax_bwd_col")
_XENT_PER_DTYPE = ("xent_block", "xent_col", "xent_split_stats", "xent_split_apply")


@functools.lru_cache(maxsize=None)
def _name_expressions(name):
    out = []
    if name == "softmax.cu":
        for dt in CTYPE:
            out += [kname(b, dt) for b in _PER_DTYPE]
            for log in (False, True):
                out += [kname(b, dt, log) for b in _PER_DTYPE_LOG]
                out += [kname("softmax_fwd_warp", dt, log, k) for k in WARP_K]
    elif name == "backward.cu":
        for dt in CTYPE:
            for log in (False, True):
                out += [kname(b, dt, log) for b in _BWD_PER_DTYPE_LOG]
                out += [kname("softmax_bwd_warp", dt, log, k) for k in BWD_WARP_K]
    elif name == "xent.cu":
        for dt in CTYPE:
            out += [kname(b, dt) for b in _XENT_PER_DTYPE]
            out += [kname("xent_warp", dt, k) for k in XENT_WARP_K]
    else:
        raise KeyError(f"{name!r} is not one of the op files {SOURCES}")
    return tuple(out)


def name_expressions(name="softmax.cu"):
    """Every template instantiation of one op file, as a tuple of C++ name expressions."""
    return _name_expressions(name)


def all_name_expressions():
    """{name expression: op file} over every file of :data:`SOURCES`."""
    return dict(_file_map())


@functools.lru_cache(maxsize=None)
def _file_map():
    return {e: f for f in SOURCES for e in _name_expressions(f)}


def file_of(name_expression):
    """The op file that instantiates ``name_expression`` (KeyError if none does)."""
    try:
        return _file_map()[name_expression]
    except KeyError:
        raise KeyError(f"no op file of {SOURCES} instantiates {name_expression!r}") from None


# ------------------------------------------------------------------------------------------
# The CuPy module
# ------------------------------------------------------------------------------------------
def nvrtc_options(arch, include_dirs=()):
    """The options CuPy's RawModule hands NVRTC for :data:`OPTIONS` on ``sm_<arch>``
    (used by the compile tests to reproduce the runtime compile without a GPU)."""
    opts = list(OPTIONS) + [f"-I{d}" for d in include_dirs]
    opts += ["-ftz=true", f"--gpu-architecture=sm_{arch}", "--device-as-default-execution-space"]
    return opts


@functools.lru_cache(maxsize=None)
def cuda_include_dirs():
    """Directories holding ``cuda_fp16.h`` for NVRTC, which has no default search path:
    CuPy's CUDA root, then $CUDA_PATH / $CUDA_HOME, then nvcc's, then /usr/local/cuda.
    Every runtime compile (these op files and attention.cu) and the compile tests use it."""
    roots = []
    try:
        import cupy._environment as env

        roots.append(env.get_cuda_path())
    except Exception:  # CuPy absent or without a CUDA root
        pass
    roots += [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    roots.append("/usr/local/cuda")
    for root in roots:
        if root and os.path.exists(os.path.join(root, "include", "cuda_fp16.h")):
            return (os.path.join(root, "include"),)
    return ()


def runtime_options():
    """:data:`OPTIONS` plus the ``-I`` NVRTC needs for ``cuda_fp16.h`` (harmless where CuPy
    adds its own)."""
    return OPTIONS + tuple(f"-I{d}" for d in cuda_include_dirs())


_modules = {}


def get_module(name="softmax.cu"):
    """The compiled ``cupy.RawModule`` of one op file for the current device (memoised per
    (device, source hash); compiled on first use)."""
    import cupy

    dev = cupy.cuda.Device().id
    key = (dev, name, source_hash(name))
    mod = _modules.get(key)
    if mod is None:
        mod = cupy.RawModule(code=source(name), options=runtime_options(),
                             name_expressions=list(name_expressions(name)))
        _modules[key] = mod
    return mod


def get_function(name_expression, file=None):
    """A kernel of the op file that instantiates it (or of ``file`` when given)."""
    return get_module(file or file_of(name_expression)).get_function(name_expression)
