"""Build SIMT executables from CUDA C source and launch kernels in them like CuPy does."""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import functools
import hashlib
import json
import os
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

__all__ = ["SimtError", "SimtCompileError", "SimtLaunchError", "SimtModule", "SimtFunction",
           "SimtRawKernel", "available"]

_HERE = Path(__file__).resolve().parent
_HEADER = _HERE / "simt.h"
_RUNTIME_FILES = ("simt.h", "simt_driver.h", "simt_runtime.cpp",
                  "cuda_fp16.h", "cuda_runtime.h", "cuda.h")
_PROTOCOL_VERSION = 1

# CUDA limits (compute capability 8.x/9.0) the harness enforces at launch.
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
DEFAULT_DYNAMIC_SHARED = 48 * 1024     # without opting in through the function attribute
MAX_SHARED_PER_BLOCK = 227 * 1024      # opt-in maximum (sm_90)

_HEADER_SUFFIXES = (".h", ".hh", ".hpp", ".cuh", ".cu", ".inc", ".inl")


class SimtError(RuntimeError):
    """A kernel failed on the SIMT harness.

    ``report`` holds the full sanitizer or harness report (stderr of the kernel process),
    ``kernel`` the kernel's name expression.
    """

    def __init__(self, message, report="", kernel=None):
        super().__init__(message)
        self.report = report
        self.kernel = kernel


class SimtCompileError(SimtError):
    """The kernel source does not compile for the harness; ``report`` is the compiler output."""


class SimtLaunchError(SimtError):
    """The launch configuration is one a GPU would refuse (grid, block or shared memory)."""


# ---- toolchain -------------------------------------------------------------------------------

def _cxx():
    return shlex.split(os.environ.get("CXX") or "g++")


def _sanitize():
    return os.environ.get("CUSOFT_SIMT_SANITIZE", "1").strip().lower() not in ("0", "no", "off", "false")


def _base_flags():
    # stack-clash protection probes every page of a large frame, so a fiber stack overflow
    # always lands on the guard page instead of silently in a neighbouring stack.
    flags = ["-std=c++17", "-O1", "-g", "-fno-omit-frame-pointer", "-fno-strict-aliasing",
             "-fstack-clash-protection"]
    if _sanitize():
        flags += ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    return flags


@functools.lru_cache(maxsize=None)
def _compiler_id(cxx):
    try:
        out = subprocess.run([*cxx, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    if out.returncode != 0:
        return None, out.stderr.strip()
    return out.stdout.strip(), ""


@functools.lru_cache(maxsize=None)
def _probe(cxx, flags):
    if shutil.which(cxx[0]) is None:
        return False, f"C++ compiler {cxx[0]!r} not found on PATH (install g++ or set CXX)"
    ident, err = _compiler_id(cxx)
    if ident is None:
        return False, f"{' '.join(cxx)} --version failed: {err}"
    with tempfile.TemporaryDirectory(prefix="cusoft-simt-probe-") as tmp:
        src = Path(tmp, "probe.cpp")
        src.write_text("int main() { return 0; }\n")
        res = subprocess.run([*cxx, *flags, str(src), "-o", str(Path(tmp, "probe"))],
                             capture_output=True, text=True)
        if res.returncode != 0:
            return False, (f"{' '.join(cxx)} cannot build with {' '.join(flags)} (are the ASan/UBSan "
                           f"runtimes installed?): {res.stderr.strip()[-500:]}")
    return True, ident.splitlines()[0]


def available():
    """Return ``(ok, reason)``: whether kernels can be built and run here, and if not, why.

    Needs a C++17 compiler (``$CXX``, default ``g++``) with AddressSanitizer and UBSan runtimes.
    """
    return _probe(tuple(_cxx()), tuple(_base_flags()))


def _cache_dir():
    d = os.environ.get("CUSOFT_SIMT_CACHE")
    d = Path(d).expanduser().resolve() if d else Path.home() / ".cache" / "cusoft" / "simt"
    d.mkdir(parents=True, exist_ok=True)
    return d


class _FileLock:
    """An exclusive flock, so that concurrent processes build a given executable once."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _digest_runtime(h):
    for name in _RUNTIME_FILES:
        h.update(name.encode())
        h.update((_HERE / name).read_bytes())


def _digest_include_dirs(h, dirs):
    # Headers reached through -I decide the build as much as the code does.
    for d in dirs:
        h.update(b"\0dir\0" + str(d).encode())
        if not os.path.isdir(d):
            continue
        count = 0
        for root, subdirs, files in os.walk(d):
            subdirs[:] = sorted(s for s in subdirs if not s.startswith(".") and s != "__pycache__")
            for f in sorted(files):
                if f.endswith(_HEADER_SUFFIXES):
                    p = os.path.join(root, f)
                    h.update(os.path.relpath(p, d).encode() + b"\0")
                    try:
                        h.update(Path(p).read_bytes())
                    except OSError:
                        pass
                    count += 1
            if count > 5000:
                break


def _run_compiler(cmd, what):
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SimtCompileError(f"simt: compiling {what} failed:\n{res.stderr.strip()[-8000:]}",
                               report=res.stderr)
    return res


def _runtime_flags(flags):
    # The scheduler runs between every two fiber switches: it is built optimised and without
    # instrumentation (the kernels are what is under test), but still announces fiber stack
    # switches to ASan when the kernels are built with it.
    out = [f for f in flags if not f.startswith(("-fsanitize", "-fno-sanitize", "-O"))] + ["-O2"]
    if any(f.startswith("-fsanitize=") and "address" in f for f in flags):
        out.append("-DCUSOFT_SIMT_ASAN=1")
    return out


def _runtime_object(cxx, flags):
    h = hashlib.sha256()
    h.update(json.dumps([_PROTOCOL_VERSION, cxx, flags, _compiler_id(tuple(cxx))[0]]).encode())
    _digest_runtime(h)
    cache = _cache_dir()
    obj = cache / f"runtime-{h.hexdigest()[:20]}.o"
    if obj.exists():
        return obj
    with _FileLock(str(obj) + ".lock"):
        if not obj.exists():
            tmp = obj.with_name(f"{obj.name}.{os.getpid()}.tmp")
            _run_compiler([*cxx, *_runtime_flags(flags), "-I", str(_HERE), "-c",
                           str(_HERE / "simt_runtime.cpp"), "-o", str(tmp)], "the simt runtime")
            os.replace(tmp, obj)
    return obj


def _parse_options(options):
    """Split CuPy/NVRTC options into host compiler flags and include directories.

    -D/-U/-I (and their --define-macro/--include-path spellings) are kept; GPU code
    generation options (-arch, --use_fast_math, -lineinfo, ...) mean nothing on the CPU.
    """
    flags, incs = [], []
    it = iter(options)
    for opt in it:
        if not isinstance(opt, str):
            raise TypeError(f"options must be strings, got {opt!r}")
        if opt in ("-I", "--include-path"):
            incs.append(next(it, ""))
        elif opt.startswith("--include-path="):
            incs.append(opt.split("=", 1)[1])
        elif opt.startswith("-I"):
            incs.append(opt[2:])
        elif opt in ("-D", "--define-macro"):
            flags.append("-D" + next(it, ""))
        elif opt.startswith("--define-macro="):
            flags.append("-D" + opt.split("=", 1)[1])
        elif opt in ("-U", "--undefine-macro"):
            flags.append("-U" + next(it, ""))
        elif opt.startswith(("-D", "-U")):
            flags.append(opt)
        elif opt.startswith(("-std=", "--std=")):
            std = opt.split("=", 1)[1]
            if std not in ("c++03", "c++11", "c++14", "c++17"):
                flags.append("-std=" + std)
    return flags, [os.path.abspath(d) for d in incs if d]


# ---- the kernel process ----------------------------------------------------------------------

class _Param:
    __slots__ = ("kind", "size")

    def __init__(self, kind, size):
        self.kind, self.size = kind, size

    def describe(self):
        if self.kind == "p":
            return "a pointer"
        if self.kind == "f":
            return {2: "__half", 4: "float", 8: "double"}.get(self.size, f"a {self.size}-byte float")
        if self.kind == "i":
            return f"a {self.size}-byte integer"
        return f"a {self.size}-byte struct"


_ASAN_OPTIONS = ("detect_leaks=0:halt_on_error=1:abort_on_error=0:handle_abort=1:"
                 "allocator_may_return_null=1:print_legend=0:detect_stack_use_after_return=0")
_UBSAN_OPTIONS = "print_stacktrace=1:halt_on_error=1"


def _read_new(fd, offset):
    chunks = []
    while True:
        b = os.pread(fd, 1 << 20, offset)
        if not b:
            return b"".join(chunks), offset
        chunks.append(b)
        offset += len(b)


class _ServerDied(Exception):
    pass


class _Server:
    """One running kernel executable; serves launches over a pair of pipes."""

    def __init__(self, exe):
        self.exe = exe
        self.lock = threading.Lock()
        self.proc = None

    # -- process management --------------------------------------------------------------------
    def _start(self):
        self._out = tempfile.TemporaryFile(prefix="cusoft-simt-out-")
        self._err = tempfile.TemporaryFile(prefix="cusoft-simt-err-")
        self._out_pos = self._err_pos = 0
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        env = dict(os.environ)
        # ours first: a user's own options, appended, win
        for var, ours in (("ASAN_OPTIONS", _ASAN_OPTIONS), ("UBSAN_OPTIONS", _UBSAN_OPTIONS)):
            env[var] = ours + (":" + env[var] if env.get(var) else "")
        try:
            self.proc = subprocess.Popen(
                [str(self.exe), str(req_r), str(rep_w)], pass_fds=(req_r, rep_w),
                stdin=subprocess.DEVNULL, stdout=self._out, stderr=self._err, env=env,
                start_new_session=True)
        finally:
            os.close(req_r)
            os.close(rep_w)
        self.wfd, self.rfd = req_w, rep_r
        try:
            self._read_signatures(time.monotonic() + 60)
        except _ServerDied:
            raise self._failure("starting the kernel process", None) from None
        except TimeoutError:
            self._cleanup()
            raise SimtError(f"simt: {self.exe} did not start within 60 s") from None

    def _read_signatures(self, deadline):
        magic, version, count = struct.unpack("=4sII", self._read(12, deadline))
        if magic != b"SIMT" or version != _PROTOCOL_VERSION:
            raise SimtError(f"simt: {self.exe} speaks another protocol; clear the cache "
                            f"({_cache_dir()})")
        self.kernels = {}
        for index in range(count):
            (n,) = struct.unpack("=I", self._read(4, deadline))
            name = self._read(n, deadline).decode()
            (nparams,) = struct.unpack("=I", self._read(4, deadline))
            params = []
            for _ in range(nparams):
                kind, size = struct.unpack("=cI", self._read(5, deadline))
                params.append(_Param(kind.decode(), size))
            self.kernels[name] = (index, params)

    def ensure(self):
        if self.proc is None or self.proc.poll() is not None:
            self._cleanup()
            self._start()

    def _cleanup(self):
        for fd in ("wfd", "rfd"):
            if getattr(self, fd, None) is not None:
                try:
                    os.close(getattr(self, fd))
                except OSError:
                    pass
                setattr(self, fd, None)
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
        self.proc = None

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.write(self.wfd, b"QUIT")
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._cleanup()

    # -- io --------------------------------------------------------------------------------------
    def _read(self, n, deadline, into=None):
        buf = into if into is not None else bytearray(n)
        mv = memoryview(buf).cast("B")
        pos = 0
        while pos < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError
            got = os.readv(self.rfd, [mv[pos:]])
            if got == 0:
                raise _ServerDied
            pos += got
        return buf

    def _write(self, parts):
        try:
            for part in parts:
                mv = memoryview(part).cast("B")
                while len(mv):
                    n = os.write(self.wfd, mv)
                    mv = mv[n:]
        except (BrokenPipeError, ConnectionResetError):
            raise _ServerDied from None

    def _forward_stdout(self):
        data, self._out_pos = _read_new(self._out.fileno(), self._out_pos)
        if data:
            sys.stdout.write(data.decode(errors="replace"))
            sys.stdout.flush()

    def _failure(self, what, kernel):
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self._forward_stdout()
        report, self._err_pos = _read_new(self._err.fileno(), self._err_pos)
        report = report.decode(errors="replace")
        rc = self.proc.returncode
        self._cleanup()
        return _error_from_report(report, rc, what, kernel)

    # -- a launch --------------------------------------------------------------------------------
    def launch(self, name, header, buffers, arg_bytes, timeout, seed=0):
        """Send one launch; returns the buffers' new contents as uint8 arrays."""
        with self.lock:
            self.ensure()
            deadline = time.monotonic() + timeout
            try:
                parts = [header]
                for b in buffers:
                    parts.append(struct.pack("=Q", len(b)))
                    if len(b):
                        parts.append(b)
                parts.append(arg_bytes)
                self._write(parts)
                if bytes(self._read(4, deadline)) != b"DONE":
                    raise SimtError(f"simt: protocol error talking to {self.exe}")
                out = []
                for b in buffers:
                    dst = np.empty(len(b), np.uint8)
                    if len(b):
                        self._read(len(b), deadline, into=dst)
                    out.append(dst)
            except _ServerDied:
                raise self._failure(f"launching {name} (seed={seed})", name) from None
            except TimeoutError:
                self._cleanup()
                self._forward_stdout()
                raise SimtError(
                    f"simt: {name} (seed={seed}) did not finish within {timeout:g} s "
                    "(CUSOFT_SIMT_TIMEOUT).  Threads switch only at __syncthreads and warp "
                    "intrinsics and blocks run one after another, so a thread that spins waiting "
                    "for another thread or block never finishes here.", kernel=name) from None
            self._forward_stdout()
            return out


def _summarize(report):
    """One line saying what went wrong, from a sanitizer or harness report."""
    lines = report.splitlines()
    for line in lines:
        if "Assertion `" in line:  # glibc's assert, if a kernel re-included <assert.h>
            return line.strip()
    for i, line in enumerate(lines):
        if "SIMT ERROR" in line or "runtime error:" in line:
            return line.strip()
        if "ERROR: AddressSanitizer:" in line:
            what = line.split("ERROR: AddressSanitizer:", 1)[1].split(" on address")[0].strip()
            access = frame = ""
            for nxt in lines[i + 1:i + 8]:
                nxt = nxt.strip()
                if not access and nxt.startswith(("READ of size", "WRITE of size")):
                    access = " (" + nxt.split(" at ")[0] + ")"
                if not frame and nxt.startswith("#0 ") and " in " in nxt:
                    frame = " in " + nxt.split(" in ", 1)[1]
            return f"AddressSanitizer: {what}{access}{frame}"
    for key in ("Assertion", "SUMMARY: ", "DEADLYSIGNAL"):
        for line in lines:
            if key in line:
                return line.strip()
    return None


def _error_from_report(report, returncode, what, kernel):
    summary = _summarize(report)
    if summary is None:
        if returncode is not None and returncode < 0:
            summary = f"killed by signal {signal.Signals(-returncode).name}"
        else:
            summary = f"exit status {returncode}"
    if "SEGV" in summary or "stack-overflow" in summary:
        summary += (" (a fiber stack overflow also ends this way: each thread has "
                    f"{os.environ.get('CUSOFT_SIMT_STACK_KB', '256')} KiB, $CUSOFT_SIMT_STACK_KB)")
    shown = report.strip()
    if shown == summary:
        shown = ""
    elif len(shown) > 12000:
        shown = shown[:6000] + "\n[...]\n" + shown[-6000:]
    return SimtError(f"simt: {what} failed: {summary}" + (f"\n{shown}" if shown else ""), report=report,
                     kernel=kernel)


_servers = {}
_servers_lock = threading.Lock()
_servers_pid = os.getpid()


def _server_for(exe):
    global _servers_pid
    with _servers_lock:
        if _servers_pid != os.getpid():  # a forked child must not share the parent's pipes
            _servers.clear()
            _servers_pid = os.getpid()
        srv = _servers.get(exe)
        if srv is None:
            srv = _servers[exe] = _Server(exe)
        return srv


@atexit.register
def _close_servers():
    with _servers_lock:
        if _servers_pid == os.getpid():
            for srv in _servers.values():
                srv.close()
        _servers.clear()


# ---- public API ------------------------------------------------------------------------------

class SimtModule:
    """CUDA C source built for the SIMT harness; the counterpart of ``cupy.RawModule``.

    Parameters
    ----------
    code : str
        CUDA C source (kernels need no changes; ``CUSOFT_SIMT`` is defined, ``__CUDACC__`` is not).
    path : str, optional
        A ``.cu`` file to read instead of ``code``.
    options : tuple of str
        NVRTC-style options; ``-D``, ``-U``, ``-I`` are honoured, GPU code-generation options are
        ignored.
    name_expressions : sequence of str
        Kernels to export, as for CuPy: ``"softmax_fwd_warp<float>"`` or an ``extern "C"`` name.
    include_dirs : sequence of str
        Extra include directories (their headers are part of the build cache key).
    """

    def __init__(self, code=None, *, path=None, options=(), name_expressions=None, include_dirs=(),
                 **cupy_only):
        unknown = set(cupy_only) - {"backend", "translate_cucomplex", "enable_cooperative_groups",
                                    "jitify"}
        if unknown:
            raise TypeError(f"SimtModule() got unexpected keyword arguments {sorted(unknown)}")
        if (code is None) == (path is None):
            raise TypeError("SimtModule() needs exactly one of code= and path=")
        if path is not None:
            code = Path(path).read_text()
        if not isinstance(code, str):
            raise TypeError(f"code must be a str, got {type(code).__name__}")
        self.code = code
        self.options = tuple(options)
        self._flags, incs = _parse_options(self.options)
        self.include_dirs = tuple(os.path.abspath(d) for d in include_dirs) + tuple(incs)
        self._names = list(dict.fromkeys(name_expressions or ()))
        self._declared = frozenset(self._names)
        self._lock = threading.Lock()
        self._exe = None
        self._functions = {}

    # -- build -----------------------------------------------------------------------------------
    def _key(self, cxx, flags):
        h = hashlib.sha256()
        h.update(json.dumps([_PROTOCOL_VERSION, cxx, flags, _compiler_id(tuple(cxx))[0], self.code,
                             self._flags, self._names, list(self.include_dirs)]).encode())
        _digest_runtime(h)
        _digest_include_dirs(h, self.include_dirs)
        return h.hexdigest()[:24]

    def _main_source(self):
        entries = ",\n".join(f"    CUSOFT_SIMT_KERNEL({json.dumps(n)}, {n})" for n in self._names)
        return ('#include "kernel.cu"\n#include "simt_driver.h"\n'
                "static const cusoft_simt::KernelEntry cusoft_simt_table[] = {\n"
                f"{entries}\n}};\n"
                "int main(int argc, char** argv) {\n"
                "    return cusoft_simt::serve(argc, argv, cusoft_simt_table, "
                f"{len(self._names)});\n}}\n")

    def _build(self):
        ok, reason = available()
        if not ok:
            raise SimtError(f"simt: the harness is not available here: {reason}")
        if not self._names:
            raise ValueError("SimtModule has no kernels: pass name_expressions=[...] or call "
                             "get_function(name)")
        cxx, flags = _cxx(), _base_flags()
        key = self._key(cxx, flags)
        out_dir = _cache_dir() / key
        exe = out_dir / "kernel"
        if exe.exists():
            return exe
        runtime = _runtime_object(cxx, flags)
        with _FileLock(str(out_dir) + ".lock"):
            if exe.exists():
                return exe
            out_dir.mkdir(exist_ok=True)
            (out_dir / "kernel.cu").write_text(self.code)
            (out_dir / "main.cpp").write_text(self._main_source())
            tmp = out_dir / f"kernel.{os.getpid()}.tmp"
            cmd = [*cxx, *flags, "-include", str(_HEADER), "-I", str(_HERE),
                   *(f"-I{d}" for d in self.include_dirs), *self._flags,
                   str(out_dir / "main.cpp"), str(runtime), "-o", str(tmp)]
            _run_compiler(cmd, f"kernels {', '.join(self._names)} (sources kept in {out_dir})")
            os.replace(tmp, exe)
        return exe

    def compile(self):
        """Build the executable now (otherwise the first get_function builds it)."""
        with self._lock:
            if self._exe is None:
                self._exe = self._build()
        return self

    def _signature(self, name):
        with self._lock:
            if name not in self._names:
                self._names.append(name)
                self._exe = None
            if self._exe is None:
                try:
                    self._exe = self._build()
                except SimtCompileError:
                    if name not in self._declared:  # a bad late name must not poison the module
                        self._names.remove(name)
                    raise
            srv = _server_for(str(self._exe))
        with srv.lock:
            srv.ensure()
            index, params = srv.kernels[name]
        return srv, index, params

    def get_function(self, name):
        """The kernel ``name`` (a name expression) as a callable :class:`SimtFunction`."""
        fn = self._functions.get(name)
        if fn is None:
            self._signature(name)  # build now, so compile errors surface here as with CuPy
            fn = self._functions[name] = SimtFunction(self, name)
        return fn


class SimtFunction:
    """One kernel; call it like ``cupy.RawKernel``: ``k(grid, block, args, shared_mem=0)``."""

    max_threads_per_block = MAX_THREADS_PER_BLOCK

    def __init__(self, module, name):
        self.module = module
        self.name = name
        self._max_dynamic_shared = DEFAULT_DYNAMIC_SHARED

    @property
    def max_dynamic_shared_size_bytes(self):
        """Dynamic shared memory a launch may use (CUDA's default is 48 KiB; opt in for more)."""
        return self._max_dynamic_shared

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        value = int(value)
        if not 0 <= value <= MAX_SHARED_PER_BLOCK:
            raise SimtLaunchError(f"simt: max_dynamic_shared_size_bytes={value} is outside "
                                  f"[0, {MAX_SHARED_PER_BLOCK}] (227 KiB per block)", kernel=self.name)
        self._max_dynamic_shared = value

    def __call__(self, grid, block, args, *, shared_mem=0, seed=None, timeout=None, **cupy_only):
        """Launch the kernel.

        grid, block : int or tuple of up to 3 ints.
        args : tuple of NumPy arrays (device pointers; results are copied back into them, also
            for in-place and aliasing arguments), NumPy scalars, Python int/float/bool (passed as
            int64/float64/bool, as CuPy does) or None (a null pointer).
        shared_mem : bytes of dynamic shared memory (poisoned with 0xFF before every block).
        seed : scheduling seed; default ``$CUSOFT_SIMT_SEED`` or 0.  Equal seeds replay the same
            interleaving.
        timeout : seconds before the launch is declared hung (default ``$CUSOFT_SIMT_TIMEOUT``
            or 120).
        """
        unknown = set(cupy_only) - {"enable_cooperative_groups", "stream"}
        if unknown:
            raise TypeError(f"{self.name}() got unexpected keyword arguments {sorted(unknown)}")
        grid = _dims(grid, "grid", self.name)
        block = _dims(block, "block", self.name)
        self._check_config(grid, block, shared_mem)
        if seed is None:
            seed = int(os.environ.get("CUSOFT_SIMT_SEED", "0"), 0)
        if timeout is None:
            timeout = float(os.environ.get("CUSOFT_SIMT_TIMEOUT", "120"))
        if not isinstance(args, (tuple, list)):
            raise TypeError(f"{self.name}: args must be a tuple, got {type(args).__name__}")
        srv, index, params = self.module._signature(self.name)
        buffers, arg_bytes, placements = _marshal(self.name, args, params)
        header = struct.pack("=4sI3I3IQQII", b"LNCH", index, *grid, *block, int(shared_mem),
                             int(seed) & (2**64 - 1), len(buffers), len(params))
        results = srv.launch(self.name, header, buffers, arg_bytes, timeout, seed)
        _copy_back(self.name, results, placements)

    def _check_config(self, grid, block, shared_mem):
        def bad(msg):
            raise SimtLaunchError(f"simt: invalid launch of {self.name}: {msg} (a GPU refuses it "
                                  "with cudaErrorInvalidConfiguration/cudaErrorInvalidValue)",
                                  kernel=self.name)
        for axis, (g, gmax) in enumerate(zip(grid, MAX_GRID_DIM)):
            if not 1 <= g <= gmax:
                bad(f"grid dimension {'xyz'[axis]} is {g}; it must be in [1, {gmax}]")
        for axis, (b, bmax) in enumerate(zip(block, MAX_BLOCK_DIM)):
            if not 1 <= b <= bmax:
                bad(f"block dimension {'xyz'[axis]} is {b}; it must be in [1, {bmax}]")
        nthreads = block[0] * block[1] * block[2]
        if nthreads > MAX_THREADS_PER_BLOCK:
            bad(f"block {block} has {nthreads} threads; at most {MAX_THREADS_PER_BLOCK} are allowed")
        shared_mem = int(shared_mem)
        if shared_mem < 0:
            bad(f"shared_mem={shared_mem} is negative")
        if shared_mem > MAX_SHARED_PER_BLOCK:
            bad(f"shared_mem={shared_mem} bytes exceeds the {MAX_SHARED_PER_BLOCK}-byte (227 KiB) "
                "shared memory of a block")
        if shared_mem > self._max_dynamic_shared:
            bad(f"shared_mem={shared_mem} bytes exceeds max_dynamic_shared_size_bytes="
                f"{self._max_dynamic_shared}; above 48 KiB a kernel must opt in: set "
                "kernel.max_dynamic_shared_size_bytes (cudaFuncAttributeMaxDynamicSharedMemorySize)")


class SimtRawKernel(SimtFunction):
    """``cupy.RawKernel`` counterpart: one ``extern "C"`` kernel (or name expression) from code."""

    def __init__(self, code, name, options=(), *, include_dirs=(), **cupy_only):
        super().__init__(SimtModule(code, options=options, name_expressions=[name],
                                    include_dirs=include_dirs, **cupy_only), name)


def _dims(value, what, name):
    if isinstance(value, (int, np.integer)):
        value = (value,)
    try:
        dims = tuple(int(v) for v in value)
    except TypeError:
        raise TypeError(f"{name}: {what} must be an int or a tuple of up to 3 ints, "
                        f"got {value!r}") from None
    if not 1 <= len(dims) <= 3:
        raise SimtLaunchError(f"simt: {name}: {what} must have 1 to 3 dimensions, got {dims}",
                              kernel=name)
    return dims + (1,) * (3 - len(dims))


def _marshal(name, args, params):
    """Pack arguments: arrays become buffers (overlapping arrays share one), scalars bytes."""
    if len(args) != len(params):
        raise TypeError(f"{name} takes {len(params)} arguments, got {len(args)}")
    arrays = []  # (arg index, array, address, nbytes)
    scalars = {}
    for i, (a, p) in enumerate(zip(args, params)):
        if isinstance(a, np.ndarray):
            if p.kind != "p":
                raise TypeError(f"{name}: argument {i} is an array but the parameter is {p.describe()}; "
                                "pass a NumPy scalar")
            if a.dtype.hasobject:
                raise TypeError(f"{name}: argument {i} has dtype object, which has no device form")
            if not (a.flags.c_contiguous or a.flags.f_contiguous):
                raise ValueError(f"{name}: argument {i} is not contiguous; a kernel sees an array as "
                                 "one flat buffer, so pass np.ascontiguousarray(a)")
            arrays.append((i, a, a.__array_interface__["data"][0], a.nbytes))
            continue
        if a is None:
            if p.kind != "p":
                raise TypeError(f"{name}: argument {i} is None but the parameter is {p.describe()}")
            scalars[i] = None
            continue
        if isinstance(a, bool):
            a = np.bool_(a)
        elif isinstance(a, int):
            a = np.int64(a)
        elif isinstance(a, float):
            a = np.float64(a)
        if not isinstance(a, np.generic):
            raise TypeError(f"{name}: argument {i} has unsupported type {type(a).__name__}; pass NumPy "
                            "arrays and NumPy scalars")
        if p.kind == "p":
            raise TypeError(f"{name}: argument {i} is a scalar ({a.dtype}) but the parameter is a "
                            "pointer; pass a NumPy array")
        kind = a.dtype.kind
        want = {"i": "iub", "f": "f", "v": "Vc"}[p.kind]
        if kind not in want or a.dtype.itemsize != p.size:
            raise TypeError(f"{name}: argument {i} is {a.dtype} ({a.dtype.itemsize} bytes) but the "
                            f"parameter is {p.describe()} ({p.size} bytes); pass e.g. "
                            f"{_numpy_suggestion(p)}(...)")
        scalars[i] = a.tobytes()

    # Arrays whose memory overlaps (an in-place `out`, or two views of one array) must reach
    # the kernel as one allocation, so that aliasing behaves as on the device.
    groups = []  # [lo, hi, [members]]
    for item in sorted(arrays, key=lambda t: t[2]):
        _, _, addr, n = item
        if groups and n and groups[-1][1] > addr and groups[-1][1] > groups[-1][0]:
            groups[-1][1] = max(groups[-1][1], addr + n)
            groups[-1][2].append(item)
        else:
            groups.append([addr, addr + n, [item]])
    buffers, placements, where = [], [], {}
    for b, (lo, hi, members) in enumerate(groups):
        buffers.append(memoryview((ctypes.c_char * (hi - lo)).from_address(lo)) if hi > lo else b"")
        for i, a, addr, n in members:
            where[i] = (b, addr - lo)
            placements.append((i, a, b, addr - lo, n))
    parts = []
    for i in range(len(params)):
        if i in where:
            parts.append(struct.pack("=cIQ", b"p", *where[i]))
        elif scalars[i] is None:
            parts.append(b"n")
        else:
            parts.append(struct.pack("=cI", b"s", len(scalars[i])) + scalars[i])
    return buffers, b"".join(parts), placements


def _numpy_suggestion(p):
    if p.kind == "f":
        return {2: "np.float16", 4: "np.float32", 8: "np.float64"}.get(p.size, "a float type")
    if p.kind == "i":
        return {1: "np.int8", 2: "np.int16", 4: "np.int32", 8: "np.int64"}.get(p.size, "an int type")
    return "a structured np.void"


def _copy_back(name, results, placements):
    readonly_changed = []
    for i, a, b, off, n in placements:
        if n and not a.flags.writeable:
            current = (ctypes.c_char * n).from_address(a.__array_interface__["data"][0])
            if results[b][off:off + n].tobytes() != bytes(current):
                readonly_changed.append(i)
    for i, a, b, off, n in placements:
        if n and a.flags.writeable:
            ctypes.memmove(a.__array_interface__["data"][0], results[b].ctypes.data + off, n)
    if readonly_changed:
        raise SimtError(f"simt: {name} wrote to read-only array argument(s) {readonly_changed}",
                        kernel=name)
