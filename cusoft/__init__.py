"""cusoft: SciPy's softmax family on CPUs, GPUs (CuPy RawKernels, Numba-CUDA) and Dask.

Swap ``scipy.special.softmax(x, axis=1)`` for ``cusoft.softmax(x, axis=1)``: the same answer,
on the device the array lives on.
"""

from ._attention import attention, merge_attention
from ._backward import log_softmax_backward, softmax_backward
from ._config import precompile, show_config
from ._dispatch import BackendError, use_backend
from ._logsumexp import logsumexp, logsumexp_partial, merge_partials
from ._softmax import log_softmax, softmax
from ._xent import softmax_cross_entropy

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "attention",
    "log_softmax",
    "log_softmax_backward",
    "logsumexp",
    "logsumexp_partial",
    "merge_attention",
    "merge_partials",
    "precompile",
    "show_config",
    "softmax",
    "softmax_backward",
    "softmax_cross_entropy",
    "use_backend",
]
