"""CUDA C sources of cusoft's RawKernels (package data; loaded by cusoft._cupy and cusoft.simt)."""
