"""Numba-CUDA backend: the kernels of ``kernels_cu/`` written with ``numba.cuda``.

Used for ``__cuda_array_interface__`` arrays that are not CuPy (Numba device arrays, PyTorch
CUDA tensors), when CuPy is missing or cannot compile, and with ``backend="numba"``.
Importing this package does no work; ``backend.NumbaBackend`` compiles kernels on first use.
"""
