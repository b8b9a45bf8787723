"""cusoft.simt - run the CUDA C kernels of ``kernels_cu/`` on the CPU, unmodified.

A SIMT emulation harness for proving kernels correct without a GPU (in CI).  Usage mirrors
CuPy's ``RawModule``::

    mod = SimtModule(code=src, options=("-DFOO=1",), name_expressions=["softmax_fwd_warp<float>"])
    k = mod.get_function("softmax_fwd_warp<float>")
    k(grid, block, (x, out, np.int32(n)), shared_mem=nbytes)   # x, out: NumPy arrays

How it works
------------
* ``simt.h`` is force-included in front of the kernel source and makes CUDA C compile with the
  host C++17 compiler: keywords become no-ops or ``static`` (``__shared__``), ``threadIdx`` and
  friends read the running fiber's state, warp intrinsics, atomics, ``__half`` and the vector
  types are plain C++.  ``CUSOFT_SIMT`` is defined, ``__CUDACC__`` is not.
* Each module becomes one executable, built with ``-O1 -g -fsanitize=address,undefined`` and
  cached on disk (``$CUSOFT_SIMT_CACHE``, default ``~/.cache/cusoft/simt``) under a hash of the
  source, options, name expressions, included headers, the harness and the compiler.  A kernel
  table is generated from ``name_expressions``; each entry learns its parameter types from the
  kernel's signature, so wrong argument kinds and sizes are caught in Python before launch.
* The executable stays running as a server for the Python process.  A launch sends the arrays,
  which the server copies into heap blocks of exactly the array's size (so ASan catches
  out-of-bounds accesses), runs every block, and sends the buffers back; Python copies them into
  the arrays passed in, so in-place and aliasing outputs work.  Arrays whose memory overlaps are
  sent as one buffer.
* Every thread of a block is a fiber on one OS thread.  A fiber runs until it reaches
  ``__syncthreads``, a warp intrinsic or its end.  The resolver then releases complete groups:
  the whole block at ``__syncthreads``; every non-exited lane named in the mask of a warp
  intrinsic, which must all call the same intrinsic with the same mask (CUDA's rule; exited
  lanes and lanes past a partial last warp are skipped, but reading one is an error).  Lanes
  exchange values with CUDA's ``width`` segment rules.  Everything random comes from the seed
  (``seed=`` / ``$CUSOFT_SIMT_SEED``; equal seeds replay the same schedule): the order in which
  released fibers run, and, per block, how far warps drift apart - all complete groups released
  together (lockstep), each with probability 1/2, or one warp at a time in a random warp order
  (``$CUSOFT_SIMT_SCHEDULE`` = lockstep / random / serial pins one).  So a missing
  ``__syncthreads`` changes the answer, also when warp intrinsics separate the write from the
  read.  Blocks run one after another, in a seeded order.
* Errors raise :class:`SimtError` with the report attached (``.report``): ASan and UBSan
  reports, deadlocks (a thread that exits while others wait at ``__syncthreads``, no group able
  to proceed), a shuffle reading a lane outside the mask or an exited/missing lane, a calling
  lane outside its own mask, failed ``assert``, hangs (``$CUSOFT_SIMT_TIMEOUT``).
  Launch configurations a GPU rejects raise :class:`SimtLaunchError`.

Limits
------
* No concurrency between blocks: blocks run one after another, so inter-block races and
  inter-block spin-waits cannot be observed (a spin-wait hangs until the timeout).  Within a
  block, threads switch only at synchronisation calls: a race between two barriers shows up
  only as a different resume order, and atomics are trivially atomic.  The memory model is
  sequentially consistent; fences are no-ops.
* Static ``__shared__`` variables are function statics: they keep their contents from block to
  block (zero at start), they are not poisoned, and their size is not counted against the
  shared-memory limit.  Dynamic shared memory (``CUSOFT_DYN_SMEM``) is a fresh heap block of
  exactly ``shared_mem`` bytes, filled with 0xFF before every block.
* Floating point is the host's: ``expf`` and friends come from libm (at least as accurate as
  CUDA's), fast intrinsics such as ``__expf`` map to the accurate functions, and nothing is
  fused into FMA unless the kernel calls ``fmaf``.  Compare with tolerances, not bits.
* No cooperative groups, textures, inline PTX, ``__CUDA_ARCH__`` code paths, tensor cores or
  ``bfloat16``.  Slow: every warp intrinsic is a barrier among 32 fibers; use small shapes.
"""

from ._loader import (SimtCompileError, SimtError, SimtFunction, SimtLaunchError, SimtModule,
                      SimtRawKernel, available)

__all__ = ["SimtModule", "SimtFunction", "SimtRawKernel", "SimtError", "SimtCompileError",
           "SimtLaunchError", "available"]
